"""Synthetic shapes: seeded RGB images of five shape classes with their ground-truth boxes and masks.

Why this data set: it needs no download, it is generated in seconds, and every image comes with
exact ground truth (a box and a mask per object), so localization (paper section 4.1) and the
pointing game (section 4.3) can be scored without any labelling.

Why so many styles: a model learns whatever tells its training classes apart. When every object
had the same relief on the same blotchy background, the embedded model learned that style and called
flat shapes drawn by another program "ring". So everything that is not the shape is random, drawn
independently for each image: the fill (``FILLS``: flat, relief, a two-colour gradient, a
texture, or only the outline), the background (``BACKGROUNDS``: a uniform colour, pixel noise,
blotches, white, black, or a saturated colour of the kind objects are painted in), the colours
(always at least ``110`` apart in RGB, so the object stays visible), size, position, rotation, the
ring's and the cross's proportions, anti-aliased or hard edges, a Gaussian blur and a JPEG round
trip. Only the silhouette carries the class. Three splits:

``single``
    One object per image.
``multi``
    2 to 4 instances of the same class (the case Grad-CAM++ claims to improve); one box per
    instance, the mask is their union.
``biased``
    One object per image plus, sometimes, a small white patch in the top-left corner, drawn last
    (never blurred or compressed) on a background far from white. In the training split the patch is
    on every image of class ``BIASED_CLASS`` ("circle") and on no other; in the test split it is on a
    random half of the images, whatever their class. A model trained on it learns the patch as a
    shortcut: the analogue of the Grad-CAM paper's doctor/nurse experiment (section 6.3).

Images depend only on ``(kind, seed, train, index)``: the first ``k`` images of a split of ``n``
are those of a split of ``k``, and the train and test splits of the same seed are different
images. Labels cycle ``0, 1, 2, 3, 4, 0, ...`` so every prefix of a split is class-balanced.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
KINDS: tuple[str, ...] = ("single", "multi", "biased")
BIASED_CLASS: int = CLASSES.index("circle")
FILLS: tuple[str, ...] = ("flat", "relief", "gradient", "texture", "outline")
BACKGROUNDS: tuple[str, ...] = ("uniform", "noise", "blotches", "white", "black", "colour")
PLAIN_FILLS: tuple[str, ...] = ("flat", "relief")
PLAIN_BACKGROUNDS: tuple[str, ...] = ("uniform", "white", "black")

# Object radius as a fraction of the image side: one object of any size, or several smaller ones.
_SINGLE_RADIUS = (0.12, 0.30)
_MULTI_RADIUS = (0.08, 0.13)
_MULTI_COUNT = (2, 4)
# Object and background colours differ by at least this (Euclidean, 0-255 RGB) so shapes stay visible.
_MIN_COLOUR_DISTANCE = 110.0
_MARK_COLOUR = (255, 255, 255)
_MARK_TEST_RATE = 0.5
# Proportions within a class: the ring's inner radius and the cross's bar half-width, as fractions
# of the radius. A ring's band is kept wider than any outline, or a thin ring would be a circle's outline.
_RING_INNER = (0.35, 0.7)
_RING_MIN_BAND = 3.5
_CROSS_BAR = (0.22, 0.42)
# Fills: relief depth (brighter or darker towards the middle, 0-255), outline width (pixels), texture period
# (a fraction of the object's half-width, and at least 2.5 pixels, so that a small object keeps its outline).
_RELIEF = (30.0, 90.0)
_OUTLINE_WIDTH = (1.0, 3.0)
_TEXTURE_PERIOD = (0.25, 0.6)
_TEXTURE_MIN_PERIOD = 2.5
# Degradations: how often each is applied, and its range.
_ANTIALIASED_RATE = 0.7
_BLUR_RATE, _BLUR_SIGMA = 0.3, (0.4, 1.2)
_JPEG_RATE, _JPEG_QUALITY = 0.3, (20, 90)


@dataclass(frozen=True)
class ShapesSplit:
    """A generated split.

    Attributes
    ----------
    kind
        ``"single"``, ``"multi"`` or ``"biased"``.
    train
        Whether this is the training split (matters for the mark of the biased split).
    images
        ``(N, H, W, 3)`` uint8 RGB.
    labels
        ``(N,)`` int64 class index into ``CLASSES``.
    boxes
        One ``(k, 4)`` int64 array per image, a row ``(x0, y0, x1, y1)`` in pixels per object,
        end exclusive: the object covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
        Each box is the tight box of that object's mask.
    masks
        ``(N, H, W)`` bool, the union of the objects' silhouettes (also where only the outline is
        drawn; the mark is not part of it).
    has_mark
        ``(N,)`` bool, whether the corner mark is drawn (always False outside ``biased``).
    mark_box
        ``(x0, y0, x1, y1)`` of the corner mark, the same for every image of a biased split, so
        the energy of a heat map on the mark can be measured; ``None`` for the other kinds.
    fills, backgrounds
        The style of each image: names from ``FILLS`` and ``BACKGROUNDS``.
    """

    kind: str
    train: bool
    images: np.ndarray
    labels: np.ndarray
    boxes: list[np.ndarray]
    masks: np.ndarray
    has_mark: np.ndarray
    mark_box: tuple[int, int, int, int] | None
    fills: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def to_float(self, channels_first: bool = True) -> np.ndarray:
        """The images as float32 in ``[0, 1]``: ``(N, 3, H, W)`` or, with ``channels_first=False``, ``(N, H, W, 3)``."""
        x = self.images.astype(np.float32) / 255.0
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


def signed_distance(
    shape: str,
    center: tuple[float, float],
    radius: float,
    angle: float = 0.0,
    size: int = 64,
    proportion: float | None = None,
) -> np.ndarray:
    """``(size, size)`` float64: for each pixel centre ``(j + 0.5, i + 0.5)``, its distance in pixels to the
    shape's edge, positive inside, negative outside (exact inside; outside, near a corner, a little short).

    ``center`` is ``(x, y)`` in pixels. With ``(u, v)`` the offset from the centre rotated by ``-angle``,
    ``d = sqrt(u^2 + v^2)`` and ``p = proportion``:

    - circle: ``r - d``;  ring: ``min(r - d, d - p r)`` (inner radius ``p r``, default ``p = 1/2``)
    - square: ``r - max(|u|, |v|)``
    - cross: two bars, ``max(min(r - |u|, p r - |v|), min(p r - |u|, r - |v|))`` (half-width ``p r``,
      default ``p = 1/3``)
    - triangle: equilateral with circumradius ``r``, one vertex at ``(u, v) = (0, -r)`` (pointing up at
      angle 0): ``min_k (r/2 - n_k . (u, v))`` over its three edges' outward normals ``n_k``
    """
    if shape not in CLASSES:
        raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(CLASSES)}")
    centres = np.arange(size) + 0.5
    dx = centres[None, :] - center[0]
    dy = centres[:, None] - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    r = radius
    if shape == "circle":
        return r - np.hypot(u, v)
    if shape == "ring":
        d = np.hypot(u, v)
        return np.minimum(r - d, d - (0.5 if proportion is None else proportion) * r)
    if shape == "square":
        return r - np.maximum(np.abs(u), np.abs(v))
    if shape == "cross":
        w = (1 / 3 if proportion is None else proportion) * r
        au, av = np.abs(u), np.abs(v)
        return np.maximum(np.minimum(r - au, w - av), np.minimum(w - au, r - av))
    # triangle: each edge lies at r/2 from the centre, its outward normal pointing away from the
    # opposite vertex (down, then +-120 degrees)
    normals = [np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
    return np.min([r / 2 - (u * np.cos(n) + v * np.sin(n)) for n in normals], axis=0)


def shape_mask(
    shape: str,
    center: tuple[float, float],
    radius: float,
    angle: float = 0.0,
    size: int = 64,
    proportion: float | None = None,
) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape: the pixels whose centre has ``signed_distance >= 0``.

    With the default proportions: circle ``u^2 + v^2 <= r^2``; ring ``(r/2)^2 <= u^2 + v^2 <= r^2``;
    square ``|u| <= r and |v| <= r``; cross ``|u| <= r and |v| <= r/3`` or ``|u| <= r/3 and |v| <= r``;
    triangle inside the three edges (see ``signed_distance``).
    """
    return signed_distance(shape, center, radius, angle, size, proportion) >= 0


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight ``(x0, y0, x1, y1)`` box of a non-empty boolean mask, end exclusive, as int64."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the mask is empty")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)


