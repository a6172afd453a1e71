"""Reading and writing images with Pillow: RGB uint8 arrays in, PNG files out.

Decoding builds no more than the caller needs. ``open_image`` reads only the header (a file that is not a
regular file is refused before it is opened, so a FIFO or a device never blocks the reader); ``decode`` then
reduces the image while it decodes it, by whole factors, as far as it stays at least ``REDUCING_GAP`` times
the size the caller will resize it to (as Pillow's ``reducing_gap`` does): a JPEG by DCT scaling
(``Image.draft``), any other format strip by strip (``Image.reduce``), so that no full-size copy is made
besides the one Pillow decodes into, in the file's own mode. A bilinear resize of the result is then
indistinguishable from one of the full image; images smaller than ``REDUCING_GAP`` times the target are not
reduced at all, and decode exactly as a full decode and resize would.

Image modes and how they become 8-bit RGB (scaled by their range, never clipped):

- 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ...): Pillow's own
  conversion to RGB (an alpha channel is dropped). 16-bit colour PNGs are opened by Pillow as 8-bit RGB.
- 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNG and TIFF): ``v * 255 / 65535``, the
  nominal range of 16 bits.
- 32-bit integer (``I``) and float (``F``) (TIFF): when every value lies in [0, 1], the usual range of float
  images, ``v * 255``; otherwise ``(v - min) * 255 / (max - min)`` with the image's own minimum and maximum,
  since 32-bit data (counts, physical quantities) fill no nominal range. Such an image of one value outside
  [0, 1] is black. An image holding NaN or an infinity is refused.
"""
from __future__ import annotations

import math
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Reduce by whole factors only while at least this many times the target size remains: from 3 on, Pillow's
# documentation says (``Image.resize``'s ``reducing_gap``), the result is indistinguishable from resampling
# the full image in most cases (measured here: mean difference under 1 of 255 at 64x64 from 4000x3000).
REDUCING_GAP = 3.0
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WIDE_MODES = ("I", "F")
# Pixels converted at a time: a strip of a large image in RGB or float is a few tens of MB, not GB.
_STRIP_PIXELS = 1 << 22
_FILE_OBJECT = re.compile(r"<_io\.\w+ name=\d+>")
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


class ImageReadError(ValueError):
    """An input file that is not a readable image (missing, corrupt, not an image, or too large)."""


class _Refused(ImageReadError):
    """A file or image content the command will not read; ``open_image`` adds the path to the reason."""


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise _Refused(f"{kind}, not an image file")


def _open_non_blocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


