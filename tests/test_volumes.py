"""Signals (1-D) and volumes or clips (3-D) through every backend and every gradient method.

The nets of ``volume_nets``: a 1-D signal CNN and an r3d-like 3-D CNN, each built in PyTorch, Keras and Flax from
one dict of weights. Keras and Flax take their inputs channels last, PyTorch channels first.

Tolerances, as in ``test_cross_framework.py``: the frameworks run the same float32 arithmetic in different orders
(activations differ by about 1e-7 relative); maps normalised to [0, 1] keep that at the 1e-6 level, so
``MAPS_ATOL = 1e-5`` leaves a margin of about ten. Input-space gradients (guided backprop, saliency's sources) are
not normalised: they are compared relative to their largest magnitude. Against the float64 reference on the
probe's own ``A`` and ``G`` only the method's float32 rounding remains: ``REFERENCE_ATOL = 1e-6``.
"""
from __future__ import annotations

import numpy as np
import pytest
import volume_nets as nets

import gradcam
from gradcam import reference as ref
from gradcam.backends import layouts

MAPS_ATOL = 1e-5
REFERENCE_ATOL = 1e-6
FRAMEWORKS = ("torch", "keras", "flax")
SHAPES = {"signal": (3, 2, 32), "video": (2, 3, 4, 8, 8)}  # channels first
TARGETS = {"signal": [1, 2, 3], "video": [1, 3]}
LAYOUTS = {
    "signal": {"torch": "NCL", "keras": "NLC", "flax": "NLC"},
    "video": {"torch": "NCDHW", "keras": "NDHWC", "flax": "NDHWC"},
}

# method -> (class, options); layer methods get no layer (the automatic one, ``features``)
METHODS = {
    "gradcam": (gradcam.GradCAM, {}),
    "gradcam++": (gradcam.GradCAMPlusPlus, {}),
    "smoothgradcam++": (gradcam.SmoothGradCAMPlusPlus, {"n_samples": 3}),
    "xgradcam": (gradcam.XGradCAM, {}),
    "layercam": (gradcam.LayerCAM, {}),
    "hirescam": (gradcam.HiResCAM, {}),
    "eigencam": (gradcam.EigenCAM, {}),
    "eigengradcam": (gradcam.EigenGradCAM, {}),
    "kpcacam": (gradcam.KPCACAM, {}),
    "fem": (gradcam.FEM, {}),
    "finercam": (gradcam.FinerCAM, {}),
    "cam": (gradcam.CAM, {"fc_layer": "fc"}),
    "guided-backprop": (gradcam.GuidedBackprop, {}),
    "guided-gradcam": (gradcam.GuidedGradCAM, {}),
    "deconvnet": (gradcam.Deconvnet, {}),
    "saliency": (gradcam.Saliency, {}),
    "smoothgrad": (gradcam.SmoothGrad, {"n_samples": 3}),
    "fullgrad": (gradcam.FullGrad, {}),
}