def mark_box_for(size: int) -> tuple[int, int, int, int]:
    """Where the biased split's corner mark goes: a 6x6 patch 1 pixel in from the top-left corner at size 64, scaled."""
    side = max(2, round(6 * size / 64))
    inset = max(1, round(size / 64))
    return (inset, inset, inset + side, inset + side)


def make_split(
    kind: str = "single", n: int = 1000, seed: int = 0, size: int = 64, train: bool = True, plain: bool = False
) -> ShapesSplit:
    """Generate ``n`` images of one split.

    Parameters
    ----------
    kind
        ``"single"`` (one object), ``"multi"`` (2-4 instances of one class) or ``"biased"``
        (one object, corner mark tied to class "circle" when ``train`` else to a coin flip).
    n
        Number of images; labels cycle through the classes, so classes are balanced.
    seed
        Same ``(kind, seed, train, size)`` gives identical arrays.
    size
        Image side in pixels (square images), at least 32.
    train
        Training or test split: different images for the same seed.
    plain
        Only the easy styles: flat or relief fills on uniform, black or white backgrounds, anti-aliased,
        never blurred or compressed (``PLAIN_FILLS``, ``PLAIN_BACKGROUNDS``). Training starts on these:
        a model that first finds the shapes there gets past the slow start of the full mix sooner.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown split kind {kind!r}; kinds are {', '.join(KINDS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    mark = mark_box_for(size) if kind == "biased" else None
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    has_mark = np.zeros(n, dtype=bool)
    boxes, fills, backgrounds = [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, KINDS.index(kind), int(train), i])
        if kind == "biased":
            has_mark[i] = labels[i] == BIASED_CLASS if train else rng.random() < _MARK_TEST_RATE
        fill_choices = PLAIN_FILLS if plain else FILLS
        # a white mark must show: the biased split's backgrounds are never white, nor close to it
        choices = [b for b in (PLAIN_BACKGROUNDS if plain else BACKGROUNDS) if kind != "biased" or b != "white"]
        fills.append(fill_choices[rng.integers(len(fill_choices))])
        backgrounds.append(choices[rng.integers(len(choices))])
        images[i], masks[i], box = _draw_image(
            rng, CLASSES[labels[i]], kind, size, fills[-1], backgrounds[-1], mark, has_mark[i], plain
        )
        boxes.append(box)
    return ShapesSplit(kind, train, images, labels, boxes, masks, has_mark, mark, tuple(fills), tuple(backgrounds))


def _draw_image(
    rng: np.random.Generator,
    shape: str,
    kind: str,
    size: int,
    fill: str,
    background_kind: str,
    mark: tuple[int, int, int, int] | None,
    with_mark: bool,
    plain: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, its union mask and its ``(k, 4)`` boxes; ``plain``: anti-aliased, never blurred or compressed."""
    avoid = np.array(_MARK_COLOUR, dtype=np.float64) if kind == "biased" else None
    background, base = _background(rng, background_kind, size, avoid)
    colours = [_contrasting_colour(rng, base) for _ in range(2)]
    count = int(rng.integers(_MULTI_COUNT[0], _MULTI_COUNT[1] + 1)) if kind == "multi" else 1
    radius_range = _MULTI_RADIUS if kind == "multi" else _SINGLE_RADIUS
    # The object keeps clear of the mark's corner (with a 2-pixel gap) so the two never touch.
    keep_out = [np.array([0, 0, mark[2] + 2, mark[3] + 2])] if mark is not None else []
    distances, boxes = _place_objects(rng, shape, count, radius_range, size, keep_out)
    # objects do not overlap, so the union's signed distance is the largest of theirs
    union = np.max(distances, axis=0)
    half_width = float(np.mean([b[2] - b[0] + b[3] - b[1] for b in boxes])) / 4
    paint, ink = _fill(rng, fill, colours, distances, union, half_width)
    # coverage: anti-aliased edges ramp over one pixel (a pixel half inside is half covered); hard edges do not
    antialiased = plain or rng.random() < _ANTIALIASED_RATE
    alpha = np.clip(ink + 0.5, 0.0, 1.0) if antialiased else (ink >= 0).astype(np.float64)
    image = background + alpha[..., None] * (paint - background)
    if not plain and rng.random() < _BLUR_RATE:
        image = gaussian_filter(image, (*[rng.uniform(*_BLUR_SIGMA)] * 2, 0))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if not plain and rng.random() < _JPEG_RATE:
        image = _jpeg_round_trip(image, int(rng.integers(*_JPEG_QUALITY)))
    if with_mark:
        x0, y0, x1, y1 = mark
        image[y0:y1, x0:x1] = _MARK_COLOUR
    return image, union >= 0, np.stack(boxes)