@contextmanager
def open_image(path: str | Path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """The image at ``path``, opened but not decoded, for a ``with`` block that decodes it (``decode``).

    Only regular files are opened: a folder, FIFO, device or socket is refused from its ``os.stat``, and the
    file is opened non-blocking, so that nothing swapped in between the two can block either. Images with
    more than ``max_pixels`` pixels (default: Pillow's decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``)
    are refused from their header, before they are decoded.

    Raises
    ------
    ImageReadError
        With a one-line reason naming the file, also for a failure while the block decodes the image.
    """
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        _check_regular(os.stat(path).st_mode)
        with open(path, "rb", opener=_open_non_blocking) as file:
            _check_regular(os.fstat(file.fileno()).st_mode)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(file)
            with image:
                width, height = image.size
                if limit is not None and width * height > limit:
                    raise ImageReadError(
                        f"{path}: {width}x{height} pixels is over the decompression-bomb limit of {limit} pixels"
                    )
                yield image
    except _Refused as error:
        raise ImageReadError(f"{path}: {error}") from None
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.UnidentifiedImageError:  # Pillow's own message would name the open file object
        raise ImageReadError(
            f"{path}: not a readable image (UnidentifiedImageError: cannot identify image file {str(path)!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{path}: refused, {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow names the open file object in some messages; its descriptor number differs between processes
        message = _FILE_OBJECT.sub(repr(str(path)), str(error))
        raise ImageReadError(f"{path}: not a readable image ({type(error).__name__}: {message})") from None


def _strips(image: Image.Image, rows: int) -> Iterator[tuple[int, Image.Image]]:
    for top in range(0, image.height, rows):
        yield top, image.crop((0, top, image.width, min(top + rows, image.height)))


def _wide_range(image: Image.Image, rows: int) -> tuple[float, float]:
    """The range a 32-bit image is scaled from: [0, 1] when its values lie there, else its own min..max."""
    low, high = math.inf, -math.inf
    for _, strip in _strips(image, rows):
        values = np.asarray(strip)
        if not np.isfinite(values).all():
            raise _Refused("the image holds NaN or infinite values")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (0.0, 1.0) if 0.0 <= low and high <= 1.0 else (low, high)


def _to_working_mode(image: Image.Image, rows: int) -> Callable[[Image.Image], Image.Image]:
    """A function from a strip of ``image`` to the same pixels in a mode ``Image.reduce`` averages correctly:
    RGB for 8-bit modes, floats on the 0..255 scale (see the module's docstring) for 16- and 32-bit ones."""
    if image.mode not in SIXTEEN_BIT_MODES + WIDE_MODES:
        return lambda strip: strip.convert("RGB")
    low, high = (0.0, 65535.0) if image.mode in SIXTEEN_BIT_MODES else _wide_range(image, rows)
    scale = 255.0 / (high - low) if high > low else 0.0

    def scaled(strip: Image.Image) -> Image.Image:
        return Image.fromarray(((np.asarray(strip, np.float64) - low) * scale).astype(np.float32))

    return scaled


def decode(image: Image.Image, sizes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """``image`` (from ``open_image``, not yet decoded) as ``(H, W, 3)`` uint8 RGB, once per size in ``sizes``.

    Parameters
    ----------
    image : the opened image; its modes are scaled to 8 bits as the module's docstring says.
    sizes : ``(H, W)`` sizes to resize the image to (bilinear), or None for the image at its full size. The
        image is first reduced by whole factors, as far as each side stays at least ``REDUCING_GAP`` times
        the largest of ``sizes``: a JPEG by DCT scaling while it is decoded, any other format after it is
        decoded, strip by strip in its own mode, so that no full-size copy is made in RGB or float. The
        resize then maps the exact extent of the image (a last, partial box of the reduction included), as
        Pillow's ``resize(..., reducing_gap=...)`` does.
    """
    need = None if sizes is None else (max(size[0] for size in sizes), max(size[1] for size in sizes))
    if need is not None:  # only JPEG decoders use the draft; the others ignore it
        image.draft(None, (int(need[1] * REDUCING_GAP), int(need[0] * REDUCING_GAP)))
    image.load()
    width, height = image.size
    if image.mode == "RGB" and sizes is not None and all(size == (height, width) for size in sizes):
        # already what is asked for (a data set stored at the model's size): the strips, the reduction and a
        # resize to the same size would each copy it unchanged, a quarter of a 224-px JPEG's decoding time
        return [np.asarray(image) for _ in sizes]
    fx, fy = (1, 1)
    if need is not None:
        fx = max(1, int(width / need[1] / REDUCING_GAP))
        fy = max(1, int(height / need[0] / REDUCING_GAP))
    rows = max(1, _STRIP_PIXELS // max(width, 1) // fy) * fy  # a multiple of fy: strips reduce like the whole
    working = _to_working_mode(image, rows)
    reduced: Image.Image | None = None
    for top, strip in _strips(image, rows):
        part = working(strip)
        part = part.reduce((fx, fy)) if (fx, fy) != (1, 1) else part
        if reduced is None:
            reduced = Image.new(part.mode, (math.ceil(width / fx), math.ceil(height / fy)))
        reduced.paste(part, (0, top // fy))
    if reduced is None:
        raise _Refused("the image has no pixels")
    extent = (0.0, 0.0, width / fx, height / fy)
    pictures = [reduced] if sizes is None else [
        reduced.resize((w, h), Image.Resampling.BILINEAR, box=extent) for h, w in sizes
    ]
    return [_as_rgb(picture) for picture in pictures]


def _as_rgb(picture: Image.Image) -> np.ndarray:
    if picture.mode == "F":  # grey on the 0..255 scale
        grey = np.clip(np.round(np.asarray(picture)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(picture, dtype=np.uint8)


def read_image(path: str | Path, max_pixels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB (``open_image`` then ``decode``).

    With ``size = (H, W)`` the image is resized to it (bilinear), reduced while it is decoded when it is
    larger (see ``decode``); None gives the image at its full size.

    Raises
    ------
    ImageReadError
        With a one-line reason naming the file.
    """
    with open_image(path, max_pixels) as image:
        return decode(image, None if size is None else [size])[0]


def fit_within(shape: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` shrunk, keeping its aspect ratio, so that its long side is at most ``max_side`` (never
    enlarged; None keeps it)."""
    height, width = shape
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels resized to ``size = (H', W')`` with Pillow's bilinear filter."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def write_png(path: str | Path, pixels: np.ndarray) -> Path:
    """Write ``(H, W, 3)`` or ``(H, W)`` uint8 pixels to ``path`` as PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, format="PNG")
    return path
