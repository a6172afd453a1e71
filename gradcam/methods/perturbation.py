"""Methods that need only forward passes: Score-CAM, Ablation-CAM and occlusion sensitivity.

Every masked, ablated or occluded copy of an image is one row of a batch (``gradcam.copies``): rows of all
images and all channels (or windows) share batches of ``batch_size`` rows in one reused buffer, in the model's
own input layout, which the backend names (``input_channel_axis``).

Every target form is taken (``gradcam.targets``): classes are scored from the NumPy outputs of each batch of
copies, and a target function is applied to those NumPy outputs (a ready target selects its per-image parts for
the rows, ``ScoreTarget.for_images``). Grids of one to three axes (signals, images, volumes) are handled alike.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.backends import inputs as multi
from gradcam.backends.common import TOP1, Target, class_targets, positive_int
from gradcam.copies import channels_last_view, run_in_batches
from gradcam.explanation import Explanation
from gradcam.methods.base import LayerMethod, Method, channel_map, eigen_smooth_option
from gradcam.methods.diagnosis import occlusion_warnings
from gradcam.reference.scores import SCORES
from gradcam.targets import array_outputs, copy_scores, model_outputs, stack_columns, target_columns


def positive_sizes(value: int | tuple[int, ...], what: str, axes: int) -> tuple[int, ...]:
    """One positive int per grid axis (``axes`` of them: ``(height, width)`` for images) from one int or a tuple."""
    sizes = (value,) * axes if np.ndim(value) == 0 else tuple(value)
    if len(sizes) != axes:
        names = "(height, width)" if axes == 2 else f"one per grid axis ({axes})"
        raise ValueError(f"{what} must be an int or {names}, got {value!r}")
    return tuple(positive_int(size, what) for size in sizes)


@dataclass
class ImageProbe(Probe):
    """A probe together with the images it was taken on, in the model's layout, as float32 NumPy, and the inputs
    as the backend took them (``gradcam.backends.inputs``: a model's other inputs go with every copy)."""

    images: np.ndarray | None = None
    target: Target = None
    inputs: Any = None


class _PerturbedLayerMethod(LayerMethod):
    """A layer method whose channel weights come from forward passes of changed copies of the images.

    ``eigen_smooth`` (``False``, ``True`` or ``"centred"``): the map is the first principal component of the
    weighted activations ``w_k A_k`` instead of their sum, as for every channel-weighting method
    (``gradcam.methods.base.ChannelWeightMethod``); the weights ``w_k`` are unchanged.
    """

    has_contributions = True

    def __init__(
        self, model: Any, layer: Any = None, *, batch_size: int = 16, eigen_smooth: bool | str = False, **options: Any
    ) -> None:
        self.eigen_smooth = eigen_smooth_option(eigen_smooth, options.get("relu", True))
        super().__init__(model, layer, **options)
        self.batch_size = positive_int(batch_size, "batch_size")

    def probe(self, x: Any, target: Target) -> ImageProbe:
        probe = super().probe(x, target)
        if probe.logits is None and not callable(target):
            raise ValueError(
                f"{type(self).__name__} scores classes of a model whose output is class scores (N, classes); "
                "for another output give target= a callable (gradcam.targets)"
            )
        return ImageProbe(**vars(probe), images=self.backend.to_numpy(x), target=target, inputs=x)

    def row_scores(self, outputs: np.ndarray, probe: ImageProbe, images: np.ndarray, score: str) -> np.ndarray:
        """The target's scores of rows of outputs, row ``m`` a copy of image ``images[m]`` (``copy_scores``)."""
        return copy_scores(outputs, probe.target, probe.targets, images, score)


class ScoreCAM(_PerturbedLayerMethod):
    """Score-CAM (Wang et al., CVPR 2020 workshops): each channel's upsampled activation masks the image,
    and the model's confidence in the target on that masked image is the channel's weight:

    ``M_k = normalize(upsample(A_k))``, ``w_k = softmax(f(x * M_k))_c``, ``L = ReLU(sum_k w_k A_k)``,

    the softmax taken over the classes, as in the authors' code. As there, a flat channel (max = min), whose
    mask is undefined, gets weight 0 and costs no forward pass. For a target function ``s`` (``gradcam.targets``)
    the weight is its score of the masked image, ``w_k = s(f(x * M_k))``, with no softmax: a softmax over classes
    needs a class, and the function's score (a region's logits, a similarity) is already what is explained.
    Other libraries differ: pytorch-grad-cam takes the raw score ``f(x * M_k)_c`` and a softmax over the
    *channels* (and upsamples with aligned corners); torchcam subtracts the unmasked image's raw score,
    ``f(x * M_k)_c - f(x)_c``, then takes a softmax over the channels (and normalizes ``A_k`` before upsampling).
    A softmax over channels makes the weights sum to 1 per image, which changes the map, since ``L`` is a ReLU
    of a weighted sum.

    Cost: one forward per channel and image (K forwards per image, 64 for the default model's layer), in
    batches of ``batch_size`` masked images mixing channels and images.

    Parameters
    ----------
    batch_size : masked images per forward pass.
    max_channels : ``k`` keeps, per image, only the ``k`` channels of largest spatial variance of ``A_k`` (the
        "Faster Score-CAM" of the Score-CAM authors' repository); the others get weight 0. The explanation is
        then named ``"faster-scorecam"`` (``"faster-sscam"``, ``"faster-iscam"`` for the variants).
    weighting : ``"classes"`` (default, the authors'): ``w_k = softmax(f(x * M_k))_c`` over the classes;
        ``"channels"`` (pytorch-grad-cam's): ``w = softmax_k(f(x * M_k)_c)``, the raw target scores with a softmax
        over the channels, a flat channel (mask 0) included.
    """

    name = "scorecam"
    WEIGHTINGS = ("classes", "channels")
    # masked copies per channel, whose scores are averaged (SS-CAM and IS-CAM, ``gradcam.methods.score_variants``)
    n_samples = 1

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        batch_size: int = 16,
        max_channels: int | None = None,
        weighting: str = "classes",
        **options: Any,
    ) -> None:
        super().__init__(model, layer, batch_size=batch_size, **options)
        self.max_channels = None if max_channels is None else positive_int(max_channels, "max_channels")
        if self.max_channels is not None:
            self.name = f"faster-{self.name}"
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(self.WEIGHTINGS)}, got {weighting!r}")
        self.weighting = weighting

    def scored_channels(self, A: np.ndarray) -> np.ndarray:
        """``(N, K)`` bool: the channels that get a forward pass (not flat, unless weighted over the channels;
        the top ``max_channels`` by variance)."""
        grid = tuple(range(2, A.ndim))
        selected = A.max(axis=grid) > A.min(axis=grid)
        if self.weighting == "channels":
            selected[:] = True
        if self.max_channels is not None and self.max_channels < A.shape[1]:
            order = np.argsort(-A.astype(np.float64).var(axis=grid), axis=1, kind="stable")
            top = np.zeros_like(selected)
            np.put_along_axis(top, order[:, : self.max_channels], True, axis=1)
            selected &= top
        return selected

    def mask_copies(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``copies(masks, s)``: the masks ``(rows, *grid)`` of copies ``s`` (one index per row, below
        ``n_samples``) of the channels' masks ``masks``, called on the rows in order. Score-CAM's is the mask
        itself; made anew for each layer, so that a variant's noise starts from its seed every time."""
        return lambda masks, s: masks

    def layer_map(self, name: str, probe: ImageProbe) -> tuple[np.ndarray, np.ndarray]:
        A = probe.activations[name]
        pairs = np.argwhere(self.scored_channels(A))  # (M, 2) rows (image n, channel k), image by image
        axis = self.backend.input_channel_axis(self.model)
        images = channels_last_view(probe.images, axis)
        copies, S = self.mask_copies(), self.n_samples  # row r is copy r % S of pair r // S

        def fill(batch: np.ndarray, rows: np.ndarray) -> None:
            n, k = pairs[rows // S].T
            size = tuple(probe.input_size)
            masks = copies(ref.normalize(ref.upsample(A[n, k], size), grid=len(size)), rows % S)
            np.multiply(images[n], masks[..., None], out=channels_last_view(batch, axis))

        score = "probability" if self.weighting == "classes" else "raw"

        def forward(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            copies = multi.replaced(probe.inputs, batch, pairs[rows // S, 0])
            outputs = model_outputs(self.backend, self.model, copies, probe.target)
            return self.row_scores(outputs, probe, pairs[rows // S, 0], score)

        copy_scores = run_in_batches(len(pairs) * S, self.batch_size, probe.images.shape[1:], fill, forward)
        scores = copy_scores.reshape(len(pairs), S).mean(axis=1, dtype=np.float64)
        weights = np.zeros(A.shape[:2], dtype=np.float32)
        if self.weighting == "classes":
            weights[pairs[:, 0], pairs[:, 1]] = scores
        else:  # a softmax over each image's scored channels
            exponents = np.full(A.shape[:2], -np.inf)
            exponents[pairs[:, 0], pairs[:, 1]] = scores
            weights[:] = ref.softmax(exponents)
        return channel_map(A, weights, self.eigen_smooth, ref.weighted_map, self.relu), weights


class AblationCAM(_PerturbedLayerMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): a channel's weight is the share of the target score lost
    when that channel is set to zero at the layer:

    ``w_k = (y_c - y_c^(k)) / |y_c|``, ``L = ReLU(sum_k w_k A_k)``, with ``y_c`` the raw target score and
    ``y_c^(k)`` the score with channel ``k`` zeroed (for a target function, its score of the outputs).

    The paper divides by ``y_c``; dividing by ``|y_c|`` is the same for a positive score and keeps the
    meaning "a positive weight: removing the channel lowers the score" for a negative one, where dividing by
    ``y_c`` would flip every weight and turn the map inside out. Where ``y_c = 0`` the weights are the drops
    ``y_c - y_c^(k)`` themselves, never a division by zero. (Dividing by a positive number per image does not
    change the normalized map, so in every case the map is that of the drops.) A channel that is zero
    everywhere cannot change the output when zeroed: its weight is 0 and it costs no forward pass.

    Cost: one forward per non-zero channel and image, plus one unablated forward per image, in batches of
    ``batch_size`` rows mixing channels and images. The backend zeroes the channel inside the forward
    (``predict_ablated``); the model is not changed.
    """

    name = "ablationcam"
    reads_layer_input = False  # it zeroes channels of the layer's output

    def __init__(self, model: Any, layer: Any = None, *, batch_size: int = 16, **options: Any) -> None:
        if options.get("reshape") is not None:
            raise ValueError(
                "AblationCAM zeroes channels of the layer's own output, which a reshape function hides; "
                "name the layout instead (layout='NHWC', 'NTC:1', ...)"
            )
        super().__init__(model, layer, batch_size=batch_size, **options)

    def layer_map(self, name: str, probe: ImageProbe) -> tuple[np.ndarray, np.ndarray]:
        A = probe.activations[name]
        n_images = A.shape[0]
        live = np.abs(A).max(axis=tuple(range(2, A.ndim))) > 0
        # one unablated row (channel -1) per image, then one row per live channel
        unablated = np.stack([np.arange(n_images), np.full(n_images, -1)], axis=1)
        pairs = np.concatenate([unablated, np.argwhere(live)])

        def fill(batch: np.ndarray, rows: np.ndarray) -> None:
            np.take(probe.images, pairs[rows, 0], axis=0, out=batch)

        def forward(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            outputs = array_outputs(
                lambda: self.backend.predict_ablated(
                    self.model, multi.replaced(probe.inputs, batch, pairs[rows, 0]), name, pairs[rows, 1],
                    reshape=self.reshape,
                ),
                probe.target,
            )
            return self.row_scores(outputs, probe, pairs[rows, 0], "raw")

        scores = run_in_batches(len(pairs), self.batch_size, probe.images.shape[1:], fill, forward)
        y = scores[:n_images]
        n, k = pairs[n_images:].T
        drops = np.zeros(A.shape[:2])
        drops[n, k] = y[n] - scores[n_images:]
        weights = ablation_weights(y, drops)
        return channel_map(A, weights, self.eigen_smooth, ref.weighted_map, self.relu), weights


def ablation_weights(y: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """``w_k = drop_k / |y_c|`` per image, and ``w_k = drop_k`` where ``y_c = 0`` (see ``AblationCAM``).

    Parameters
    ----------
    y : (N,) the unablated target scores.
    drops : (N, K) ``y_c - y_c^(k)``.
    """
    y = np.asarray(y, dtype=np.float64)
    scale = np.where(y != 0, np.abs(y), 1.0)
    return (np.asarray(drops, dtype=np.float64) / scale[:, None]).astype(np.float32)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of a window sliding by ``stride`` along ``size`` pixels; the last window ends at the edge,
    so that every pixel is covered."""
    if window > size:
        raise ValueError(f"the occlusion window ({window} pixels) is larger than the image ({size} pixels)")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


class Occlusion(Method):
    """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014; the Grad-CAM paper's faithfulness reference):
    a ``window`` square of ``baseline`` slides over the image by ``stride``; each pixel's value is the drop of
    the target's score, ``s(x) - s(x with the window occluded)``, averaged over the windows that cover it.

    ``raw`` holds those signed average drops ``(N, *grid)``; ``maps`` are ``normalize(ReLU(raw))``: only the
    regions whose occlusion lowers the score, like the CAM methods. The windows of all images go through the
    model ``batch_size`` at a time (one forward per window position and image). No layer is used. The grid may
    have one axis (signals ``(N, C, L)``), two (images) or three (volumes): the window slides along each.

    Parameters
    ----------
    window, stride : the window's side and step in pixels (an int for every grid axis, or one per axis:
        ``(height, width)`` for images). The last window along each axis ends at the edge, so every pixel is
        covered.
    baseline : the value occluded pixels take, in every channel (0.0: black for images in [0, 1], the mean for
        normalized input).
    score : ``"probability"`` (softmax over the classes, default) or ``"raw"`` (the target's output), for class
        targets; a target function's score is its own value (``gradcam.targets.copy_scores``).
    batch_size : occluded images per forward pass.
    """

    name = "occlusion"
    takes_layer = False

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        window: int | tuple[int, ...] = 8,
        stride: int | tuple[int, ...] = 4,
        baseline: float = 0.0,
        score: str = "probability",
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        super().__init__(model, layer, **options)
        for value, what in ((window, "window"), (stride, "stride")):
            positive_sizes(value, what, max(np.size(value), 1))
        self.window, self.stride = window, stride
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.baseline, self.score = float(baseline), score
        self.batch_size = positive_int(batch_size, "batch_size")

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        x = self.inputs(x)
        columns = target_columns(target)
        if columns is not None:  # several targets per image: one pass of all windows per target
            return stack_columns([self(x, column) for column in columns])
        images = self.backend.to_numpy(x)
        axis = self.backend.input_channel_axis(self.model)
        pixels = channels_last_view(images, axis)
        n_images, grid = pixels.shape[0], pixels.shape[1:-1]
        window = positive_sizes(self.window, "window", len(grid))
        stride = positive_sizes(self.stride, "stride", len(grid))
        outputs = model_outputs(self.backend, self.model, multi.replaced(x, images), target, self.batch_size)
        targets = np.full(n_images, TOP1, dtype=np.int64) if callable(target) else class_targets(target, outputs)
        everyone = np.arange(n_images)
        clean = copy_scores(outputs, target, targets, everyone, self.score)
        corners = list(itertools.product(*(window_starts(*sizes) for sizes in zip(grid, window, stride, strict=True))))
        pairs = np.stack(np.meshgrid(everyone, np.arange(len(corners)), indexing="ij"), -1).reshape(-1, 2)

        def region(corner: tuple[int, ...]) -> tuple[slice, ...]:
            return tuple(slice(start, start + size) for start, size in zip(corner, window, strict=True))

        def fill(batch: np.ndarray, rows: np.ndarray) -> None:
            np.take(images, pairs[rows, 0], axis=0, out=batch)
            view = channels_last_view(batch, axis)
            for i, p in enumerate(pairs[rows, 1]):
                view[(i, *region(corners[p]))] = self.baseline

        def forward(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            batch_outputs = model_outputs(self.backend, self.model, multi.replaced(x, batch, pairs[rows, 0]), target)
            return copy_scores(batch_outputs, target, targets, pairs[rows, 0], self.score)

        occluded = run_in_batches(len(pairs), self.batch_size, images.shape[1:], fill, forward)
        drops = clean[:, None] - occluded.reshape(n_images, len(corners))
        total = np.zeros((n_images, *grid))
        covered = np.zeros(grid)
        for p, corner in enumerate(corners):
            total[(slice(None), *region(corner))] += drops[:, p].reshape(-1, *[1] * len(grid))
            covered[region(corner)] += 1
        raw = (total / covered).astype(np.float32)
        explanation = Explanation(
            maps=ref.normalize(ref.relu(raw), grid=len(grid)),
            targets=targets,
            scores=copy_scores(outputs, target, targets, everyone, "raw").astype(np.float32),
            method=self.name,
            layers=["input"],
            raw_by_layer={"input": raw},
            logits=outputs if outputs.ndim == 2 else None,
            grid=len(grid),
        )
        return self.warned(explanation, occlusion_warnings(raw))
