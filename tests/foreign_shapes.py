"""Shapes drawn by another program: a test set the embedded model never trained on.

The embedded model learns from ``gradcam.datasets.shapes``. A model can score 99.9% on its own
generator and still fail on a plain circle drawn by anyone else, because it may have learned the
generator's style instead of the shape. This module is that "anyone else": written apart from the
training generator (it shares only the five class names and what they mean), drawn with Pillow's
``ImageDraw`` polygons and ellipses, never used for training. Its proportions differ on purpose
(ring and cross thicknesses vary; sizes span small to large), and every image mixes one fill, one
background and a few degradations a user's pictures may have:

- fills: ``flat``, ``shaded`` (lit from one side), ``gradient`` (two colours), ``texture``
  (stripes, checks or dots), ``outline`` (only the edge, 1-3 pixels wide);
- backgrounds: ``uniform``, ``noise`` (per-pixel Gaussian), ``blotches`` (soft ellipses),
  ``white``, ``black``, ``palette`` (a saturated colour that other images use for shapes);
- anti-aliased or aliased edges, sometimes a Gaussian blur, sometimes a JPEG round trip.

Classes cycle fastest, then fills, then backgrounds, so any 150 consecutive images hold every
(class, fill, background) triple once. Ground truth is the drawn silhouette (filled, also for an
outline) and its tight box.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross", "ring")
FILLS = ("flat", "shaded", "gradient", "texture", "outline")
BACKGROUNDS = ("uniform", "noise", "blotches", "white", "black", "palette")
# saturated colours a person picks for shapes; the "palette" background uses them too
PALETTE = np.array(
    [
        (230, 25, 25), (25, 90, 230), (30, 170, 60), (250, 210, 20), (240, 120, 10),
        (150, 40, 200), (20, 190, 200), (230, 60, 160), (120, 70, 30), (128, 128, 128),
    ],
    dtype=np.float64,
)
SUPERSAMPLE = 4
# smallest RGB distance between a shape's colours and the background's: a visible shape
MIN_CONTRAST = 110.0


@dataclass
class ForeignSet:
    """Images drawn by this module.

    Attributes
    ----------
    images
        ``(N, size, size, 3)`` uint8 RGB.
    labels
        ``(N,)`` int64 index into ``CLASSES``.
    boxes
        ``(N, 4)`` int64 ``(x0, y0, x1, y1)``, end exclusive: the tight box of the silhouette.
    masks
        ``(N, size, size)`` bool silhouette (pixels at least half covered).
    fills, backgrounds
        The style of each image, names from ``FILLS`` and ``BACKGROUNDS``.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    fills: list[str]
    backgrounds: list[str]