@pytest.fixture(scope="module", params=["signal", "video"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def models(kind):
    return nets.build_all(kind)


@pytest.fixture(scope="module")
def batch(kind):
    return np.random.default_rng(5).normal(size=SHAPES[kind]).astype(np.float32)


def model_input(framework: str, x: np.ndarray) -> np.ndarray:
    return x if framework == "torch" else nets.channels_last(x)


def explain(method: str, model, framework: str, x: np.ndarray, target) -> gradcam.Explanation:
    cls, options = METHODS[method]
    with cls(model, quiet=True, **options) as explainer:
        return explainer(model_input(framework, x), target)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_the_same_maps_in_every_framework(kind, models, batch, method):
    found = {fw: explain(method, models[fw], fw, batch, TARGETS[kind]) for fw in FRAMEWORKS}
    grid = SHAPES[kind][2:]
    torch_ex = found["torch"]
    assert torch_ex.grid == len(grid)
    expected_shape = (len(batch), *grid) if not torch_ex.pixel_space else SHAPES[kind]
    for fw, ex in found.items():
        assert ex.maps.shape == expected_shape, fw
        np.testing.assert_array_equal(ex.targets, TARGETS[kind])
        if ex.pixel_space:
            scale = float(np.abs(torch_ex.maps).max())
            np.testing.assert_allclose(ex.maps, torch_ex.maps, rtol=0, atol=MAPS_ATOL * scale, err_msg=fw)
        else:
            np.testing.assert_allclose(ex.maps, torch_ex.maps, rtol=0, atol=MAPS_ATOL, err_msg=fw)
    # not trivially equal because empty: every map has structure
    heat = torch_ex.heatmaps()
    assert heat.max() == pytest.approx(1.0) and heat.reshape(len(heat), -1).std(axis=1).min() > 0.02


def test_gradcam_equals_the_float64_reference_on_the_probe(kind, models, batch):
    grid = SHAPES[kind][2:]
    for fw in FRAMEWORKS:
        x = model_input(fw, batch)
        explainer = gradcam.GradCAM(models[fw], quiet=True)
        probe = explainer.backend.probe(models[fw], x, "features", TARGETS[kind])
        assert probe.input_size == grid and probe.layouts["features"] == LAYOUTS[kind][fw]
        expected = ref.normalize(ref.upsample(ref.grad_cam(probe.activations["features"],
                                                           probe.gradients["features"]), grid), grid=len(grid))
        maps = explainer(x, TARGETS[kind]).maps
        np.testing.assert_allclose(maps, expected, rtol=0, atol=REFERENCE_ATOL, err_msg=fw)


def test_the_automatic_layer_is_the_last_conv_block(kind, models, batch):
    for fw in FRAMEWORKS:
        backend = gradcam.GradCAM(models[fw]).backend
        chosen = backend.layer_choice(models[fw], model_input(fw, batch))
        assert (chosen.name, chosen.layout) == ("features", LAYOUTS[kind][fw]), fw


def test_a_signal_gradcam_worked_by_hand():
    # features is the identity (a 1x1 conv), the head averages over L and applies W: the score of class 0 is
    # y = (1/4) sum_l (x_0l - x_1l), so G = W[0] / 4 = [1/4, -1/4] everywhere and alpha = G's mean = [1/4, -1/4].
    # L = ReLU((x_0 - x_1) / 4) = ReLU([-3, -1, 1, 3] / 4) = [0, 0, 1/4, 3/4], normalised [0, 0, 1/3, 1]
    import torch

    model = identity_net(torch.nn.Conv1d, [[1.0, -1.0], [0.5, 2.0]])
    x = np.array([[[1, 2, 3, 4], [4, 3, 2, 1]]], np.float32)
    ex = gradcam.GradCAM(model, "features", quiet=True)(x, 0)
    np.testing.assert_allclose(ex.raw, [[0, 0, 0.25, 0.75]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ex.maps, [[0, 0, 1 / 3, 1]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ex.weights, [[0.25, -0.25]], rtol=0, atol=1e-8)
    assert ex.boxes() == [(2, 4)]


def test_a_volume_gradcam_worked_by_hand():
    # the identity again, now over a 2x2x2 grid: class 0 reads channel 0 only, alpha = [1/8, 0], so
    # L = ReLU(x_0 / 8) with x_0 = [-2 .. 5] in row-major order: [0, 0, 0, 1, 2, 3, 4, 5] / 8, normalised by 5/8
    import torch

    model = identity_net(torch.nn.Conv3d, [[1.0, 0.0], [0.0, 1.0]])
    x = np.stack([np.arange(8.0).reshape(2, 2, 2) - 2, np.ones((2, 2, 2))])[None].astype(np.float32)
    ex = gradcam.GradCAM(model, "features", quiet=True)(x, 0)
    np.testing.assert_allclose(ex.maps.ravel(), [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=0, atol=1e-7)
    assert ex.maps.shape == (1, 2, 2, 2) and ex.grid == 3
    # the cells >= 0.15 are (d, h, w) = (0, 1, 1) and all of d = 1: one 26-connected segment filling the grid
    assert ex.boxes() == [(0, 0, 0, 2, 2, 2)]
    with pytest.raises(ValueError, match="volumes"):
        ex.overlay(np.zeros((1, 2, 2, 3), np.float32))


def identity_net(conv, head: list[list[float]]):
    """``features``: a 1x1 (x1) convolution set to the identity on 2 channels; then the mean over the grid and a
    dense layer without bias whose weights are ``head``."""
    import torch

    class IdentityNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = conv(2, 2, 1, bias=False)
            self.fc = torch.nn.Linear(2, len(head), bias=False)

        def forward(self, x):
            a = self.features(x)
            return self.fc(a.flatten(2).mean(dim=2))

    model = IdentityNet()
    with torch.no_grad():
        model.features.weight.copy_(torch.eye(2).reshape(2, 2, *[1] * (model.features.weight.ndim - 2)))
        model.fc.weight.copy_(torch.tensor(head))
    return model.eval()


@pytest.mark.parametrize(
    "framework, layout, add",
    [("torch", "N, C, L", r"x\[:, None, :\]"), ("keras", "N, L, C", r"x\[:, :, None\]"),
     ("flax", "N, L, C", r"x\[:, :, None\]")],
)
def test_a_signal_without_channels_is_refused_with_how_to_add_them(framework, layout, add):
    model = nets.BUILDERS["signal"][framework](nets.signal_weights())
    explainer = gradcam.GradCAM(model, quiet=True)
    with pytest.raises(ValueError, match=rf"\({layout}\), got shape \(2, 32\).*the channel axis: {add}"):
        explainer(np.zeros((2, 32), np.float32))


def test_a_channel_is_ablated_alike_in_every_framework(kind, models, batch):
    # channel k of the probe's (N, K, *grid) map, zeroed in image n; -1: nothing zeroed
    channels = [3, -1, 0][: len(batch)]
    outputs = {}
    for fw in FRAMEWORKS:
        backend = gradcam.GradCAM(models[fw]).backend
        x = model_input(fw, batch)
        outputs[fw] = backend.predict_ablated(models[fw], x, "features", channels)
        plain = backend.predict(models[fw], x)
        changed = [not np.allclose(o, p, atol=1e-6) for o, p in zip(outputs[fw], plain, strict=True)]
        assert changed == [c >= 0 for c in channels], fw
    scale = float(np.abs(outputs["torch"]).max())
    for fw in ("keras", "flax"):
        np.testing.assert_allclose(outputs[fw], outputs["torch"], rtol=0, atol=1e-5 * scale, err_msg=fw)


def test_a_clip_without_the_batch_dimension_is_refused():
    model = nets.torch_video(nets.video_weights())
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\).*add the batch dimension: x\[None\]"):
        gradcam.GradCAM(model, quiet=True)(np.zeros((3, 4, 8, 8), np.float32))


def test_augment_smooth_refuses_signals_and_volumes():
    model = nets.torch_signal(nets.signal_weights())
    with pytest.raises(ValueError, match="signals .* not supported"):
        gradcam.AugmentSmooth(gradcam.GradCAM(model, quiet=True))(np.zeros((1, 2, 32), np.float32))


@pytest.mark.parametrize(
    "shape, native, size, expected",
    [
        ((1, 8, 16), "NCHW", (32,), "NCL"),  # a conv1d output: a 1-D map, not tokens
        ((1, 16, 8), "NHWC", (32,), "NLC"),  # Keras, Flax
        ((1, 8, 8), "NHWC", (32,), "NLC"),  # both readings fit: the framework's own
        ((1, 16, 40), "NCHW", (32,), "NLC"),  # as NCL its 40 cells would not fit in 32
        ((1, 64, 4, 7, 7), "NCHW", (16, 112, 112), "NCDHW"),  # r3d: time strided less than space
        ((1, 4, 7, 7, 64), "NHWC", (16, 112, 112), "NDHWC"),
        ((1, 4, 7, 7, 512), "NCHW", (16, 112, 112), "NDHWC"),  # as NCDHW its grid 7x7x512 fits nowhere
    ],
)
def test_signal_and_volume_layouts_are_inferred(shape, native, size, expected):
    assert str(layouts.infer(shape, native, size)) == expected


def test_unreadable_signal_and_volume_outputs_ask_for_a_layout():
    with pytest.raises(layouts.LayoutError, match="pass layout='NCL' or layout='NLC'"):
        layouts.infer((1, 40, 40), "NCHW", (32,))
    with pytest.raises(layouts.LayoutError, match="pass layout='NCDHW' or layout='NDHWC'"):
        layouts.infer((1, 3, 5, 50, 64), "NCHW", (8, 32, 32))
    with pytest.raises(layouts.LayoutError, match=r"not a spatial map \(N, C, d, h, w\)"):
        layouts.infer((1, 8, 7, 7), "NCHW", (8, 32, 32))
    with pytest.raises(layouts.LayoutError, match="2-axis grid, but the input has a 1-axis grid"):
        layouts.read("l", np.zeros((1, 4, 4, 4), np.float32), "NCHW", "NCHW", (32,), 1)


def test_a_layout_by_name_moves_channels_first_for_any_grid():
    volume = np.arange(2 * 3 * 2 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 2, 4)  # NCDHW
    out, read = layouts.read("l", nets.channels_last(volume), "ndhwc", "NCHW", (4, 8, 8), 2)
    np.testing.assert_array_equal(out, volume)
    assert str(read) == "NDHWC" and read.rank() == 5 and not read.channels_first
