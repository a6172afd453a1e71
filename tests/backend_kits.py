"""The kits of the backend contract suite (``test_backend_contract.py``): per framework, the backend module and
small equivalent nets built by ``torch_nets``, ``keras_nets`` and ``jax_nets``, so that every contract test runs
the same way on each framework. A new backend adds its kit here.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import seeds

# the ways each framework can write a ReLU, each one a model of the kit (named here, where no framework is loaded)
HAND_RELU_FORMS = {
    "torch": (
        "nn.ReLU", "nn.ReLU(inplace)", "F.relu", "F.relu(inplace)", "torch.relu", "Tensor.relu", "Tensor.relu_",
        "torch.relu_", "relu_ on a view",
    ),
    "tensorflow": ("relu_layer", "activation_layer", "conv_activation", "dense_activation"),
    "jax": ("jax.nn.relu", "maximum", "jit", "checkpoint", "flax"),
}


@dataclass(frozen=True)
class Net:
    """A model, the layer a test looks at (``None``: none), and an input batch in the model's own layout."""

    model: Any
    layer: str | None
    x: np.ndarray


@dataclass(frozen=True)
class Listing:
    """What ``layer_names`` and ``layer_shapes`` must say about the kit's conv net for two images."""

    first: list[str]  # the names start with these
    contains: list[str]  # these are among the names (all of them, when ``complete``)
    shapes: dict[str, tuple[int, ...]]  # some layers' output shapes, in the model's own layout
    order: list[str]  # these layers run in this order (all of them, when ``complete``)
    complete: bool = False


@dataclass(frozen=True)
class Kit:
    """One framework's backend and its small nets, equivalent across frameworks."""

    name: str
    backend: Any
    channel_axis: int  # of the input of every model below
    layout: str  # the input layout as the messages spell it
    exact: bool  # whether the same request twice gives the same bits (eager kernels, not a graph fused per request)
    tensor: Callable[[np.ndarray], Any]  # a NumPy batch as the framework's own array
    numpy: Callable[[Any], np.ndarray]  # a framework array (with or without a graph behind it) as NumPy
    seeds: dict[str, Any]  # seed 000's first example: layer "features" outputs the input A
    seed_dense: Any  # seed 000's second example: layer "features" outputs O, dense layer "head" has weights W
    hand_relu: dict[str, Callable[[], Any]]  # the HAND_* model with its ReLUs written each way the framework can
    cnn: Any  # a small conv net with ReLUs, a residual block, batch norm and ``classes`` outputs
    classes: int
    images: Callable[[int], np.ndarray]  # n -> a batch for ``cnn``
    default: str  # cnn's default layer
    layers: list[str]  # three layers of cnn, not in the order they run
    non_spatial: str  # a layer of cnn whose output is (N, features)
    dense: str  # cnn's last dense layer
    not_dense: tuple[str, str]  # a layer of cnn that is not dense, and the message's key words
    listing: Listing
    logits: Callable[[Any, np.ndarray], np.ndarray]  # (model, x) -> the outputs, by the framework
    split: Callable[[np.ndarray], tuple[np.ndarray, Callable]]  # x -> cnn's activation at ``default``, the head
    gradient_by_hand: Callable[..., tuple[np.ndarray, np.ndarray]]  # (head, A, targets) -> scores, dy/dA
    input_gradient_by_hand: Callable[[np.ndarray, Sequence[int]], np.ndarray]  # (x, targets) -> dy/dx of cnn
    dense_by_hand: Callable[[], np.ndarray]  # cnn's ``dense`` weights as (outputs, inputs)
    other: Net  # another model with its default layer
    flat: Net  # a model with no spatial layer at all
    shared: Net  # a layer object called twice in one forward
    split_shared: Callable[[np.ndarray], tuple[np.ndarray, Callable]]  # x -> the shared layer's last output, head
    segmenter: Net  # a per-pixel classifier, its body layer
    region: Callable[[Any], Any]  # a target on the segmenter's output, in the framework's ops
    tokens: Net  # TokenNet: (N, 16, C) tokens straight from a 4x4 image, the head averages them
    exploding: Net  # raises RuntimeError("boom") in its forward after ``layer`` has run
    counting: Net  # a conv net with two classes that counts its forwards
    runs: Callable[[Any], int]  # how many forwards of ``counting`` have run
    classes_known_before_forward: bool  # whether a class index is range-checked before the forward runs
    state: Callable[[Any], Any]  # what the backend must leave as found on a model, comparable with ==
    unknown_layers: list[tuple[str, tuple[str, ...]]]  # a wrong name for cnn's layers, the message's key words
    not_a_model: tuple[Any, str]  # something of this framework that the backend cannot explain, and why


def model_layout(nchw: np.ndarray, channel_axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(nchw, dtype=np.float32), 1, channel_axis))


