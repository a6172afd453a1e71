"""A comparison figure: one row per image (and model), one column per method, like seed 001's tables."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int, font: ImageFont.ImageFont) -> None:
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-1]
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def comparison_figure(
    rows: list[tuple[str, list[np.ndarray]]], columns: list[str], cell: int = 160, header: int = 22, margin: int = 4
) -> np.ndarray:
    """A grid of ``(H, W, 3)`` uint8 pictures with column titles and row labels, as one RGB array.

    ``rows`` holds ``(label, pictures)`` with one picture per column; pictures are scaled to ``cell`` pixels.
    """
    font = ImageFont.load_default()
    width = margin + len(columns) * (cell + margin)
    row_height = header + cell + margin
    canvas = Image.new("RGB", (width, header + len(rows) * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns):
        _label(draw, (margin + c * (cell + margin) + 2, 4), title, cell, font)
    for r, (label, pictures) in enumerate(rows):
        top = header + r * row_height
        _label(draw, (margin + 2, top + 4), label, width, font)
        for c, picture in enumerate(pictures):
            tile = Image.fromarray(picture).resize((cell, cell), Image.Resampling.BILINEAR)
            canvas.paste(tile, (margin + c * (cell + margin), top + header))
    return np.asarray(canvas)
