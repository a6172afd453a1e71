"""How a layer's output is read as a map: its layout, stated by name or inferred, and refused when unclear.

Why this module exists: a wrong heat map looks as convincing as a right one. A channels-last map read as
channels-first (a Swin block, a ConvNeXt LayerNorm in PyTorch), ViT tokens read as a grid, or the rows of a
RoI pool (one per box, not per image) read as images all give a picture without an error. So every layer
output is read with a known layout, and its first dimension must be the batch:

* ``"NCHW"``, ``"NHWC"``: a map, channels first or last; ``"NCL"``, ``"NLC"`` for a signal's (1-D) map and
  ``"NCDHW"``, ``"NDHWC"`` for a volume's or a clip's (3-D) map.
* ``"NTC"``: tokens ``(N, T, C)``; ``"NTC:k"`` drops ``k`` leading special tokens (class, distillation,
  registers) and reads the rest as a square grid; ``"NTC:k:HxW"`` as an ``H x W`` grid.

``VIT`` (``"NTC:1"``), ``DEIT`` (``"NTC:2"``) and ``SWIN`` (``"NHWC"``, torchvision's Swin stages; Hugging
Face's Swin outputs ``"NTC"``) are ready layouts. When no layout is given, ``infer`` reads one from the shape
alone, by the rule stated in ``docs/layers.md``: an output of the input's rank is the map whose grid has the
input's aspect ratio (the framework's own layout when both readings do); for an image input, a 3-D output is
tokens when, after 0 to ``MAX_SPECIAL_TOKENS`` leading tokens, exactly one grid with the input's aspect ratio
and a whole patch size holds the rest (tokens are read for images only: for a signal ``(N, C, L)`` a 3-D output
is a 1-D map). Anything else is refused with a message that asks for ``layout=``.

NumPy only: every backend reads its arrays through here, after moving them to the host.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_SPECIAL_TOKENS = 8
"""The most leading special tokens inference tries: a class token, a distillation token, up to 4 registers..."""

VIT = "NTC:1"
"""ViT tokens: one class token, then the square patch grid."""
DEIT = "NTC:2"
"""DeiT tokens: class and distillation tokens, then the square patch grid."""
SWIN = "NHWC"
"""torchvision Swin stages and their final norm: channels-last maps."""

MAPS_BY_GRID = {1: ("NCL", "NLC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
"""The map layouts of a grid of 1, 2 or 3 axes, channels first then channels last."""
MAPS = tuple(kind for pair in MAPS_BY_GRID.values() for kind in pair)
_TOKENS = re.compile(r"^NTC(?::(\d+))?(?::(\d+)X(\d+))?$")


class LayoutError(ValueError):
    """A layer output that cannot be read as a map in the given (or any inferable) layout."""


class NotBatchFirstError(LayoutError):
    """A layer output whose first dimension is not the batch (one row per box or region, not per image)."""


@dataclass(frozen=True)
class Layout:
    """How to read one layer output as a channels-first map ``(N, K, *grid)`` (``(N, K, h, w)`` for images).

    Attributes
    ----------
    kind
        A map layout (``MAPS``: ``"NCHW"``, ``"NHWC"``, ``"NCL"``, ``"NDHWC"``, ...) or ``"NTC"``.
    special_tokens
        For ``"NTC"``: leading tokens that are not patches (dropped).
    grid
        For ``"NTC"``: the patch grid ``(h, w)``; ``None`` for a square grid.
    """

    kind: str
    special_tokens: int = 0
    grid: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.kind != "NTC":
            return self.kind
        grid = f":{self.grid[0]}x{self.grid[1]}" if self.grid else ""
        return f"NTC:{self.special_tokens}{grid}" if self.special_tokens or grid else "NTC"

    def rank(self) -> int:
        """The number of dimensions of an output in this layout."""
        return 3 if self.kind == "NTC" else len(self.kind)

    @property
    def channels_first(self) -> bool:
        """Whether the channels are axis 1 of the output (else the last axis)."""
        return self.kind != "NTC" and self.kind[1] == "C"

    def to_channels_first(self, array: np.ndarray) -> np.ndarray:
        """``array`` in this layout as contiguous float32 ``(N, K, *grid)``: the channels moved to axis 1.

        Tokens: ``A[n, k, i, j] = T[n, s + i w + j, k]`` with ``s`` special tokens (row-major patches, as
        every patch embedding flattens them). A pure re-layout, so it commutes with differentiation: the
        gradient of the re-laid-out tensor is the re-laid-out gradient.
        """
        if self.channels_first:
            out = array
        elif self.kind != "NTC":
            out = np.moveaxis(array, -1, 1)
        else:
            patches = array[:, self.special_tokens :, :]
            n, t, c = patches.shape
            h, w = self.grid or _square(t)
            out = patches.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, dtype=np.float32)


def parse(spec: str | Layout) -> Layout:
    """The ``Layout`` a name stands for: a map layout (``MAPS``), ``"NTC"``, ``"NTC:k"`` or ``"NTC:k:HxW"``.

    Raises
    ------
    ValueError
        For any other name, listing the valid ones.
    """
    if isinstance(spec, Layout):
        return spec
    if isinstance(spec, str):
        name = spec.strip().upper()
        if name in MAPS:
            return Layout(name)
        match = _TOKENS.match(name)
        if match:
            special, h, w = match.groups()
            return Layout("NTC", int(special or 0), (int(h), int(w)) if h else None)
    raise ValueError(
        f"unknown layout {spec!r}; give a map layout ({', '.join(MAPS)}), or tokens 'NTC', 'NTC:k' (k leading "
        "special tokens: class, distillation, registers; the rest a square grid) or 'NTC:k:HxW'"
    )


def infer(shape: tuple[int, ...], native: str, input_size: tuple[int, ...]) -> Layout:
    """The layout of an output of ``shape`` (batch first) for an input whose grid is ``input_size``: ``(H, W)``
    for images, ``(L,)`` for signals, ``(D, H, W)`` for volumes and clips.

    An output of the input's rank (4-D for images, 3-D for signals, 5-D for volumes) is read in each map layout
    of that grid (``MAPS_BY_GRID``), channels first or last, the framework's ``native`` one first; a reading is
    kept when its grid fits in the input (no axis longer than the input's) and its last two axes ``(h, w)`` have
    the input's aspect ratio to within one cell, ``|h W - w H| <= max(H, W)`` (a volume's depth is not
    compared: video networks stride time and space differently; a signal has one axis). For images, a
    3-D output is tokens ``(N, T, C)``: ``s`` leading special tokens (``0 <= s <= MAX_SPECIAL_TOKENS``) and an
    ``h x w`` grid with ``h w = T - s``, ``h W = w H`` and a whole patch size (``h`` divides ``H``, ``w``
    divides ``W``); exactly one such reading is accepted.

    Raises
    ------
    LayoutError
        When no reading (or, for tokens, more than one) fits; the message asks for ``layout=``.
    """
    grid, size = len(input_size), "x".join(map(str, input_size))
    if grid in MAPS_BY_GRID and len(shape) == grid + 2:
        first, last = MAPS_BY_GRID[grid]
        for kind in (first, last) if _channels_first(native) else (last, first):
            cells = shape[2:] if kind == first else shape[1:-1]
            if _fits(tuple(cells), tuple(input_size)):
                return Layout(kind)
        raise LayoutError(
            f"an output of shape {tuple(shape)} has no grid with the {size} input's aspect ratio when read as "
            f"{first} or {last}; pass layout='{first}' or layout='{last}' to say how to read it"
        )
    if grid == 2 and len(shape) == 3:
        H, W = input_size
        readings = _token_readings(shape[1], H, W)
        if len(readings) == 1:
            return readings[0]
        found = f"it could be {' or '.join(map(repr, map(str, readings)))}" if readings else "no patch grid fits"
        raise LayoutError(
            f"an output of shape {tuple(shape)} looks like tokens (N, T, C), but {found} for a {H}x{W} input; "
            "pass layout='NTC:k' (k leading class/distillation/register tokens, the rest a square grid) or "
            "layout='NTC:k:HxW'"
        )
    if grid == 2:
        raise LayoutError(
            f"an output of shape {tuple(shape)} is not a spatial map (N, C, h, w) or tokens (N, T, C); choose a "
            "convolutional or token layer, or pass reshape= to turn it into (N, K, h, w)"
        )
    wanted = _MAP_SHAPES.get(grid, "(N, C, *grid)")
    raise LayoutError(
        f"an output of shape {tuple(shape)} is not a spatial map {wanted} for a {size} input; choose a "
        f"convolutional layer, or pass reshape= to turn it into {wanted.replace('C', 'K')}"
    )


_MAP_SHAPES = {1: "(N, C, l)", 3: "(N, C, d, h, w)"}


def _channels_first(native: str) -> bool:
    """Whether a framework's ``native`` layout name (``"NCHW"``, ``"NHWC"``, ``"NCL"``, ...) has channels first."""
    return native.upper()[1] == "C"


