"""Volumes and clips: reading them from files and showing their maps slice by slice.

A *clip* is a stack of 2-D frames that a 3-D model takes whole: the slices of a CT or MRI volume, the frames of
a video. It comes from

* a ``.npy`` array ``(D, H, W)`` (one channel) or ``(D, H, W, C)`` with ``C`` 1 or 3, uint8 or floats, given to
  the model as stored (uint8 scaled to [0, 1]);
* an animated GIF, its frames as RGB;
* a folder of frame images, in the order of their names (``frame_000.png``, ``frame_001.png``...), as RGB.

Frames from pictures are scaled to [0, 1]. A map of a clip is ``(D, H, W)``; it is shown as one overlay per slice
(PNG) and as an animated GIF of those overlays (Pillow). Pillow does the file formats; NumPy the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from gradcam import images
from gradcam.reference.colour import overlay

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GIF_FRAME_MS = 120
"""How long each frame of a written GIF is shown, in milliseconds."""


@dataclass(frozen=True)
class Clip:
    """One clip as the model gets it and as it is shown.

    Attributes
    ----------
    name
        The file or folder name without suffix (names the outputs).
    values
        ``(D, H, W, C)`` float32: the model's input, channels last (the caller lays it out for the model).
    display
        ``(D, H, W, 3)`` uint8: the frames the overlays are drawn on (a float volume min-max scaled to grey).
    """

    name: str
    values: np.ndarray
    display: np.ndarray

    @property
    def depth(self) -> int:
        """The number of slices or frames ``D``."""
        return int(self.values.shape[0])


def read_clip(path: str | Path, frames: int | None = None, size: tuple[int, int] | None = None) -> Clip:
    """The clip stored at ``path``: a ``.npy`` volume, an animated GIF or a folder of frames.

    Parameters
    ----------
    frames
        For a GIF or a folder: take this many frames evenly spread over the clip (``sample_frames``); ``None``:
        all. A ``.npy`` volume is taken whole (its depth is the model's).
    size
        For a GIF or a folder: resize each frame to ``(H, W)``. A ``.npy`` volume must be stored at the size
        its model takes.

    Raises
    ------
    ValueError
        A file of another kind, an array of another shape or with non-finite values, a folder without frames,
        frames of different sizes, or ``frames``/``size`` given for a ``.npy`` volume.
    """
    path = Path(path)
    if path.is_dir():
        pictures = _frame_files(path)
        chosen = [pictures[i] for i in sample_frames(len(pictures), frames)]
        rgb = np.stack(_same_size([images.read_image(p, size=size) for p in chosen], path))
        return _from_pictures(path.name, rgb)
    if path.suffix.lower() == ".npy":
        if frames is not None or size is not None:
            raise ValueError(f"{path}: a .npy volume is taken whole at its stored size; leave out frames and size")
        return _from_array(path.stem, _load_array(path))
    if path.suffix.lower() == ".gif":
        return _from_pictures(path.stem, _gif_frames(path, frames, size))
    raise ValueError(
        f"{path}: not a clip; give a .npy volume (D, H, W) or (D, H, W, C), an animated .gif, or a folder of frames"
    )


def sample_frames(count: int, frames: int | None) -> np.ndarray:
    """Indices of ``frames`` of ``count`` frames spread evenly from the first to the last,
    ``round(i (count - 1) / (frames - 1))``; all ``count`` when ``frames`` is ``None``.

    Raises ``ValueError`` when ``frames`` is below 1 or above ``count``.
    """
    if frames is None:
        return np.arange(count)
    if not 1 <= frames <= count:
        raise ValueError(f"cannot take {frames} frames from a clip of {count}")
    if frames == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, count - 1, frames)).astype(np.int64)


def clip_overlays(clip: Clip, maps: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Each slice's map over the slice, ``(1 - alpha) * frame + alpha * colormap(map)``, as ``(D, H, W, 3)``
    uint8; ``maps``: ``(D, H, W)`` in [0, 1]."""
    maps = np.asarray(maps)
    if maps.shape != clip.display.shape[:3]:
        raise ValueError(f"the map has shape {maps.shape}; the clip {clip.name!r} is {clip.display.shape[:3]}")
    return overlay(clip.display, maps, alpha=alpha, name=colormap)


def write_slices(folder: str | Path, frames: np.ndarray, stem: str = "slice") -> list[Path]:
    """Every frame of ``(D, H, W, 3)`` uint8 as ``folder/{stem}_000.png``, ``..._001.png``...; the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(frames) - 1)))
    return [images.write_png(folder / f"{stem}_{i:0{digits}d}.png", frame) for i, frame in enumerate(frames)]


def write_gif(path: str | Path, frames: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> Path:
    """``(D, H, W, 3)`` uint8 frames as an animated GIF that loops, each frame shown ``frame_ms`` ms.

    Each frame gets its own adaptive palette of 256 colours (Pillow's quantizer), enough for a colormap over
    a photograph; the PNG slices keep the exact colours.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (D, H, W, 3) uint8 with D >= 1, got {frames.dtype} {frames.shape}")
    pictures = [Image.fromarray(frame) for frame in frames]
    path = Path(path)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return path


def _frame_files(folder: Path) -> list[Path]:
    pictures = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not pictures:
        raise ValueError(f"{folder}: no frames ({', '.join(FRAME_SUFFIXES)} files) in this folder")
    return pictures


def _same_size(frames: list[np.ndarray], where: Path) -> list[np.ndarray]:
    sizes = {frame.shape for frame in frames}
    if len(sizes) > 1:
        raise ValueError(f"{where}: the frames differ in size ({', '.join(map(str, sorted(sizes)))}); give a size")
    return frames


def _gif_frames(path: Path, frames: int | None, size: tuple[int, int] | None) -> np.ndarray:
    with images.open_image(path) as picture:
        count = getattr(picture, "n_frames", 1)
        wanted = set(sample_frames(count, frames).tolist())
        rgb = []
        for index, frame in enumerate(ImageSequence.Iterator(picture)):
            if index in wanted:
                pixels = np.asarray(frame.convert("RGB"))
                rgb.append(pixels if size is None else images.resize(pixels, size))
    return np.stack(rgb)


def _load_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a NumPy array file ({error})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif":
        raise ValueError(f"{path}: a volume holds numbers; this array holds {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or min(array.shape[:3]) < 1:
        raise ValueError(
            f"{path}: a volume is (D, H, W) or (D, H, W, C) with C 1 or 3, channels last; got shape {array.shape}"
        )
    return array


def _from_pictures(name: str, rgb: np.ndarray) -> Clip:
    return Clip(name, rgb.astype(np.float32) / np.float32(255.0), rgb)


def _from_array(name: str, array: np.ndarray) -> Clip:
    values = array.astype(np.float32) / np.float32(255.0) if array.dtype == np.uint8 else array.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: the volume holds NaN or infinite values")
    low, high = values.min(), values.max()
    grey = (values - low) / (high - low) if high > low else np.zeros_like(values)
    display = np.round(grey * 255.0).astype(np.uint8)
    return Clip(name, values, np.repeat(display, 3, axis=-1) if display.shape[-1] == 1 else display)