def make_foreign(n: int = 600, seed: int = 0, size: int = 64) -> ForeignSet:
    """Draw ``n`` one-shape images; the same ``(n, seed, size)`` gives the same arrays."""
    images, labels, boxes, masks, fills, backgrounds = [], [], [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = i % len(CLASSES)
        fill = FILLS[(i // len(CLASSES)) % len(FILLS)]
        background = BACKGROUNDS[(i // (len(CLASSES) * len(FILLS))) % len(BACKGROUNDS)]
        image, mask = _draw(rng, CLASSES[label], fill, background, size)
        rows, cols = np.nonzero(mask)
        images.append(image)
        labels.append(label)
        boxes.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        masks.append(mask)
        fills.append(fill)
        backgrounds.append(background)
    return ForeignSet(
        np.stack(images), np.array(labels, np.int64), np.array(boxes, np.int64), np.stack(masks), fills, backgrounds
    )


def _draw(rng: np.random.Generator, shape: str, fill: str, background: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its silhouette mask."""
    base, back = _background(rng, background, size)
    colours = _shape_colours(rng, base, 2)
    scale = SUPERSAMPLE if rng.random() < 0.7 else 1
    canvas = size * scale
    extent = rng.uniform(0.12, 0.30) * size * scale
    outlines = _outlines(rng, shape, extent, scale)
    # keep the whole shape inside the image, 1 pixel from the border
    points = np.concatenate(outlines)
    low, high = points.min(0), points.max(0)
    margin = scale
    centre = np.array(
        [rng.uniform(margin - low[k], canvas - margin - high[k]) for k in (0, 1)]
    )
    outlines = [o + centre for o in outlines]

    silhouette = Image.new("L", (canvas, canvas), 0)
    _paint(ImageDraw.Draw(silhouette), shape, outlines, width=0)
    if fill == "outline":
        ink = Image.new("L", (canvas, canvas), 0)
        _paint(ImageDraw.Draw(ink), shape, outlines, width=int(rng.integers(1, 4)) * scale)
    else:
        ink = silhouette
    layer = _fill_layer(rng, fill, colours, centre, extent, canvas)
    if scale > 1:
        # anti-aliasing: average the supersampled pixels (coverage becomes alpha)
        ink = ink.resize((size, size), Image.Resampling.BOX)
        silhouette = silhouette.resize((size, size), Image.Resampling.BOX)
        layer = layer.resize((size, size), Image.Resampling.BOX)
    alpha = np.asarray(ink, np.float64)[..., None] / 255.0
    image = alpha * np.asarray(layer, np.float64) + (1.0 - alpha) * back
    picture = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    if rng.random() < 0.35:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.1)))
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(25, 86)))
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(picture, np.uint8).copy(), np.asarray(silhouette) >= 128


def _outlines(rng: np.random.Generator, shape: str, extent: float, scale: int) -> list[np.ndarray]:
    """Polygon vertices ``(k, 2)`` around the origin (for circle and ring: the bounding square's corners).

    A ring gives its outer and inner circle; every other shape gives one outline. ``scale`` is the
    supersampling factor (canvas pixels per image pixel).
    """
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if shape in ("circle", "ring"):
        outer = np.array([(-extent, -extent), (extent, extent)])
        if shape == "circle":
            return [outer]
        # the band stays at least 4 pixels wide, wider than any outline (at most 3): a thin ring and a
        # circle's outline are not told apart by anyone
        return [outer, outer * rng.uniform(0.4, max(0.4, min(0.68, 1 - 4 * scale / extent)))]
    if shape == "square":
        corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64) * extent * 0.8
    elif shape == "triangle":
        corners = np.array(
            [(math.cos(t), math.sin(t)) for t in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        ) * extent * 1.1
    else:  # cross: a plus sign, arms of half-width w
        w = rng.uniform(0.22, 0.4)
        corners = np.array(
            [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
        ) * extent
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [corners @ rotation.T]


def _paint(draw: ImageDraw.ImageDraw, shape: str, outlines: list[np.ndarray], width: int) -> None:
    """Draw the shape in 255 on an ``L`` image: filled when ``width`` is 0, else only its edge."""
    if shape in ("circle", "ring"):
        for k, corners in enumerate(outlines):
            box = [float(v) for v in corners.reshape(-1)]
            if width:
                draw.ellipse(box, outline=255, width=width)
            else:
                draw.ellipse(box, fill=0 if k else 255)  # the ring's inner circle punches the hole
        return
    points = [(float(x), float(y)) for x, y in outlines[0]]
    if width:
        draw.line(points + points[:2], fill=255, width=width, joint="curve")
    else:
        draw.polygon(points, fill=255)


def _background(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The background's typical colour ``(3,)`` and its pixels ``(size, size, 3)`` float."""
    if kind == "white":
        base = np.full(3, rng.uniform(235, 255))
    elif kind == "black":
        base = np.full(3, rng.uniform(0, 25))
    elif kind == "palette":
        base = PALETTE[rng.integers(len(PALETTE))]
    else:
        base = rng.uniform(0, 255, size=3)
    back = np.broadcast_to(base, (size, size, 3)).astype(np.float64)
    if kind == "noise":
        back = back + rng.normal(0.0, rng.uniform(12, 35), size=(size, size, 3))
    elif kind == "blotches":
        blotches = Image.fromarray(np.clip(back, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(blotches)
        for _ in range(int(rng.integers(4, 10))):
            x, y = rng.uniform(-8, size + 8, size=2)
            rx, ry = rng.uniform(4, size / 3, size=2)
            tint = tuple(int(v) for v in np.clip(base + rng.uniform(-45, 45, size=3), 0, 255))
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tint)
        back = np.asarray(blotches.filter(ImageFilter.GaussianBlur(rng.uniform(2, 5))), np.float64)
    return base, np.clip(back, 0, 255)


def _shape_colours(rng: np.random.Generator, base: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` colours, each at least ``MIN_CONTRAST`` from ``base``: half from the palette, half anything."""
    colours: list[np.ndarray] = []
    while len(colours) < count:
        colour = PALETTE[rng.integers(len(PALETTE))] if rng.random() < 0.5 else rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) >= MIN_CONTRAST:
            colours.append(colour)
    return colours


def _fill_layer(
    rng: np.random.Generator, fill: str, colours: list[np.ndarray], centre: np.ndarray, extent: float, canvas: int
) -> Image.Image:
    """An RGB image of the shape's paint over the whole canvas (the silhouette cuts it out)."""
    first, second = colours
    ys, xs = np.mgrid[0:canvas, 0:canvas] + 0.5
    if fill == "shaded":
        # a light from one side: brighter towards it, darker away, over the shape's extent
        light = rng.uniform(0, 2 * math.pi)
        t = ((xs - centre[0]) * math.cos(light) + (ys - centre[1]) * math.sin(light)) / extent
        paint = first * np.clip(1.0 + 0.35 * t, 0.45, 1.5)[..., None]
    elif fill == "gradient":
        direction = rng.uniform(0, 2 * math.pi)
        t = ((xs - centre[0]) * math.cos(direction) + (ys - centre[1]) * math.sin(direction)) / (2 * extent) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        paint = (1 - t) * first + t * second
    elif fill == "texture":
        period = rng.uniform(0.25, 0.5) * extent
        pattern = rng.integers(3)
        if pattern == 0:  # stripes at some angle
            angle = rng.uniform(0, math.pi)
            on = np.floor((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 2 == 0
        elif pattern == 1:  # checks
            on = (np.floor(xs / period) + np.floor(ys / period)) % 2 == 0
        else:  # dots
            on = np.hypot((xs % period) - period / 2, (ys % period) - period / 2) < period / 3
        paint = np.where(on[..., None], first, second)
    else:  # flat or outline
        paint = np.broadcast_to(first, (canvas, canvas, 3))
    return Image.fromarray(np.clip(np.rint(paint), 0, 255).astype(np.uint8))