def _place_objects(
    rng: np.random.Generator,
    shape: str,
    count: int,
    radius_range: tuple[float, float],
    size: int,
    keep_out: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Signed distances and boxes of ``count`` whole, non-touching objects, by rejection sampling (fewer if
    space runs out)."""
    distances: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    taken = list(keep_out)
    for _ in range(200 * count):
        radius = rng.uniform(*radius_range) * size
        centre = rng.uniform(radius + 1, size - radius - 1, size=2)
        distance = signed_distance(
            shape, (centre[0], centre[1]), radius, rng.uniform(0, 2 * np.pi), size, _proportion(rng, shape, radius)
        )
        mask = distance >= 0
        # a rotated square's corners reach past the radius: refuse objects cut by the image's edge
        if not mask.any() or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue
        box = mask_box(mask)
        # boxes grown by a 2-pixel gap must not overlap any box already placed
        if any(_boxes_overlap(box, other, gap=2) for other in taken):
            continue
        distances.append(distance)
        boxes.append(box)
        taken.append(box)
        if len(distances) == count:
            break
    if not distances:
        raise RuntimeError(f"could not place a {shape} in a {size}x{size} image")
    return distances, boxes


def _proportion(rng: np.random.Generator, shape: str, radius: float) -> float | None:
    """A random ring inner radius or cross bar half-width (fraction of the radius); ``None`` for the others."""
    if shape == "ring":
        widest = min(_RING_INNER[1], max(_RING_INNER[0], 1 - _RING_MIN_BAND / radius))
        return float(rng.uniform(_RING_INNER[0], widest))
    if shape == "cross":
        return float(rng.uniform(*_CROSS_BAR))
    return None


def _fill(
    rng: np.random.Generator,
    fill: str,
    colours: list[np.ndarray],
    distances: list[np.ndarray],
    union: np.ndarray,
    half_width: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The paint ``(H, W, 3)`` and the signed distance of the ink (where the paint shows) for one fill style.

    ``distances`` are the objects' signed distances, ``union`` their maximum, ``half_width`` the objects'
    mean half-width in pixels (it sets the texture's scale).
    """
    first, second = colours
    size = union.shape[0]
    if fill == "outline":
        # a band just inside the edge: distance to the nearer of its two borders
        width = rng.uniform(*_OUTLINE_WIDTH)
        return np.broadcast_to(first, (size, size, 3)), np.minimum(union, width - union)
    if fill == "relief":
        # depth 0 at an object's edge, 1 at its innermost pixel: the iso-lines follow the shape
        depth = sum(np.clip(d, 0, None) / d.max() for d in distances)
        amplitude = rng.uniform(*_RELIEF) * rng.choice([-1.0, 1.0])
        return first + amplitude * (depth - 0.5)[..., None], union
    if fill == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size]
        along = xs * np.cos(angle) + ys * np.sin(angle)
        inside = along[union >= 0]
        t = np.clip((along - inside.min()) / max(np.ptp(inside), 1.0), 0, 1)
        return first + t[..., None] * (second - first), union
    if fill == "texture":
        period = max(_TEXTURE_MIN_PERIOD, rng.uniform(*_TEXTURE_PERIOD) * half_width)
        ys, xs = np.mgrid[0:size, 0:size] + rng.uniform(0, period, size=(2, 1, 1))
        pattern = rng.integers(3)
        if pattern == 0:  # stripes at any angle
            angle = rng.uniform(0, np.pi)
            on = np.floor((xs * np.cos(angle) + ys * np.sin(angle)) / period) % 2 == 0
        elif pattern == 1:  # checks
            on = (np.floor(xs / period) + np.floor(ys / period)) % 2 == 0
        else:  # dots
            on = np.hypot(xs % period - period / 2, ys % period - period / 2) < period / 3
        return np.where(on[..., None], first, second), union
    return np.broadcast_to(first, (size, size, 3)), union