TOKEN_IMAGE = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype(np.float32)  # NCHW


def _torch_kit() -> Kit:
    import torch
    import torch_nets as nets

    from gradcam.backends import torch as backend

    cnn = nets.seeded(nets.SmallResNet())
    shared = nets.seeded(nets.SharedConvNet())
    return Kit(
        name="torch",
        backend=backend,
        channel_axis=1,
        layout="N, C, H, W",
        exact=True,
        tensor=torch.tensor,
        numpy=lambda t: t.detach().numpy(),
        seeds={"module": nets.SeedNet()},
        seed_dense=nets.SeedDenseNet(),
        hand_relu={form: functools.partial(nets.HandReluNet, relu) for form, relu in nets.RELU_CALLS.items()},
        cnn=cnn,
        classes=10,
        images=lambda n: nets.images(n).numpy(),
        default="layer2",
        layers=["layer2", "layer1.bn1", "layer1"],
        non_spatial="fc",
        dense="fc",
        not_dense=("layer2", "not a Linear layer"),
        listing=Listing(
            first=["conv1", "bn1", "relu"],
            contains=["layer2.shortcut.0"],
            shapes={"layer1": (2, 8, 8, 8), "layer2": (2, 16, 4, 4), "fc": (2, 10)},
            order=["layer2.bn2", "layer2.relu", "layer2", "fc"],
        ),
        logits=nets.logits,
        split=functools.partial(nets.split_small_resnet, cnn),
        gradient_by_hand=nets.gradient_by_hand,
        input_gradient_by_hand=functools.partial(nets.input_gradient_by_hand, cnn),
        dense_by_hand=lambda: cnn.fc.weight.detach().numpy(),
        other=Net(nets.seeded(nets.VGGStyle()), "features", nets.images(2).numpy()),
        flat=Net(nets.SeedNet(), None, np.ones((1, 2, 1, 1), np.float32)),
        shared=Net(shared, "conv", nets.images(2).numpy()),
        split_shared=functools.partial(nets.split_shared_conv, shared),
        segmenter=Net(nets.seeded(nets.Segmenter()), "body", nets.images(2).numpy()),
        region=nets.region,
        tokens=Net(nets.TokenNet(), "tokens", TOKEN_IMAGE),
        exploding=Net(nets.prepared(nets.Failing()), "net.layer1", nets.images(2).numpy()),
        counting=Net(nets.CountingNet(), "conv", nets.images(2).numpy()),
        runs=lambda model: model.runs,
        classes_known_before_forward=False,  # torch reads them off the forward's output, before the backward
        state=nets.model_state,
        unknown_layers=[
            ("layer3", (r"no layer named 'layer3'.*closest: .*layer1", "layer2")),
            ("layer2.conv3", ("closest",)),
        ],
        not_a_model=(lambda x: x, "torch.nn.Module"),
    )


def _tensorflow_kit() -> Kit:
    import keras_nets as nets
    import tensorflow as tf

    from gradcam.backends import tensorflow as backend

    cnn = nets.functional_cnn()
    shared = nets.SharedReluCNN()
    return Kit(
        name="tensorflow",
        backend=backend,
        channel_axis=-1,
        layout="N, H, W, C",
        exact=False,
        tensor=tf.constant,
        numpy=np.asarray,
        seeds={"functional": nets.seed_model()},
        seed_dense=nets.seed_dense_model(),
        hand_relu={form: functools.partial(nets.hand_relu_model, form) for form in HAND_RELU_FORMS["tensorflow"]},
        cnn=cnn,
        classes=5,
        images=nets.images,
        default="conv3",
        layers=["backbone/relu1", "backbone", "conv3"],
        non_spatial="fc1",
        dense="fc2",
        not_dense=("conv3", "not a Dense layer"),
        listing=Listing(
            first=["backbone", "backbone/conv1", "backbone/bn1"],
            contains=["backbone/add", "conv3", "gap", "fc1", "fc2"],
            shapes={"backbone/conv1": (2, 16, 16, 6), "conv3": (2, 8, 8, 8), "fc2": (2, 5)},
            order=["backbone/out", "backbone", "conv3"],
        ),
        logits=nets.logits,
        split=functools.partial(nets.split_functional_cnn, cnn),
        gradient_by_hand=nets.gradient_by_hand,
        input_gradient_by_hand=functools.partial(nets.input_gradient_by_hand, cnn),
        dense_by_hand=lambda: np.asarray(cnn.get_layer("fc2").kernel).T,
        other=Net(nets.sequential_cnn(), "relu3", nets.images(2)),
        flat=Net(nets.hand_relu_model("relu_layer"), None, seeds.HAND_X),
        shared=Net(shared, "relu", nets.images(2, size=8)),
        split_shared=functools.partial(nets.split_shared_relu, shared),
        segmenter=Net(nets.segmenter(), "body", nets.images(2, size=8)),
        region=nets.region,
        tokens=Net(nets.token_net(), "tokens", model_layout(TOKEN_IMAGE, -1)),
        exploding=Net(nets.exploding_model(), "relu", nets.images(1, size=8)),
        counting=Net(nets.counting_model(), "conv", nets.images(2, size=8)),
        runs=nets.runs,
        classes_known_before_forward=True,
        state=nets.layer_state,
        unknown_layers=[("conv33", ("closest: conv3",))],
        not_a_model=(object(), "keras.Model"),
    )