def _fits(cells: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether a grid of ``cells`` fits in ``size``, with the aspect ratio of its last two axes (height and width)
    to within one cell. A volume's or a clip's depth is not compared with the others: video networks stride
    time and space differently (r3d's stem keeps every frame and halves the height and width)."""
    if any(c > s for c, s in zip(cells, size, strict=True)):
        return False
    if len(size) < 2:
        return True
    (h, w), (H, W) = cells[-2:], size[-2:]
    return abs(h * W - w * H) <= max(H, W)


def read(
    name: str,
    array: np.ndarray,
    layout: str | Layout | None,
    native: str,
    input_size: tuple[int, ...],
    batch: int,
) -> tuple[np.ndarray, Layout]:
    """Layer ``name``'s output (or its gradient) as float32 ``(N, K, *grid)`` (``(N, K, h, w)`` for images), and
    the layout it was read with.

    ``layout`` is a name or ``Layout``, or ``None`` to ``infer`` one; ``native`` is the framework's layout of the
    layer (``"NCHW"`` or ``"NHWC"``: channels first or last, whatever the grid's rank).

    Raises
    ------
    LayoutError
        When the first dimension is not the batch (a RoI pool, a detector head), the layout does not fit the
        output or the input's grid, or the map has fewer than two cells.
    """
    check_batch_first(name, tuple(array.shape), batch)
    try:
        chosen = infer(tuple(array.shape), native, input_size) if layout is None else parse(layout)
        _check_fits(chosen, tuple(array.shape))
        check_grid(chosen, len(input_size))
    except LayoutError as error:
        raise LayoutError(f"layer {name!r}: {error}") from None
    out = chosen.to_channels_first(array)
    if int(np.prod(out.shape[2:])) < 2:
        raise LayoutError(
            f"layer {name!r} has output shape {tuple(array.shape)}, which is not a spatial map (a "
            f"{'x'.join(map(str, out.shape[2:]))} grid); choose an earlier layer whose map has more than one cell"
        )
    return out, chosen


def check_grid(layout: Layout, grid: int) -> None:
    """A ``LayoutError`` when ``layout`` gives a map of another number of grid axes than the input's ``grid``
    (a map could not be upsampled onto the input); tokens are read for images only."""
    axes = 2 if layout.kind == "NTC" else layout.rank() - 2
    if axes != grid:
        names = " or ".join(MAPS_BY_GRID.get(grid, ()))
        raise LayoutError(
            f"layout {str(layout)!r} reads a {axes}-axis grid, but the input has a {grid}-axis grid; "
            f"pass {names or 'a layout of the input grid'}"
        )


def check_batch_first(name: str, shape: tuple[int, ...], batch: int) -> None:
    """A ``LayoutError`` unless the output's first dimension is the batch of ``batch`` images."""
    if not shape or shape[0] != batch:
        raise NotBatchFirstError(
            f"layer {name!r} has output shape {shape}, whose first dimension is not the batch of {batch} "
            "image(s): it works per box or per region (a RoI pool, a detector head), not per image, so its map "
            "belongs to no image; choose a layer that runs on whole images, such as the backbone's last map"
        )


def _check_fits(layout: Layout, shape: tuple[int, ...]) -> None:
    if len(shape) != layout.rank():
        raise LayoutError(
            f"layout {str(layout)!r} needs a {layout.rank()}-D output, but the output has shape {shape}; "
            "pass the layout that matches it"
        )
    if layout.kind == "NTC":
        patches = shape[1] - layout.special_tokens
        if layout.grid is None:
            side = int(round(max(patches, 0) ** 0.5))
            if patches < 1 or side * side != patches:
                raise LayoutError(
                    f"{patches} tokens after {layout.special_tokens} special token(s) do not form a square grid; "
                    "pass the right number of special tokens, or the grid as layout='NTC:k:HxW'"
                )
        elif layout.grid[0] * layout.grid[1] != patches:
            raise LayoutError(f"grid {layout.grid[0]}x{layout.grid[1]} does not hold the {patches} patch tokens")


def _token_readings(tokens: int, H: int, W: int) -> list[Layout]:
    readings = []
    for special in range(min(MAX_SPECIAL_TOKENS, tokens - 1) + 1):
        patches = tokens - special
        for h in range(1, patches + 1):
            if patches % h or H % h:
                continue
            w = patches // h
            if h * W == w * H and W % w == 0 and h * w > 1:
                readings.append(Layout("NTC", special, None if h == w else (h, w)))
    return readings


def _square(tokens: int) -> tuple[int, int]:
    side = int(round(tokens**0.5))
    return side, side
