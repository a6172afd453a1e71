"""One image + metadata model in PyTorch, Keras and Flax from ONE set of NumPy weights (tests/test_multi_input.py).

``image (N, 3, 8, 8) -> conv 3x3 "conv" (4 channels, same padding) -> ReLU -> global mean``; ``meta (N, 5) -> dense
"meta_dense" (4) -> ReLU``; the two concatenated (image features first) -> dense ``"head"`` (3 classes). The image is
channels first in PyTorch and channels last in Keras and Flax; the metadata is the same everywhere.
"""
from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SHAPE = (3, 8, 8)
META = 5
CLASSES = 3


def weights(seed: int = 1) -> dict[str, np.ndarray]:
    """The shared weights, in PyTorch's layout: conv ``(O, I, 3, 3)``, dense ``(out, in)``."""
    rng = np.random.default_rng(seed)
    return {
        "conv_w": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(0, 0.1, 4).astype(np.float32),
        "meta_w": rng.normal(0, 0.5, (4, META)).astype(np.float32),
        "meta_b": rng.normal(0, 0.1, 4).astype(np.float32),
        "head_w": rng.normal(0, 0.5, (CLASSES, 8)).astype(np.float32),
        "head_b": rng.normal(0, 0.1, CLASSES).astype(np.float32),
    }


def torch_model(w: dict[str, np.ndarray]) -> Any:
    """``forward(image, meta)``; ``seen`` records the metadata of every forward (to check what a method sends)."""
    import torch

    class ImageMeta(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.relu = torch.nn.ReLU()
            self.meta_dense = torch.nn.Linear(META, 4)
            self.meta_relu = torch.nn.ReLU()
            self.head = torch.nn.Linear(8, CLASSES)
            self.seen: list[np.ndarray] = []

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            self.seen.append(meta.detach().cpu().numpy().copy())
            pooled = self.relu(self.conv(image)).mean(dim=(2, 3))
            return self.head(torch.cat([pooled, self.meta_relu(self.meta_dense(meta))], dim=1))

    model = ImageMeta()
    with torch.no_grad():
        for name, value in (("conv", "conv"), ("meta_dense", "meta"), ("head", "head")):
            module = getattr(model, name)
            module.weight.copy_(torch.from_numpy(w[f"{value}_w"]))
            module.bias.copy_(torch.from_numpy(w[f"{value}_b"]))
    return model.eval()


def keras_model(w: dict[str, np.ndarray], by_name: bool = False) -> Any:
    """Two ``keras.Input``s (``image`` NHWC, ``meta``), called with a list, or with a dict when ``by_name``."""
    import keras

    image = keras.Input((*IMAGE_SHAPE[1:], IMAGE_SHAPE[0]), name="image")
    meta = keras.Input((META,), name="meta")
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU(name="relu")(conv(image)))
    meta_dense = keras.layers.Dense(4, name="meta_dense")
    features = keras.layers.Concatenate()([pooled, keras.layers.ReLU()(meta_dense(meta))])
    head = keras.layers.Dense(CLASSES, name="head")
    inputs = {"image": image, "meta": meta} if by_name else [image, meta]
    model = keras.Model(inputs, head(features))
    conv.set_weights([w["conv_w"].transpose(2, 3, 1, 0), w["conv_b"]])
    meta_dense.set_weights([w["meta_w"].T, w["meta_b"]])
    head.set_weights([w["head_w"].T, w["head_b"]])
    return model


def flax_model(w: dict[str, np.ndarray]) -> tuple[Any, dict]:
    """A linen module ``__call__(image, meta)`` (image NHWC) with its variables."""
    import flax.linen as nn
    import jax.numpy as jnp

    class ImageMeta(nn.Module):
        @nn.compact
        def __call__(self, image: Any, meta: Any) -> Any:
            maps = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv")(image))
            side = nn.relu(nn.Dense(4, name="meta_dense")(meta))
            return nn.Dense(CLASSES, name="head")(jnp.concatenate([maps.mean(axis=(1, 2)), side], axis=1))

    params = {
        "conv": {"kernel": w["conv_w"].transpose(2, 3, 1, 0), "bias": w["conv_b"]},
        "meta_dense": {"kernel": w["meta_w"].T, "bias": w["meta_b"]},
        "head": {"kernel": w["head_w"].T, "bias": w["head_b"]},
    }
    return ImageMeta(), {"params": params}


def batch(n: int = 2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 8, 8)`` (channels first) and metadata ``(N, 5)``."""
    rng = np.random.default_rng(seed)
    return rng.random((n, *IMAGE_SHAPE), dtype=np.float32), rng.normal(0, 1, (n, META)).astype(np.float32)
