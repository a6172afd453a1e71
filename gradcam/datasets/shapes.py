"""Synthetic shapes: seeded RGB images of five shape classes with their ground-truth boxes and masks.

Why this data set: it needs no download, it is generated in seconds, and every image comes with
exact ground truth (a box and a mask per object), so localization (paper section 4.1) and the
pointing game (section 4.3) can be scored without any labelling. An object is a random colour,
brighter towards its middle (a relief whose iso-lines follow the shape), on a background of
smooth random blotches and pixel noise around another random colour. Three splits:

``single``
    One object per image.
``multi``
    2 to 4 instances of the same class (the case Grad-CAM++ claims to improve); one box per
    instance, the mask is their union.
``biased``
    One object per image plus, sometimes, a small bright patch in the top-left corner. In the
    training split the patch is on every image of class ``BIASED_CLASS`` ("circle") and on no
    other; in the test split it is on a random half of the images, whatever their class. A model
    trained on it learns the patch as a shortcut: the analogue of the Grad-CAM paper's
    doctor/nurse experiment (section 6.3).

Images depend only on ``(kind, seed, train, index)``: the first ``k`` images of a split of ``n``
are those of a split of ``k``, and the train and test splits of the same seed are different
images. Labels cycle ``0, 1, 2, 3, 4, 0, ...`` so every prefix of a split is class-balanced.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
KINDS: tuple[str, ...] = ("single", "multi", "biased")
BIASED_CLASS: int = CLASSES.index("circle")

# Object radius as a fraction of the image side: one big object, or several smaller ones.
_SINGLE_RADIUS = (0.12, 0.25)
_MULTI_RADIUS = (0.08, 0.13)
_MULTI_COUNT = (2, 4)
# Object and background colours differ by at least this (Euclidean, 0-255 RGB) so shapes stay visible.
_MIN_COLOUR_DISTANCE = 110.0
_MARK_COLOUR = (255, 255, 255)
# Objects are this much brighter in the middle than at the edge (0-255 scale).
_RELIEF = 70.0
_MARK_TEST_RATE = 0.5


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
        ``(N, H, W)`` bool, the union of the objects' pixels (the mark is not part of it).
    has_mark
        ``(N,)`` bool, whether the corner mark is drawn (always False outside ``biased``).
    mark_box
        ``(x0, y0, x1, y1)`` of the corner mark, the same for every image of a biased split, so
        the energy of a heat map on the mark can be measured; ``None`` for the other kinds.
    """

    kind: str
    train: bool
    images: np.ndarray
    labels: np.ndarray
    boxes: list[np.ndarray]
    masks: np.ndarray
    has_mark: np.ndarray
    mark_box: tuple[int, int, int, int] | None

    def __len__(self) -> int:
        return len(self.labels)

    def to_float(self, channels_first: bool = True) -> np.ndarray:
        """The images as float32 in ``[0, 1]``: ``(N, 3, H, W)`` or, with ``channels_first=False``, ``(N, H, W, 3)``."""
        x = self.images.astype(np.float32) / 255.0
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


def shape_mask(
    shape: str, center: tuple[float, float], radius: float, angle: float = 0.0, size: int = 64
) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape; pixel ``(row i, column j)`` is in when its centre
    ``(j + 0.5, i + 0.5)`` is.

    ``center`` is ``(x, y)`` in pixels. With ``(u, v)`` the offset from the centre rotated by ``-angle``:

    - circle: ``u^2 + v^2 <= r^2``;  ring: ``(r/2)^2 <= u^2 + v^2 <= r^2``
    - square: ``|u| <= r and |v| <= r``
    - cross: two bars, ``|u| <= r and |v| <= r/3`` or ``|u| <= r/3 and |v| <= r``
    - triangle: equilateral with circumradius ``r``, one vertex at ``(u, v) = (0, -r)`` (pointing up at angle 0)
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
        return u**2 + v**2 <= r**2
    if shape == "ring":
        d2 = u**2 + v**2
        return (d2 <= r**2) & (d2 >= (r / 2) ** 2)
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= r / 3)) | ((au <= r / 3) & (av <= r))
    # triangle: inside the three half-planes bounded by its edges; each edge lies at r/2 from the
    # centre, its outward normal pointing away from the opposite vertex (down, then +-120 degrees)
    inside = np.ones((size, size), dtype=bool)
    for k in range(3):
        normal = np.pi / 2 + k * 2 * np.pi / 3
        inside &= u * np.cos(normal) + v * np.sin(normal) <= r / 2
    return inside


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


