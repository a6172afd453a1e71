"""A 1-D signal CNN and an r3d-like 3-D CNN, each built in PyTorch, Keras and Flax from ONE dict of NumPy weights
(PyTorch's layouts: convolution weights ``(out, in, *window)``, dense ``(out, in)``), for ``test_volumes.py``.

* ``signal``: ``Conv1d(2->6, 5, pad 2)-ReLU`` (``block1``), ``Conv1d(6->8, 3, pad 1)-ReLU`` (``features``), global
  average pooling, ``Dense(8->4)`` (``fc``). Input ``(N, 2, L)`` channels first, ``(N, L, 2)`` channels last.
* ``video``: as torchvision's r3d_18 in small: a stem ``Conv3d(3->8, 3, stride (1, 2, 2), pad 1)-BN-ReLU``
  (``stem``), one basic residual block ``ReLU(x + BN(conv(ReLU(BN(conv(x))))))`` (``features``), global average
  pooling over ``(D, H, W)``, ``Dense(8->4)`` (``fc``). Batch norm in inference mode, epsilon ``1e-5`` in all three.
  Input ``(N, 3, D, H, W)`` channels first, ``(N, D, H, W, 3)`` channels last.

In each framework the layer ``features`` outputs the same (channels-last in Keras and Flax) map, the automatic
layer of the model. Weights come from a seeded generator, so every build of one kind is the same network.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-5
CLASSES = 4


def signal_weights(seed: int = 11) -> dict[str, np.ndarray]:
    """The signal net's weights, PyTorch layouts, float32."""
    rng = np.random.default_rng(seed)
    return {
        "block1.conv.weight": rng.normal(0, 0.5, (6, 2, 5)),
        "block1.conv.bias": rng.normal(0, 0.1, 6),
        "features.conv.weight": rng.normal(0, 0.4, (8, 6, 3)),
        "features.conv.bias": rng.normal(0, 0.1, 8),
        "fc.weight": rng.normal(0, 0.5, (CLASSES, 8)),
        "fc.bias": rng.normal(0, 0.1, CLASSES),
    }


def video_weights(seed: int = 12) -> dict[str, np.ndarray]:
    """The r3d-like net's weights, PyTorch layouts, float32 (batch norm: weight, bias, running mean and var)."""
    rng = np.random.default_rng(seed)
    weights = {
        "stem.conv.weight": rng.normal(0, 0.2, (8, 3, 3, 3, 3)),
        "features.conv1.weight": rng.normal(0, 0.12, (8, 8, 3, 3, 3)),
        "features.conv2.weight": rng.normal(0, 0.12, (8, 8, 3, 3, 3)),
        "fc.weight": rng.normal(0, 0.5, (CLASSES, 8)),
        "fc.bias": rng.normal(0, 0.1, CLASSES),
    }
    for bn in ("stem.bn", "features.bn1", "features.bn2"):
        weights[f"{bn}.weight"] = rng.uniform(0.5, 1.5, 8)
        weights[f"{bn}.bias"] = rng.normal(0, 0.1, 8)
        weights[f"{bn}.running_mean"] = rng.normal(0, 0.1, 8)
        weights[f"{bn}.running_var"] = rng.uniform(0.5, 1.5, 8)
    return weights


def _float32(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float32) for name, value in weights.items()}


def _window_last(kernel: np.ndarray) -> np.ndarray:
    """A convolution weight ``(out, in, *window)`` as Keras' and Flax's ``(*window, in, out)``."""
    return np.ascontiguousarray(np.moveaxis(kernel, (0, 1), (-1, -2)))


# --- PyTorch -------------------------------------------------------------------------------------------------------


def torch_signal(weights: dict[str, np.ndarray]):
    import torch
    from torch import nn

    class ConvReLU(nn.Module):
        def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
            super().__init__()
            self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x))

    class SignalNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1 = ConvReLU(2, 6, 5)
            self.features = ConvReLU(6, 8, 3)
            self.fc = nn.Linear(8, CLASSES)

        def forward(self, x):
            return self.fc(self.features(self.block1(x)).mean(dim=2))

    model = SignalNet()
    model.load_state_dict({name: torch.from_numpy(value) for name, value in _float32(weights).items()})
    return model.eval()


def torch_video(weights: dict[str, np.ndarray]):
    import torch
    from torch import nn

    class Stem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1, bias=False)
            self.bn = nn.BatchNorm3d(8, eps=EPSILON)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)))

    class BasicBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv3d(8, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm3d(8, eps=EPSILON)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv3d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm3d(8, eps=EPSILON)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))

    class VideoNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = Stem()
            self.features = BasicBlock()
            self.fc = nn.Linear(8, CLASSES)

        def forward(self, x):
            return self.fc(self.features(self.stem(x)).mean(dim=(2, 3, 4)))

    model = VideoNet()
    state = {name: torch.from_numpy(value) for name, value in _float32(weights).items()}
    for bn in ("stem.bn", "features.bn1", "features.bn2"):
        state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    model.load_state_dict(state)
    return model.eval()


# --- Keras ---------------------------------------------------------------------------------------------------------


def keras_signal(weights: dict[str, np.ndarray]):
    import keras

    w = _float32(weights)
    inputs = keras.Input((None, 2), name="signal")
    x = keras.layers.Conv1D(6, 5, padding="same", name="block1_conv")(inputs)
    x = keras.layers.ReLU(name="block1")(x)
    x = keras.layers.Conv1D(8, 3, padding="same", name="features_conv")(x)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="fc")(x)
    model = keras.Model(inputs, outputs, name="signal_net")
    for stage in ("block1", "features"):
        model.get_layer(f"{stage}_conv").set_weights(
            [_window_last(w[f"{stage}.conv.weight"]), w[f"{stage}.conv.bias"]]
        )
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model


