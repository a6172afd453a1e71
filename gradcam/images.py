"""Reading and writing images with Pillow: RGB uint8 arrays in, PNG files out."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class ImageReadError(ValueError):
    """An input file that is not a readable image (missing, corrupt, not an image, or too large)."""


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """The image at ``path`` as ``(H, W, 3)`` uint8 RGB.

    Images with more than ``max_pixels`` pixels (default: Pillow's decompression-bomb limit,
    ``Image.MAX_IMAGE_PIXELS``) are refused before they are decoded.

    Raises
    ------
    ImageReadError
        With a one-line reason naming the file.
    """
    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if limit is not None and width * height > limit:
                    raise ImageReadError(
                        f"{path}: {width}x{height} pixels is over the decompression-bomb limit of {limit} pixels"
                    )
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{path}: refused, {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None


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
