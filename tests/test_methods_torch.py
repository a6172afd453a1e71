"""Every method class through the PyTorch backend equals the reference formula on independently computed
activations and gradients; the results behave as the Explanation promises."""
import re

import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from gradcam import reference as ref

torch.manual_seed(0)


class SmallCNN(nn.Module):
    """conv-relu-conv-relu, global average pooling, one dense layer: the head CAM needs."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class DeepHeadCNN(SmallCNN):
    """The same features with a two-layer head: not of CAM's kind."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(torch.relu(self.hidden(self.pool(self.features(x)).flatten(1))))


def activations_and_gradients(model, x, layer, targets):
    """Plain full-graph autograd with a hook: an independent route to A and G = dy/dA."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    A = captured["A"]
    (G,) = torch.autograd.grad(out[torch.arange(len(x)), torch.as_tensor(targets)].sum(), A)
    return A.detach().numpy().astype(np.float64), G.numpy().astype(np.float64), out.detach().numpy()


@pytest.fixture(scope="module")
def setup():
    model = SmallCNN().eval()
    x = torch.rand(3, 3, 12, 12)
    with torch.no_grad():
        targets = model(x).argmax(1).numpy()
    A, G, logits = activations_and_gradients(model, x, model.features[3], targets)
    return model, x, A, G, targets, logits


RULES = {
    gradcam.GradCAM: ref.grad_cam,
    gradcam.GradCAMPlusPlus: ref.grad_cam_pp,
    gradcam.XGradCAM: ref.xgrad_cam,
    gradcam.LayerCAM: ref.layer_cam,
    gradcam.HiResCAM: ref.hires_cam,
    gradcam.EigenCAM: lambda A, G: ref.eigen_cam(A),
}


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_method_equals_reference_on_independent_gradients(setup, cls):
    model, x, A, G, targets, logits = setup
    ex = cls(model, layer="features.3")(x)
    # float32 activations/gradients on both routes; the maps agree to float32 rounding of the sums
    np.testing.assert_allclose(ex.raw, RULES[cls](A, G), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ex.maps, ref.normalize(ref.upsample(RULES[cls](A, G), (12, 12))), atol=1e-4)
    np.testing.assert_array_equal(ex.targets, targets)
    np.testing.assert_allclose(ex.scores, logits[np.arange(3), targets], rtol=1e-5)
    assert ex.maps.shape == (3, 12, 12) and ex.maps.dtype == np.float32
    assert ex.layer == "features.3"


def test_counterfactual_is_grad_cam_of_negative_gradients(setup):
    model, x, A, G, _, _ = setup
    ex = gradcam.GradCAM(model, layer="features.3", counterfactual=True)(x)
    np.testing.assert_allclose(ex.raw, ref.counterfactual_grad_cam(A, G), rtol=1e-4, atol=1e-6)
    assert ex.method == "counterfactual-gradcam"


def test_seed000_example_through_a_torch_model():
    A0 = torch.tensor([[[1, 0, 2], [3, 5, 0], [1, 1, 1]], [[0, 1, 0], [3, 1, 0], [1, 0, 1]]], dtype=torch.float32)

    class Seed000(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.alpha = torch.tensor([1 / 3, -2 / 3])

        def forward(self, x):
            A = self.features(x)
            return (self.alpha * A.sum(dim=(2, 3))).sum(1, keepdim=True)

    ex = gradcam.GradCAM(Seed000(), layer="features")(A0[None], target=0)
    np.testing.assert_array_equal(ex.raw[0], np.float32([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]]))
    np.testing.assert_array_equal(ex.weights, np.float32([[1 / 3, -2 / 3]]))


def test_cam_equals_grad_cam_on_a_gap_fc_model(setup):
    model, x, A, G, targets, _ = setup
    cam = gradcam.CAM(model, layer="features.3", fc_layer="fc")(x)
    grad = gradcam.GradCAM(model, layer="features.3")(x)
    # CAM is signed (Zhou et al. apply no ReLU): Grad-CAM = ReLU(CAM) / Z, Z = 6 x 6 at the layer
    np.testing.assert_allclose(np.maximum(cam.raw, 0), 36 * grad.raw, rtol=1e-4, atol=1e-6)
    W = model.fc.weight.detach().numpy()
    np.testing.assert_allclose(cam.raw, np.einsum("nk,nkij->nij", W[targets], A), rtol=1e-4, atol=1e-5)


def test_cam_refuses_a_model_without_a_gap_fc_head():
    model = DeepHeadCNN().eval()
    with pytest.raises(ValueError, match="global average pooling"):
        gradcam.CAM(model, layer="features.3", fc_layer="fc")(torch.rand(2, 3, 12, 12))


def test_smooth_with_one_clean_copy_equals_grad_cam_pp(setup):
    model, x, *_ = setup
    smooth = gradcam.SmoothGradCAMPlusPlus(model, layer="features.3", n_samples=1, noise_level=0.0)(x)
    plain = gradcam.GradCAMPlusPlus(model, layer="features.3")(x)
    np.testing.assert_allclose(smooth.raw, plain.raw, rtol=1e-5, atol=1e-7)


def test_smooth_is_seeded_and_independent_of_batch_size(setup):
    model, x, *_ = setup
    def make(batch_size, seed=3):
        return gradcam.SmoothGradCAMPlusPlus(
            model, layer="features.3", n_samples=5, noise_level=0.2, seed=seed, batch_size=batch_size
        )(x)
    one, many = make(1), make(16)
    np.testing.assert_allclose(one.raw, many.raw, rtol=1e-5, atol=1e-7)
    assert not np.allclose(make(4, seed=4).raw, one.raw)


def test_smooth_averages_exp_weighted_noisy_gradients(setup):
    model, x, A, _, targets, _ = setup
    n_samples, noise_level, seed = 3, 0.1, 7
    images = x.numpy()
    sigma = noise_level * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(size=(n_samples * 3, 3, 12, 12), dtype=np.float32)
    noisy = images[np.arange(9) % 3] + noise * sigma[np.arange(9) % 3, None, None, None].astype(np.float32)
    Gs, ys = [], []
    for t in range(n_samples):
        batch = torch.from_numpy(noisy[3 * t : 3 * t + 3])
        _, G, logits = activations_and_gradients(model, batch, model.features[3], targets)
        Gs.append(G)
        ys.append(logits[np.arange(3), targets])
    expected = ref.smooth_grad_cam_pp(A, np.stack(Gs), np.stack(ys))
    ex = gradcam.SmoothGradCAMPlusPlus(
        model, layer="features.3", n_samples=n_samples, noise_level=noise_level, seed=seed, batch_size=4
    )(x)
    np.testing.assert_allclose(ex.raw, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "layercam", "eigencam", "guided-gradcam"])
def test_batch_equals_images_one_by_one(setup, name):
    model, x, *_ = setup
    batch = gradcam.explain(model, x, method=name, layer="features.3")
    for i in range(len(x)):
        single = gradcam.explain(model, x[i : i + 1], method=name, layer="features.3")
        np.testing.assert_allclose(single.maps[0], batch.maps[i], rtol=1e-4, atol=1e-5)


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(setup):
    model, x, *_ = setup
    guided = gradcam.GuidedBackprop(model)(x)
    grad = gradcam.GradCAM(model, layer="features.3")(x)
    combined = gradcam.GuidedGradCAM(model, layer="features.3")(x)
    assert guided.maps.shape == combined.maps.shape == (3, 3, 12, 12)
    np.testing.assert_allclose(combined.maps, guided.maps * grad.maps[:, None], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(combined.raw, grad.raw, rtol=1e-5, atol=1e-7)
    picture = combined.image()
    assert picture.shape == (3, 12, 12, 3) and picture.dtype == np.uint8


def test_guided_and_deconvnet_differ_from_the_plain_gradient(setup):
    model, x, *_ = setup
    guided = gradcam.GuidedBackprop(model)(x, target=1).maps
    deconv = gradcam.Deconvnet(model)(x, target=1).maps
    xr = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
    assert not np.allclose(guided, plain.numpy()) and not np.allclose(deconv, plain.numpy())
    assert not np.allclose(guided, deconv)


def test_several_layers_are_averaged_after_upsampling(setup):
    model, x, *_ = setup
    both = gradcam.GradCAM(model, layer=["features.1", "features.3"])(x)
    first = gradcam.GradCAM(model, layer="features.1")(x)
    second = gradcam.GradCAM(model, layer="features.3")(x)
    np.testing.assert_allclose(both.maps, ref.normalize((first.maps + second.maps) / 2), atol=1e-5)
    assert both.layers == ["features.1", "features.3"] and set(both.raw_by_layer) == set(both.layers)


def test_default_layer_is_named_in_the_explanation(setup):
    model, x, *_ = setup
    ex = gradcam.GradCAM(model)(x)
    # the Sequential finishes after its last ReLU: the last module with a spatial output, the same tensor
    assert ex.layer == "features"
    np.testing.assert_array_equal(ex.maps, gradcam.GradCAM(model, layer="features.3")(x).maps)


def test_top_channels_rank_by_weight(setup):
    model, x, *_ = setup
    ex = gradcam.GradCAM(model, layer="features.3")(x)
    ranking = ex.top_channels(3)
    assert ranking.most.shape == ranking.least.shape == (3, 3)
    for n in range(3):
        order = np.argsort(ex.weights[n])
        assert set(ranking.most[n]) == set(order[::-1][:3])
        assert set(ranking.least[n]) == set(order[:3])
        assert (np.diff(ranking.most_weights[n]) <= 0).all() and (np.diff(ranking.least_weights[n]) >= 0).all()
    with pytest.raises(ValueError, match="no channel weights"):
        gradcam.LayerCAM(model, layer="features.3")(x).top_channels()


def test_overlay_accepts_channels_first_tensors(setup):
    model, x, *_ = setup
    ex = gradcam.GradCAM(model, layer="features.3")(x)
    out = ex.overlay(x)
    assert out.shape == (3, 12, 12, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref.overlay(x.permute(0, 2, 3, 1).numpy(), ex.maps))


def test_explain_by_name_and_unknown_names(setup):
    model, x, *_ = setup
    by_name = gradcam.explain(model, x, method="Grad-CAM++", layer="features.3")
    direct = gradcam.GradCAMPlusPlus(model, layer="features.3")(x)
    np.testing.assert_array_equal(by_name.maps, direct.maps)
    with pytest.raises(ValueError, match=re.escape("unknown method 'gradcam+++'")):
        gradcam.explain(model, x, method="gradcam+++")


def test_unknown_framework_lists_the_supported_ones():
    with pytest.raises(TypeError, match="supported are a torch.nn.Module"):
        gradcam.GradCAM(object())