def keras_video(weights: dict[str, np.ndarray]):
    import keras

    w = _float32(weights)

    def conv_bn(x, conv: str, bn: str, stride: tuple[int, int, int]):
        x = keras.layers.ZeroPadding3D(1, name=f"{conv}_pad")(x)
        x = keras.layers.Conv3D(8, 3, strides=stride, use_bias=False, name=conv)(x)
        return keras.layers.BatchNormalization(epsilon=EPSILON, name=bn)(x)

    inputs = keras.Input((None, None, None, 3), name="clip")
    x = keras.layers.ReLU(name="stem")(conv_bn(inputs, "stem_conv", "stem_bn", (1, 2, 2)))
    y = keras.layers.ReLU(name="features_relu1")(conv_bn(x, "features_conv1", "features_bn1", (1, 1, 1)))
    y = conv_bn(y, "features_conv2", "features_bn2", (1, 1, 1))
    x = keras.layers.ReLU(name="features")(keras.layers.Add(name="features_add")([x, y]))
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="fc")(x)
    model = keras.Model(inputs, outputs, name="video_net")
    for conv, bn in (("stem.conv", "stem.bn"), ("features.conv1", "features.bn1"), ("features.conv2", "features.bn2")):
        model.get_layer(conv.replace(".", "_")).set_weights([_window_last(w[f"{conv}.weight"])])
        model.get_layer(bn.replace(".", "_")).set_weights(
            [w[f"{bn}.weight"], w[f"{bn}.bias"], w[f"{bn}.running_mean"], w[f"{bn}.running_var"]]
        )
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model


# --- Flax ----------------------------------------------------------------------------------------------------------


def flax_signal(weights: dict[str, np.ndarray]):
    import flax.linen as nn
    import jax.numpy as jnp

    from gradcam.backends.jax import FlaxModel

    class ConvReLU(nn.Module):
        channels: int
        kernel: int

        @nn.compact
        def __call__(self, x):
            pad = self.kernel // 2
            return nn.relu(nn.Conv(self.channels, (self.kernel,), padding=((pad, pad),), name="conv")(x))

    class SignalNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = ConvReLU(6, 5, name="block1")(x)
            x = ConvReLU(8, 3, name="features")(x)
            return nn.Dense(CLASSES, name="fc")(jnp.mean(x, axis=1))

    w = _float32(weights)
    params = {
        stage: {"conv": {"kernel": _window_last(w[f"{stage}.conv.weight"]), "bias": w[f"{stage}.conv.bias"]}}
        for stage in ("block1", "features")
    }
    params["fc"] = {"kernel": np.ascontiguousarray(w["fc.weight"].T), "bias": w["fc.bias"]}
    return FlaxModel(SignalNet(), {"params": params})


def flax_video(weights: dict[str, np.ndarray]):
    import flax.linen as nn
    import jax.numpy as jnp

    from gradcam.backends.jax import FlaxModel

    padding = ((1, 1), (1, 1), (1, 1))

    def conv(name: str, stride: tuple[int, int, int] = (1, 1, 1)) -> nn.Conv:
        return nn.Conv(8, (3, 3, 3), strides=stride, padding=padding, use_bias=False, name=name)

    def bn(name: str) -> nn.BatchNorm:
        return nn.BatchNorm(use_running_average=True, epsilon=EPSILON, name=name)

    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(bn("bn")(conv("conv", (1, 2, 2))(x)))

    class BasicBlock(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.relu(bn("bn1")(conv("conv1")(x)))
            return nn.relu(x + bn("bn2")(conv("conv2")(y)))

    class VideoNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = BasicBlock(name="features")(Stem(name="stem")(x))
            return nn.Dense(CLASSES, name="fc")(jnp.mean(x, axis=(1, 2, 3)))

    w = _float32(weights)
    params, stats = {}, {}
    for stage, convs, bns in (("stem", ["conv"], ["bn"]), ("features", ["conv1", "conv2"], ["bn1", "bn2"])):
        params[stage] = {name: {"kernel": _window_last(w[f"{stage}.{name}.weight"])} for name in convs}
        for name in bns:
            params[stage][name] = {"scale": w[f"{stage}.{name}.weight"], "bias": w[f"{stage}.{name}.bias"]}
            stats.setdefault(stage, {})[name] = {
                "mean": w[f"{stage}.{name}.running_mean"],
                "var": w[f"{stage}.{name}.running_var"],
            }
    params["fc"] = {"kernel": np.ascontiguousarray(w["fc.weight"].T), "bias": w["fc.bias"]}
    return FlaxModel(VideoNet(), {"params": params, "batch_stats": stats})


BUILDERS = {
    "signal": {"torch": torch_signal, "keras": keras_signal, "flax": flax_signal},
    "video": {"torch": torch_video, "keras": keras_video, "flax": flax_video},
}
WEIGHTS = {"signal": signal_weights, "video": video_weights}


def build_all(kind: str) -> dict[str, object]:
    """The ``kind`` net (``"signal"`` or ``"video"``) in every framework, from one dict of weights."""
    weights = WEIGHTS[kind]()
    return {framework: build(weights) for framework, build in BUILDERS[kind].items()}


def channels_last(x: np.ndarray) -> np.ndarray:
    """A channels-first batch ``(N, C, *grid)`` as channels last ``(N, *grid, C)``."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))
