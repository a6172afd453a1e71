"""The automatic layer: one stated rule, the same for every backend (``docs/layers.md``).

Why this module exists: "the last layer with a spatial output" picks ``conv_proj`` on a torchvision ViT (the
patch embedding, before any attention), an adaptive pool that pools a 3x3 map *up* to 7x7 on a VGG at 112 px,
and a RoI pool whose rows are boxes on a detector: convincing maps, all wrong. The rule here reads every layer
with a known layout (``layouts.infer``) and asks the model whether the score depends on the layer:

1. Candidates: layers whose output has the batch as first dimension and reads as a map of the input's grid
   (NCHW or NHWC for images, NCL or NLC for signals, NCDHW or NDHWC for volumes) or, for images, as patch
   tokens, with at least 2 cells. A layer that only resamples the map before it is skipped: a resampling
   layer (adaptive pool, upsampling) whose grid is not smaller than the previous candidate's (VGG's adaptive
   pool at 224 px copies the 7x7 map, at 112 px it pools a 3x3 map *up* to 7x7), and any layer without weights
   whose grid is larger than the previous candidate's. The layer that returns the model's output (a segmentation
   network's logits map) is not a candidate either: its map would explain the output by itself.
2. If the last candidate is tokens (a transformer), the pool is its normalization layers with tokens (the
   usual convention for Grad-CAM on ViTs: the last block's normalized tokens); otherwise every candidate.
3. The choice is the last layer of the pool whose cells the score depends on (a non-zero gradient): after the
   last block's first LayerNorm, a class-token ViT reaches its head through the class token only, so the final
   norm's patch tokens get no gradient; a detector's proposal head has its boxes detached.

The backend lists the layers (``LayerInfo``) and answers ``depends(name)``; nothing here names a framework.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gradcam.backends import layouts


@dataclass(frozen=True)
class LayerInfo:
    """One layer of one forward, in execution order: its output shape (batch first), the framework's layout of
    a 4-D output (``"NCHW"`` or ``"NHWC"``), whether it has weights, normalizes, or only resamples its input."""

    name: str
    shape: tuple[int, ...]
    native: str
    weighted: bool = True
    normalization: bool = False
    resamples: bool = False


@dataclass(frozen=True)
class LayerChoice:
    """The automatic layer, its layout, why it was chosen, and how every layer of the listing reads.

    Attributes
    ----------
    name, layout
        The chosen layer and the layout its output is read with (``"NCHW"``, ``"NHWC"``, ``"NTC:1"``, ...).
    why
        One sentence: the rule that chose it and what was passed over.
    layouts
        Layer name -> its layout, or why it is not a candidate (``"not batch-first"``, ...).
    """

    name: str
    layout: str
    why: str
    layouts: dict[str, str] = field(default_factory=dict)


def choose(
    infos: Sequence[LayerInfo],
    input_size: tuple[int, ...],
    batch: int,
    depends: Callable[[str], bool],
    output_shape: tuple[int, ...] | None = None,
) -> LayerChoice:
    """The automatic layer of a model whose layers, for one forward, are ``infos`` (module docstring's rule).

    The last layer to finish is taken for the one that returns the model's output when its shape is
    ``output_shape``.

    ``depends(name)`` runs the model and says whether the target score has a non-zero gradient at the cells of
    layer ``name``; it is asked from the last candidate backwards until one answers yes.

    Raises
    ------
    ValueError
        When no layer reads as a map or as patch tokens; the message says how to pass a layer and a layout.
    """
    readable: list[tuple[LayerInfo, layouts.Layout, tuple[int, ...]]] = []
    status: dict[str, str] = {}
    resampling: list[str] = []
    order = {info.name: index for index, info in enumerate(infos)}
    for index, info in enumerate(infos):
        if index == len(infos) - 1 and output_shape is not None and tuple(info.shape) == tuple(output_shape):
            status[info.name] = "the model's output"
            continue
        try:
            layouts.check_batch_first(info.name, info.shape, batch)
        except layouts.LayoutError:
            status[info.name] = "not batch-first"
            continue
        try:
            layout = layouts.infer(info.shape, info.native, input_size)
        except layouts.LayoutError:
            status[info.name] = "-"
            continue
        grid = grid_of(layout, info.shape)
        if _cells(grid) < 2:
            status[info.name] = f"{layout}, {_text(grid)}"
            continue
        if readable and layout.kind != "NTC" and _resamples_up(info, _cells(grid), _cells(readable[-1][2])):
            status[info.name] = f"{layout}, resamples up"
            resampling.append(info.name)
            continue
        status[info.name] = str(layout)
        readable.append((info, layout, grid))
    if not readable:
        raise ValueError(
            "no layer of this model outputs a spatial map (N, C, h, w) or patch tokens (N, T, C) with the batch "
            "first; pass layer= explicitly, with layout= (or reshape=) saying how to read its output"
        )
    transformer = readable[-1][1].kind == "NTC"
    pool = readable
    if transformer:
        pool = [r for r in readable if r[1].kind == "NTC" and r[0].normalization] or [
            r for r in readable if r[1].kind == "NTC"
        ]
    passed: list[str] = []
    for info, layout, grid in reversed(pool):
        if depends(info.name):
            # the resampling layers worth a word are those after the choice: they were the candidates before it
            after = [name for name in resampling if order[name] > order[info.name]]
            return LayerChoice(info.name, str(layout), _why(transformer, layout, grid, passed, after), status)
        passed.append(info.name)
    info, layout, grid = pool[-1]
    why = f"the last candidate ({layout}, {_text(grid)}); the score's gradient is zero at every candidate layer"
    return LayerChoice(info.name, str(layout), why, status)


def _resamples_up(info: LayerInfo, cells: int, previous: int) -> bool:
    return (info.resamples and cells >= previous) or (not info.weighted and cells > previous)


def _cells(grid: tuple[int, ...]) -> int:
    cells = 1
    for side in grid:
        cells *= side
    return cells


def _text(grid: tuple[int, ...]) -> str:
    return "x".join(map(str, grid))


def grid_of(layout: layouts.Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of an output of ``shape`` read with ``layout``: ``(h, w)`` for images, ``(l,)`` for signals,
    ``(d, h, w)`` for volumes."""
    if layout.kind != "NTC":
        return tuple(shape[2:]) if layout.channels_first else tuple(shape[1:-1])
    if layout.grid:
        return layout.grid
    side = int(round((shape[1] - layout.special_tokens) ** 0.5))
    return side, side


def _why(
    transformer: bool, layout: layouts.Layout, grid: tuple[int, ...], passed: list[str], resampling: list[str]
) -> str:
    if transformer:
        special = f", {layout.special_tokens} special token(s) dropped" if layout.special_tokens else ""
        why = (
            f"transformer: the last normalization layer whose patch tokens the score depends on ({layout}: a "
            f"{_text(grid)} grid{special})"
        )
    else:
        why = f"the last layer whose {_text(grid)} map ({layout}) the score depends on"
    if passed:
        why += f"; passed over, the score has no gradient there: {', '.join(reversed(passed))}"
    if resampling:
        why += f"; skipped, layers that only resample the map before them: {', '.join(resampling)}"
    return why