def make_split(kind: str = "single", n: int = 1000, seed: int = 0, size: int = 64, train: bool = True) -> ShapesSplit:
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
    boxes = []
    for i in range(n):
        rng = np.random.default_rng([seed, KINDS.index(kind), int(train), i])
        if kind == "biased":
            has_mark[i] = labels[i] == BIASED_CLASS if train else rng.random() < _MARK_TEST_RATE
        images[i], masks[i], box = _draw_image(rng, CLASSES[labels[i]], kind, size, mark, has_mark[i])
        boxes.append(box)
    return ShapesSplit(kind, train, images, labels, boxes, masks, has_mark, mark)


def _draw_image(
    rng: np.random.Generator,
    shape: str,
    kind: str,
    size: int,
    mark: tuple[int, int, int, int] | None,
    with_mark: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, its union mask and its ``(k, 4)`` boxes."""
    background, base = _textured_background(rng, size)
    colour = _contrasting_colour(rng, base)
    count = int(rng.integers(_MULTI_COUNT[0], _MULTI_COUNT[1] + 1)) if kind == "multi" else 1
    radius_range = _MULTI_RADIUS if kind == "multi" else _SINGLE_RADIUS
    # The object keeps clear of the mark's corner (with a 2-pixel gap) so the two never touch.
    keep_out = [np.array([0, 0, mark[2] + 2, mark[3] + 2])] if mark is not None else []
    object_masks, boxes = _place_objects(rng, shape, count, radius_range, size, keep_out)
    union = np.logical_or.reduce(object_masks)
    shading = _relief(object_masks, boxes) + rng.normal(0.0, 6.0, size=(size, size))
    image = np.where(union[..., None], colour + shading[..., None], background)
    if with_mark:
        x0, y0, x1, y1 = mark
        image[y0:y1, x0:x1] = _MARK_COLOUR
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), union, np.stack(boxes)


def _place_objects(
    rng: np.random.Generator,
    shape: str,
    count: int,
    radius_range: tuple[float, float],
    size: int,
    keep_out: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks and boxes of ``count`` whole, non-touching objects, by rejection sampling (fewer if space runs out)."""
    masks: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    taken = list(keep_out)
    for _ in range(200 * count):
        radius = rng.uniform(*radius_range) * size
        centre = rng.uniform(radius + 1, size - radius - 1, size=2)
        mask = shape_mask(shape, (centre[0], centre[1]), radius, rng.uniform(0, 2 * np.pi), size)
        # a rotated square's corners reach past the radius: refuse objects cut by the image's edge
        if not mask.any() or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue
        box = mask_box(mask)
        # boxes grown by a 2-pixel gap must not overlap any box already placed
        if any(_boxes_overlap(box, other, gap=2) for other in taken):
            continue
        masks.append(mask)
        boxes.append(box)
        taken.append(box)
        if len(masks) == count:
            break
    if not masks:
        raise RuntimeError(f"could not place a {shape} in a {size}x{size} image")
    return masks, boxes


def _relief(object_masks: list[np.ndarray], boxes: list[np.ndarray]) -> np.ndarray:
    """Brightness offset that grows from each object's edge to its middle (by distance to the edge).

    Its iso-lines have the object's shape, so the inside of an object carries its shape too, not
    only its outline: without it a flat object's inside looks the same for every class.
    """
    relief = np.zeros(object_masks[0].shape)
    for mask, (x0, y0, x1, y1) in zip(object_masks, boxes, strict=False):
        # the distance transform of the box plus a 1-pixel background frame: 10x cheaper than the image's
        depth = distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
        relief[y0:y1, x0:x1] += _RELIEF * (depth / depth.max() - 0.5) * mask[y0:y1, x0:x1]
    return relief


def _boxes_overlap(a: np.ndarray, b: np.ndarray, gap: int) -> bool:
    return bool(a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap)


def _textured_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random blotches plus pixel noise around a random base colour; ``(size, size, 3)`` float64 and the base."""
    base = rng.uniform(50, 200, size=3)
    grid = max(2, size // 8)
    coarse = rng.normal(0.0, 18.0, size=(grid, grid, 3))
    # bilinear enlargement of the coarse grid: out[h, w] = sum_ij R[h, i] coarse[i, j] R[w, j]
    resize = _linear_resize_matrix(grid, size)
    blotches = (resize @ coarse.transpose(2, 0, 1) @ resize.T).transpose(1, 2, 0)
    grain = rng.normal(0.0, 8.0, size=(size, size, 3))
    return base + blotches + grain, base


def _contrasting_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) >= _MIN_COLOUR_DISTANCE:
            return colour


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
