"""Flax models as users write them: a ``linen`` CNN whose ``__call__`` takes a ``train`` flag (explained with
``FlaxModel(module, variables, apply_kwargs={"train": False})``), an ``nnx`` CNN with batch norm and an ``nnx``
ViT with a class token, each given as the module itself. The automatic layer, and Grad-CAM against a Grad-CAM
written here with ``jax.vjp`` on the model split by hand (its ``features`` and ``head`` methods), to 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp
from flax import linen, nnx
from zoo_common import Case, by_hand_nchw, check_grad_cam, grad_cam_by_hand, run_every_method

import gradcam
from gradcam.backends.jax import FlaxModel, NnxModel


class LinenBlock(linen.Module):
    width: int
    stride: int

    @linen.compact
    def __call__(self, x, train: bool):
        x = linen.Conv(self.width, (3, 3), strides=self.stride, name="conv")(x)
        return linen.relu(linen.BatchNorm(use_running_average=not train, name="bn")(x))


class LinenCNN(linen.Module):
    """``stem``, ``stage1``, ``stage2`` (each conv, batch norm, ReLU), global average pooling, ``fc``."""

    def setup(self):
        self.stem, self.stage1, self.stage2 = LinenBlock(8, 1), LinenBlock(16, 2), LinenBlock(16, 2)
        self.fc = linen.Dense(5)

    def features(self, x, train: bool = False):
        return self.stage2(self.stage1(self.stem(x, train), train), train)

    def head(self, A):
        return self.fc(A.mean(axis=(1, 2)))

    def __call__(self, x, train: bool):
        return self.head(self.features(x, train))


class NnxBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem, self.stage1 = NnxBlock(3, 8, 1, rngs), NnxBlock(8, 16, 2, rngs)
        self.stage2, self.fc = NnxBlock(16, 16, 2, rngs), nnx.Linear(16, 5, rngs=rngs)

    def features(self, x):
        return self.stage2(self.stage1(self.stem(x)))

    def head(self, A):
        return self.fc(A.mean(axis=(1, 2)))

    def __call__(self, x):
        return self.head(self.features(x))


class NnxEncoderBlock(nnx.Module):
    def __init__(self, dim: int, rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, dim, decode=False, rngs=rngs)
        self.norm2, self.mlp = nnx.LayerNorm(dim, rngs=rngs), nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(nnx.gelu(self.norm2(x)))


class NnxViT(nnx.Module):
    """``patch`` (4x4 patches of a 16x16 image), a class token, ``blocks/0``, ``blocks/1``, ``norm``, ``fc`` on
    the class token."""

    def __init__(self, rngs: nnx.Rngs, dim: int = 16) -> None:
        self.patch = nnx.Conv(3, dim, (4, 4), strides=4, rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.1)
        self.blocks = nnx.List([NnxEncoderBlock(dim, rngs), NnxEncoderBlock(dim, rngs)])
        self.norm, self.fc = nnx.LayerNorm(dim, rngs=rngs), nnx.Linear(dim, 5, rngs=rngs)

    def features(self, x):
        """The tokens after ``blocks/1.norm1`` (the layer Grad-CAM reads), and the residual stream beside them."""
        tokens = self.patch(x).reshape(x.shape[0], -1, self.cls.value.shape[-1])
        tokens = jnp.concatenate([jnp.broadcast_to(self.cls.value, (x.shape[0], 1, tokens.shape[-1])), tokens], 1)
        stream = self.blocks[0](tokens)
        return self.blocks[1].norm1(stream), stream

    def head(self, normed, stream):
        block = self.blocks[1]
        x = stream + block.attn(normed)
        x = x + block.mlp(nnx.gelu(block.norm2(x)))
        return self.fc(self.norm(x)[:, 0])

    def __call__(self, x):
        return self.head(*self.features(x))


def linen_cnn():
    module = LinenCNN()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    return FlaxModel(module, variables, apply_kwargs={"train": False})


def nnx_cnn():
    model = NnxCNN(nnx.Rngs(0))
    model.eval()
    return model


def nnx_vit():
    model = NnxViT(nnx.Rngs(0))
    model.eval()
    return model


CASES = {
    "flax linen CNN (train flag)": Case(linen_cnn, 16, "stage2", "NHWC", fc="fc"),
    "flax nnx CNN": Case(nnx_cnn, 16, "stage2", "NHWC", fc="fc"),
    "flax nnx ViT": Case(nnx_vit, 16, "blocks/1/norm1", "NTC:1"),
}


def split_by_hand(model):
    """``(features, head)`` of the model, from its own methods (not from the backend's interception)."""
    if isinstance(model, FlaxModel):
        def features(x):
            return model.module.apply(model.variables, x, method=LinenCNN.features)

        def head(A):
            return model.module.apply(model.variables, A, method=LinenCNN.head)

        return features, head
    if isinstance(model, NnxViT):
        return model.features, lambda pair: model.head(*pair)
    return model.features, model.head


def grad_cam_with_vjp(model, x, layout: str) -> np.ndarray:
    features, head = split_by_hand(model)
    A = features(jnp.asarray(x))
    score, backward = jax.vjp(lambda a: head(a).max(axis=1), A)
    (G,) = backward(jnp.ones_like(score))
    if isinstance(A, tuple):  # the ViT: the gradient at the normalized tokens, not at the residual stream
        A, G = A[0], G[0]
    return grad_cam_by_hand(by_hand_nchw(np.asarray(A), layout), by_hand_nchw(np.asarray(G), layout))


@pytest.fixture(scope="module", params=list(CASES))
def zoo(request):
    case = CASES[request.param]
    x = np.random.default_rng(0).uniform(0, 1, (2, case.size, case.size, 3)).astype(np.float32)
    return request.param, case, case.build(), x


def test_automatic_layer_layout_and_grad_cam_equal_a_hand_written_grad_cam(zoo):
    name, case, model, x = zoo
    check_grad_cam(name, case, model, x, grad_cam_with_vjp(model, x, case.layout), "jax")


def test_every_method_runs_on_every_model(zoo):
    name, case, model, x = zoo
    assert len(run_every_method(name, case, model, x)) == len(gradcam.METHODS)


def test_an_nnx_module_is_left_as_found_and_named_by_attribute_paths():
    model = nnx_cnn()
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    cam = gradcam.GradCAM(model, "stage1/bn", quiet=True)
    assert "nnx module NnxCNN" in cam.notes[0]
    ex = cam(np.ones((1, 16, 16, 3), np.float32))
    assert ex.raw.shape == (1, 8, 8)
    after = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, before, after))
    assert isinstance(cam.model, NnxModel) and "stage2/conv" in cam.backend.layer_names(model)


def test_a_linen_module_with_a_train_flag_needs_it_given_and_says_how():
    module = LinenCNN()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    with pytest.raises(TypeError, match="train"):
        gradcam.GradCAM((module, variables), quiet=True)(np.ones((1, 16, 16, 3), np.float32))
