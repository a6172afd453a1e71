"""The small bases every method shares: pick the backend, probe, turn raw maps into an Explanation.

A method subclass says only what differs between methods: how a layer's activations ``A`` and gradients
``G`` become a raw map (and, for channel-weighting methods, the channel weights). Everything else, the
framework, the layers, upsampling, normalisation and several-layer averaging, lives here once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Backend, Probe, backend_by_name, get_backend
from gradcam.backends import inputs as multi
from gradcam.backends.common import Target, layer_list
from gradcam.explanation import Explanation, ExplanationWarning, ProbabilityWarning, issue
from gradcam.methods.diagnosis import layer_map_warnings
from gradcam.reference import family, fast, postprocess
from gradcam.targets import stack_columns, target_columns

# how a backend's note (``Backend.explained_model``) starts when the explained score is a probability
PROBABILITY_NOTE = "the explained score is a probability"
OUTPUTS_SUM_TO_ONE = (
    "every row of the model's output is >= 0 and sums to 1, as after a softmax; the papers explain the class's "
    "logit before it: leave the softmax out of the model (or select the logits with output=)"
)


def looks_like_probabilities(outputs: np.ndarray | None) -> bool:
    """Whether ``(N, classes)`` outputs are a softmax's: non-negative rows that sum to 1 (to float32 rounding).

    A backend takes off the final softmax it can see (a Keras activation, an ``nn.Softmax`` module); this
    catches the ones it cannot (a functional softmax in ``forward``, a JAX function), whatever the framework.
    """
    if outputs is None or outputs.ndim != 2 or outputs.shape[1] < 2:
        return False
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, rtol=0, atol=1e-4))


class Method(ABC):
    """Base of every explanation method.

    Parameters
    ----------
    model : a ``torch.nn.Module``, a Keras model, or a JAX model (``(features, head)`` functions or a
        Flax ``(module, variables)`` pair); its framework picks the backend.
    layer : a layer name (``"layer4"``, ``"layer4.1.conv2"``), the layer object, its index among the layers in
        execution order (``-1`` the last to run; ``gradcam layers`` lists them in that order), or a list of them;
        ``None`` picks the layer by the stated rule (``docs/layers.md``).
    layout : how the layer's output is laid out, when it is not inferred right: ``"NCHW"``, ``"NHWC"`` (Swin,
        ConvNeXt blocks, Keras), or tokens ``"NTC"`` with the number of leading class tokens to drop,
        ``"NTC:1"`` (ViT), ``"NTC:2"`` (DeiT).
    reshape : maps a non-spatial layer output (NumPy) to ``(N, K, h, w)``, e.g. ``gradcam.vit_reshape``; give
        ``layout`` or ``reshape``, not both.
    output : which output of a model with several to explain: a dict key, a tuple index or a dataclass field
        (``None``: the model's one output, or a Hugging Face model's ``logits``).
    probability : explain the probability after a model's final softmax or sigmoid instead of the logit before
        it (default False: the papers' class score). Where the final activation cannot be taken off, the
        explained score is a probability and every explanation carries a ``ProbabilityWarning``.
    backend : force a backend by name (``"torch"``, ``"tensorflow"``, ``"jax"``) instead of detecting it.
    quiet : keep the warnings about degenerate results in ``Explanation.warnings`` only, without issuing them
        with ``warnings.warn`` (the command line writes them to its records instead).
    upsample : how a layer's map is brought to the input's size: ``"bilinear"`` (default), ``"nearest"`` or
        ``"bicubic"`` (``gradcam.reference.postprocess.resize``). Methods whose maps already have the input's
        size (input gradients, occlusion) have nothing to upsample.
    input : which input of a model with several the map is about, when ``x`` is a tuple or list of batches (the
        model called as ``model(*x)``) or a dict (``model(**x)``; a Keras model gets the list or dict): an index
        or a dict key (``None``: the first). Gradient methods differentiate with respect to it only, SmoothGrad
        and Smooth Grad-CAM++ add noise to it only, Score-CAM, Ablation-CAM and occlusion change only it (the
        copies of example ``n`` take row ``n`` of every other input); maps have its grid, targets see the
        model's whole output (``gradcam.backends.inputs``).

    ``notes`` says what was done to the model to explain it (a wrapper unwrapped, an output selected, a final
    softmax left out).

    A method holds its model until it is closed: ``with GradCAM(model, layer) as cam:`` closes it at the end of
    the block (as pytorch-grad-cam's methods release their hooks), ``close()`` at any time. Between calls it
    holds no hook and changes nothing in the model.
    """

    name = "method"
    takes_layer = True  # False: a method of the input's pixels (input gradients, occlusion), given no layer

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        layout: str | None = None,
        reshape: Callable[[np.ndarray], np.ndarray] | None = None,
        output: Any = None,
        probability: bool = False,
        backend: str | None = None,
        quiet: bool = False,
        upsample: str = "bilinear",
        input: Any = None,
    ) -> None:
        if layout is not None and reshape is not None:
            raise ValueError("give layout= (a layout name such as 'NHWC') or reshape= (a function), not both")
        self.layers = layer_list(layer)
        self.reshape = layout if layout is not None else reshape
        self.quiet = quiet
        self.input = input
        if upsample not in postprocess.UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(postprocess.UPSAMPLE_MODES)}, got {upsample!r}")
        self.upsample = upsample
        self.backend: Backend = backend_by_name(backend) if backend else get_backend(model)
        self._model, self.notes = self.backend.explained_model(model, output=output, probability=probability)
        # the notes that say the score is a probability warn with every explanation; the others only inform
        self._standing = [
            ExplanationWarning(ProbabilityWarning, note) for note in self.notes if note.startswith(PROBABILITY_NOTE)
        ]
        self._default_layers: dict[tuple, list[str]] = {}

    @property
    def model(self) -> Any:
        """The model explained; a ``ValueError`` once the method is closed."""
        if self._model is None:
            raise ValueError(f"this {type(self).__name__} is closed (its with block ended); make a new one")
        return self._model

    def close(self) -> None:
        """Let go of the model and of the layers found for it, so that they (and the backend's per-model
        caches, held weakly) can be freed; calling the method afterwards raises a ``ValueError``."""
        self._model = None
        self._default_layers.clear()

    def __enter__(self) -> Method:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def inputs(self, x: Any) -> Any:
        """``x`` as the backend takes it: one batch as given, several inputs as ``gradcam.backends.inputs.Inputs``
        with this method's ``input`` explained (checked: a known key or index, one batch size)."""
        return multi.wrapped(x, self.input)

    @abstractmethod
    def __call__(self, x: Any, target: Target = None) -> Explanation:
        """Explain the batch ``x`` for ``target``: ``None`` (top-1), an int, one int per image, or a callable
        on the model's outputs returning one score per image."""

    def warned(self, explanation: Explanation, found: list[ExplanationWarning]) -> Explanation:
        """``explanation`` with the warnings ``found`` added, after those that hold for every explanation of the
        model (a probability explained); all are also issued unless the method is quiet."""
        found = self._standing + found
        if not any(w.category is ProbabilityWarning for w in found) and looks_like_probabilities(explanation.logits):
            found.insert(0, ExplanationWarning(ProbabilityWarning, f"{PROBABILITY_NOTE}: {OUTPUTS_SUM_TO_ONE}"))
        explanation.warnings = explanation.warnings + tuple(found)
        if found and not self.quiet:
            issue(found)
        return explanation

    def layers_for(self, x: Any) -> list[Any]:
        """The requested layers, or the backend's default layer for inputs shaped like ``x`` (found once).

        This is the one place where a default layer is chosen; backends take the layers they are given.
        """
        key = tuple(getattr(x, "shape", ()))[1:]
        if self.layers and not any(is_layer_index(layer) for layer in self.layers):
            return self.layers
        if key not in self._default_layers:
            self._default_layers[key] = (
                [self.backend.default_layer(self.model, x)] if not self.layers else self._indexed_layers(x)
            )
        return self._default_layers[key]

    def _indexed_layers(self, x: Any) -> list[Any]:
        """The requested layers with each integer replaced by the name of the layer at that index of the model's
        layers in execution order (``layer_shapes``, as ``gradcam layers`` lists them; -1 is the last to run)."""
        names = [name for name, _ in self.backend.layer_shapes(self.model, x)]
        resolved = []
        for layer in self.layers:
            if not is_layer_index(layer):
                resolved.append(layer)
            elif -len(names) <= layer < len(names):
                resolved.append(names[layer])
            else:
                raise ValueError(
                    f"layer index {layer} is out of range: the model runs {len(names)} layers, indices "
                    f"{-len(names)}..{len(names) - 1} (`gradcam layers` lists them in that order)"
                )
        return resolved

    def __repr__(self) -> str:
        layers = ", ".join(map(str, self.layers)) or "default"
        return f"{type(self).__name__}(layer={layers}, backend={self.backend.NAME})"


class LayerMethod(Method):
    """A method that reads one or more layers' activations and gradients (one forward, one backward).

    ``uses_gradients``: whether the map is computed from ``G`` (for the reasons given when a map is all zero).
    ``has_contributions``: whether the map is ``ReLU(sum_k C_k)`` of per-channel contributions ``C_k``
    (``contributions_of``), for which these options apply:

    Parameters
    ----------
    relu : ``False`` keeps the map signed, ``sum_k C_k`` without the ReLU: negative where the layer's evidence
        speaks against the target. Signed maps are normalized by their largest magnitude, ``m / max |m|``, into
        [-1, 1] with 0 kept at 0 (``gradcam.reference.postprocess.normalize_signed``); ``raw`` is signed too.
    contributions : ``True`` keeps each channel's contribution ``C_k`` at each layer (``w_k A_k`` for the channel
        weighting methods, ``ReLU(G_k) A_k`` for LayerCAM, ``G_k A_k`` for HiResCAM), ``(N, K, h, w)`` per layer
        in ``Explanation.contributions_by_layer``; off by default, as they weigh as much as the activations.
    of_input : ``True`` reads each layer's input instead of its output: ``A`` is what the layer is called with (a
        torch module's first argument, a Keras layer's, a Flax linen module's) and ``G = d y / d A`` the gradient
        there, so the map is the method's at the boundary before the layer (``probe(..., at="input")``).
        Methods that also act on the layer's output (CAM's dense layer after it, Ablation-CAM's ablated
        channels, Guided Grad-CAM's one forward) refuse it.
    """

    uses_gradients = True
    has_contributions = False
    reads_layer_input = True  # False: the method also acts on the layer's output, so of_input=True is refused

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        relu: bool = True,
        contributions: bool = False,
        of_input: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(of_input, bool):
            raise ValueError(f"of_input must be True or False, got {of_input!r}")
        if of_input and not self.reads_layer_input:
            raise ValueError(
                f"{type(self).__name__} also acts on the layer's output, so of_input=True does not apply; it does to "
                "the methods that read only A and G (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM ...)"
            )
        self.at = "input" if of_input else "output"
        if (not relu or contributions) and not self.has_contributions:
            raise ValueError(
                f"{type(self).__name__}'s map is not a ReLU of per-channel contributions, so relu=False and "
                "contributions=True do not apply; they do to the channel-weighting methods, LayerCAM and HiResCAM"
            )
        if not isinstance(relu, bool) or not isinstance(contributions, bool):
            raise ValueError(f"relu and contributions must be True or False, got {relu!r} and {contributions!r}")
        self.relu, self.keep_contributions = relu, contributions
        super().__init__(model, layer, **options)

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        """Explain ``x`` for ``target`` (``Method.__call__``); several targets per image, an ``(N, T)`` int array
        or a list of ``T`` callables, give maps ``(N, T, *grid)`` (``gradcam.targets.stack_columns``) at the cost
        of ``T`` single calls (``T`` forward and backward passes): a probe differentiates one score per image."""
        x = self.inputs(x)
        columns = target_columns(target)
        if columns is not None:
            return stack_columns([self(x, column) for column in columns])
        return self.explain_probe(self.probe(x, target))

    def probe(self, x: Any, target: Target) -> Probe:
        return self.backend.probe(self.model, x, self.layers_for(x), target, reshape=self.reshape, at=self.at)

    @abstractmethod
    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw map ``(N, h, w)`` and channel weights ``(N, K)`` (or None) of layer ``name``."""

    def contributions_of(self, name: str, probe: Probe, weights: np.ndarray | None) -> np.ndarray:
        """Each channel's contribution ``C_k = w_k A_k`` at layer ``name``, ``(N, K, h, w)``
        (``gradcam.reference.channel_contributions``); methods with a weight per position override it."""
        return ref.channel_contributions(probe.activations[name], weights)

    def explain_probe(self, probe: Probe) -> Explanation:
        """The explanation of a probe: each layer's raw map and weights, the maps upsampled and normalised, and
        a warning for each layer whose map is all zero or flat, with the reason read from ``A`` and ``G``."""
        raw_by_layer, weights_by_layer, contributions_by_layer, found = {}, {}, {}, []
        for name in probe.layers:
            raw, weights = self.layer_map(name, probe)
            raw_by_layer[name] = raw
            if weights is not None:
                weights_by_layer[name] = weights
            if self.keep_contributions:
                contributions_by_layer[name] = self.contributions_of(name, probe, weights)
            G = probe.gradients[name] if self.uses_gradients else None
            found += layer_map_warnings(self.name, name, raw, probe.activations[name], G)
        explanation = Explanation(
            maps=combine_layers(list(raw_by_layer.values()), probe.input_size, self.upsample, signed=not self.relu),
            targets=probe.targets,
            scores=probe.scores,
            method=self.name,
            layers=list(probe.layers),
            raw_by_layer=raw_by_layer,
            weights_by_layer=weights_by_layer,
            logits=probe.logits,
            grid=len(probe.input_size),
            contributions_by_layer=contributions_by_layer,
        )
        return self.warned(explanation, found)


def is_layer_index(layer: Any) -> bool:
    """Whether a layer is given by its index (an int, not a bool) rather than by its name or object."""
    return isinstance(layer, (int, np.integer)) and not isinstance(layer, (bool, np.bool_))


def combine_layers(
    raw_maps: list[np.ndarray], size: tuple[int, ...], upsample: str = "bilinear", signed: bool = False
) -> np.ndarray:
    """Each layer's map upsampled to ``size`` by ``upsample`` and normalised; several layers averaged and
    normalised again. ``size`` is the input's grid: ``(H, W)`` for images, ``(L,)`` for signals, ``(D, H, W)``
    for volumes, and the maps ``(N, *grid)`` of the same number of axes.

    Bilinear on images in float32 (``gradcam.reference.fast``): ``normalize(upsample(raw, size))`` of the float64
    formulas to float32 rounding, in about a tenth of their time. Every other case (nearest and bicubic, asked
    for less often; linear on signals and trilinear on volumes) runs the float64 formulas
    (``gradcam.reference.postprocess.resize`` and ``normalize`` over the grid's axes). ``signed`` maps are
    normalized by their largest magnitude instead (``postprocess.normalize_signed``), in float64.
    """
    grid = len(size)
    if signed:
        maps = [postprocess.normalize_signed(postprocess.resize(raw, size, upsample), grid) for raw in raw_maps]
        return maps[0] if len(maps) == 1 else postprocess.normalize_signed(np.mean(maps, axis=0), grid)
    if upsample == "bilinear" and grid == 2:
        maps = [fast.upsample_normalized(raw, size) for raw in raw_maps]
    else:
        maps = [postprocess.normalize(postprocess.resize(raw, size, upsample), grid=grid) for raw in raw_maps]
    if len(maps) == 1:
        return maps[0]
    return fast.normalize(np.mean(maps, axis=0), grid=grid)


class ChannelWeightMethod(LayerMethod):
    """A method whose map is ``ReLU(sum_k w_k A_k)``: subclasses give ``channel_weights``.

    Parameters
    ----------
    eigen_smooth : ``False`` (default: the sum), ``True`` or ``"centred"``: the map is instead the first
        principal component of the weighted activations ``w_k A_k``, oriented to agree with their sum
        (pytorch-grad-cam's ``eigen_smooth``; ``gradcam.reference.family.eigen_smooth_map``), uncentred as
        Eigen-CAM's paper, or centred as pytorch-grad-cam. The channel weights are the method's either way.
    """

    has_contributions = True

    def __init__(self, model: Any, layer: Any = None, *, eigen_smooth: bool | str = False, **options: Any) -> None:
        self.eigen_smooth = eigen_smooth_option(eigen_smooth, options.get("relu", True))
        super().__init__(model, layer, **options)

    @abstractmethod
    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        """The ``(N, K)`` channel weights of one layer."""

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
        A = probe.activations[name]
        weights = self.channel_weights(A, probe.gradients[name], probe)
        return channel_map(A, weights, self.eigen_smooth, relu=self.relu), weights


def eigen_smooth_option(eigen_smooth: bool | str, relu: bool = True) -> bool | str:
    """``eigen_smooth`` as given, checked: ``False``, ``True`` or ``"centred"`` (see ``ChannelWeightMethod``), and
    not with ``relu=False`` (a principal component's sign is chosen, not measured: it has no signed reading)."""
    if not (isinstance(eigen_smooth, bool) or eigen_smooth == "centred"):
        raise ValueError(f"eigen_smooth must be False, True or 'centred', got {eigen_smooth!r}")
    if eigen_smooth and relu is False:
        raise ValueError("eigen_smooth gives a principal component, whose sign is chosen; it has no relu=False form")
    return eigen_smooth


def channel_map(
    A: np.ndarray,
    weights: np.ndarray,
    eigen_smooth: bool | str,
    weighted: Callable[[np.ndarray, np.ndarray], np.ndarray] = fast.weighted_map,
    relu: bool = True,
) -> np.ndarray:
    """A channel-weighting method's raw map: ``L = ReLU(sum_k w_k A_k)`` computed by ``weighted``, without the
    ReLU when ``relu`` is False (``sum_k C_k`` of ``gradcam.reference.channel_contributions``), or with
    ``eigen_smooth`` the first principal component of ``w_k A_k`` (``family.eigen_smooth_map``, centred for
    ``"centred"``)."""
    if eigen_smooth:
        return family.eigen_smooth_map(A, weights, centred=eigen_smooth == "centred")
    if not relu:
        return ref.channel_contributions(A, weights).sum(axis=1)
    return weighted(A, weights)