def _jax_kit() -> Kit:
    import jax.numpy as jnp
    import jax_nets as nets
    from flax.linen import module as flax_module

    from gradcam.backends import jax as backend

    cnn = nets.small_net()
    shared = nets.shared_conv_net()
    hand_relu = {form: functools.partial(nets.hand_relu_pair, form) for form in ("jax.nn.relu", "maximum", "jit")}
    hand_relu["checkpoint"] = functools.partial(nets.hand_relu_pair, "checkpoint")
    hand_relu["flax"] = nets.hand_relu_flax
    names = ["backbone/conv1", "backbone/bn1", "backbone/conv2", "backbone", "conv3", "fc1", "fc2"]
    return Kit(
        name="jax",
        backend=backend,
        channel_axis=-1,
        layout="N, H, W, C",
        exact=False,
        tensor=jnp.asarray,
        numpy=np.asarray,
        seeds={"pair": nets.seed_pair(), "flax": nets.seed_flax()},
        seed_dense=nets.seed_dense_flax(),
        hand_relu=hand_relu,
        cnn=cnn,
        classes=5,
        images=nets.images,
        default="conv3",
        layers=["backbone/bn1", "backbone", "conv3"],
        non_spatial="fc1",
        dense="fc2",
        not_dense=("backbone", "not a Dense layer"),
        listing=Listing(first=[], contains=names, shapes={"conv3": (2, 8, 8, 8), "fc2": (2, 5)}, order=names,
                        complete=True),
        logits=nets.logits,
        split=functools.partial(nets.split_small_net, *cnn),
        gradient_by_hand=nets.gradient_by_hand,
        input_gradient_by_hand=functools.partial(nets.input_gradient_by_hand, cnn),
        dense_by_hand=lambda: np.asarray(cnn[1]["params"]["fc2"]["kernel"]).T,
        other=Net(shared, "conv", nets.images(2, size=8)),
        flat=Net(nets.seed_pair(), None, np.ones((1, 1, 1, 2), np.float32)),
        shared=Net(shared, "conv", nets.images(2, size=8)),
        split_shared=functools.partial(nets.split_shared_conv, *shared),
        segmenter=Net(nets.segmenter(), "body", nets.images(2, size=8)),
        region=nets.region,
        tokens=Net(nets.token_pair(), "features", model_layout(TOKEN_IMAGE, -1)),
        exploding=Net(nets.exploding_model(), "conv", nets.images(1, size=8)),
        counting=Net(nets.counting_net(), "conv", nets.images(2, size=8)),
        runs=lambda model: nets.RUNS[0],
        classes_known_before_forward=True,
        state=lambda model: list(flax_module._global_interceptor_stack),
        unknown_layers=[("conv33", ("closest: conv3",))],
        not_a_model=(nets.SmallNet(), "does not say where its layers are"),
    )


FRAMEWORKS = {"torch": ("torch",), "tensorflow": ("tensorflow", "keras"), "jax": ("jax", "flax")}
BUILDERS = {"torch": _torch_kit, "tensorflow": _tensorflow_kit, "jax": _jax_kit}


@functools.cache
def _built(name: str) -> Kit:
    return BUILDERS[name]()


def kit_for(name: str) -> Kit:
    """The kit of framework ``name``, built once per session; the test is skipped where the framework is absent."""
    for module in FRAMEWORKS[name]:
        pytest.importorskip(module)
    return _built(name)


def embedded_net_everywhere(weights_seed: int, input_seed: int) -> dict[str, tuple[Any, np.ndarray]]:
    """The embedded model's architecture with random weights (``weights_seed``) in torch, Keras and Flax, each with
    the same two 64x64 images (``input_seed``) in its own layout: framework -> (model, images)."""
    from gradcam.models import flax_net, keras_net, random_weights, torch_net

    weights = random_weights(seed=weights_seed)
    x = np.random.default_rng(input_seed).random((2, 64, 64, 3), dtype=np.float32)
    return {
        "torch": (torch_net.build(weights), np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
        "tensorflow": (keras_net.build(weights), x),
        "jax": (flax_net.build(weights), x),
    }