def _background(
    rng: np.random.Generator, kind: str, size: int, avoid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A background of ``kind`` ``(size, size, 3)`` float64 and its base colour, at least
    ``_MIN_COLOUR_DISTANCE`` from ``avoid`` when given."""
    while True:
        if kind == "white":
            base = rng.uniform(225, 255) + rng.uniform(-6, 6, size=3)
        elif kind == "black":
            base = rng.uniform(0, 30, size=3)
        elif kind == "colour":
            base = _saturated_colour(rng)
        else:
            base = rng.uniform(0, 255, size=3)
        if avoid is None or np.linalg.norm(base - avoid) >= _MIN_COLOUR_DISTANCE:
            break
    pixels = np.broadcast_to(base, (size, size, 3)).astype(np.float64)
    if kind == "noise":
        pixels = pixels + rng.normal(0.0, rng.uniform(8, 40), size=(size, size, 3))
    elif kind == "blotches":
        grid = max(2, size // 8)
        coarse = rng.normal(0.0, rng.uniform(10, 30), size=(grid, grid, 3))
        # bilinear enlargement of the coarse grid: out[h, w] = sum_ij R[h, i] coarse[i, j] R[w, j]
        resize = _linear_resize_matrix(grid, size)
        blotches = (resize @ coarse.transpose(2, 0, 1) @ resize.T).transpose(1, 2, 0)
        pixels = pixels + blotches + rng.normal(0.0, 6.0, size=(size, size, 3))
    return pixels, base


def _contrasting_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A colour at least ``_MIN_COLOUR_DISTANCE`` from ``base``: half the time saturated, else any RGB."""
    while True:
        colour = _saturated_colour(rng) if rng.random() < 0.5 else rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) >= _MIN_COLOUR_DISTANCE:
            return colour


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A vivid RGB colour: random hue, saturation 0.7-1, value 150-255 (the HSV cone's outer shell)."""
    hue = rng.uniform(0, 6)
    value = rng.uniform(150, 255)
    low = value * (1 - rng.uniform(0.7, 1.0))
    # each channel rises and falls along the hue circle, between low and value
    ramp = np.clip(np.abs((hue + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return low + (value - low) * ramp


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """The image after saving it as a JPEG of ``quality`` and reading it back (blocks, ringing, colour bleed)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def _boxes_overlap(a: np.ndarray, b: np.ndarray, gap: int) -> bool:
    return bool(a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap)


def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights with half-pixel centres and clamped edges."""
    position = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = position - low
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), low] += 1 - frac
    matrix[np.arange(n_out), high] += frac
    return matrix
