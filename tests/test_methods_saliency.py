"""Saliency, SmoothGrad, SS-CAM and IS-CAM: the formulas by hand, the methods against slow one-at-a-time loops,
and the same model in PyTorch, Keras and JAX giving the same map (noise drawn once in NumPy, so every framework sees
the same noisy inputs).

Tolerances: exact where the model's gradient is a copy of its weights or input (float32 in, float32 out);
``1e-6`` relative for torch batched against one-at-a-time forwards; ``MAPS_ATOL = 1e-5`` on normalized maps across
frameworks, as ``test_cross_framework.py`` explains.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_nets as nets
from backend_kits import embedded_net_everywhere
from torch import nn

from gradcam.methods.perturbation import ScoreCAM
from gradcam.methods.saliency import Saliency, SmoothGrad
from gradcam.methods.score_variants import ISCAM, SSCAM
from gradcam.reference import saliency as rules
from gradcam.reference import score_variants

MAPS_ATOL = 1e-5

# --- the formulas by hand ------------------------------------------------------------------------------------

# one image, two colour channels, 2 x 2 pixels
G = np.array([[[[1.0, -3.0], [0.0, 2.0]], [[-2.0, 1.0], [0.5, -4.0]]]])


def test_saliency_is_the_largest_absolute_gradient_over_colour_channels():
    np.testing.assert_array_equal(rules.saliency(G), [[[2.0, 3.0], [0.5, 4.0]]])


def test_smooth_grad_variants_by_hand():
    # two copies: G and -G / 2 (a sign flip and half the size)
    g = np.stack([G, -G / 2])
    # abs: mean of the saliency maps [[2, 3], [.5, 4]] and [[1, 1.5], [.25, 2]]
    np.testing.assert_allclose(rules.smooth_grad(g, "abs"), [[[1.5, 2.25], [0.375, 3.0]]], rtol=1e-7)
    # signed: mean gradient G / 4, then max |.| over channels
    np.testing.assert_allclose(rules.smooth_grad(g, "signed"), [[[0.5, 0.75], [0.125, 1.0]]], rtol=1e-7)
    # square: mean of g^2 = G^2 (1 + 1/4) / 2 = 0.625 G^2, max over channels: 0.625 * [[4, 9], [.25, 16]]
    np.testing.assert_allclose(rules.smooth_grad(g, "square"), [[[2.5, 5.625], [0.15625, 10.0]]], rtol=1e-7)


def test_smooth_grad_refuses_a_wrong_shape_or_variant():
    with pytest.raises(ValueError, match=r"\(T, N, C, H, W\)"):
        rules.smooth_grad(G)
    with pytest.raises(ValueError, match="abs, signed, square"):
        rules.smooth_grad(G[None], "mean")


def test_score_variant_masks_by_hand():
    np.testing.assert_allclose(score_variants.is_cam_coefficients(4), [0.25, 0.75, 1.5, 2.5])
    np.testing.assert_allclose(score_variants.is_cam_coefficients(1), [1.0])
    M = np.array([[[0.0, 0.5], [1.0, 0.25]]])
    delta = np.array([[[1.0, -1.0], [0.5, 0.0]]])
    np.testing.assert_allclose(score_variants.ss_cam_masks(M, delta, 2.0), [[[2.0, -1.5], [2.0, 0.25]]])


# --- the methods on models whose gradient is known -------------------------------------------------------------


class Linear(nn.Module):
    """``y = W flatten(x)``: the input gradient of class c is ``W[c]`` whatever the input."""

    def __init__(self, W: np.ndarray) -> None:
        super().__init__()
        self.fc = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(W))

    def forward(self, x):
        return self.fc(x.flatten(1))


class HalfSquare(nn.Module):
    """One output ``y = sum(x^2) / 2``: the input gradient is the input itself."""

    def forward(self, x):
        return 0.5 * (x**2).flatten(1).sum(1, keepdim=True)


def test_saliency_of_a_linear_model_is_its_weights():
    W = np.stack([G.ravel(), -2 * G.ravel()]).astype(np.float32)  # class 1: twice the size
    x = np.random.default_rng(0).random((2, 2, 2, 2), dtype=np.float32)
    ex = Saliency(Linear(W))(x, target=[0, 1])
    np.testing.assert_array_equal(ex.raw, [[[2.0, 3.0], [0.5, 4.0]], [[4.0, 6.0], [1.0, 8.0]]])
    np.testing.assert_allclose(ex.maps[0], [[3 / 7, 5 / 7], [0.0, 1.0]], rtol=1e-6)
    assert ex.method == "saliency" and ex.layers == ["input"] and ex.maps.shape == (2, 2, 2)


def test_smooth_grad_draws_the_documented_noise():
    """For ``y = sum(x^2) / 2`` the copies' gradients are the noisy copies themselves: ``x + sigma z_t`` with ``z``
    drawn t-major in the channels-first order and ``sigma = level * (max - min)`` per image."""
    x = np.random.default_rng(1).random((2, 3, 4, 5), dtype=np.float32)
    T, level = 3, 0.2
    sigma = (level * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))).astype(np.float32)
    z = np.random.default_rng(7).standard_normal(size=(T * 2, 3, 4, 5), dtype=np.float32).reshape(T, 2, 3, 4, 5)
    copies = x + z * sigma[None, :, None, None, None]
    for variant in rules.SMOOTH_GRAD_VARIANTS:
        for batch_size in (1, 4, 100):
            ex = SmoothGrad(HalfSquare(), n_samples=T, noise_level=level, seed=7, variant=variant,
                            batch_size=batch_size)(x)
            np.testing.assert_allclose(ex.raw, rules.smooth_grad(copies, variant), rtol=1e-6, err_msg=variant)
    np.testing.assert_array_equal(ex.targets, [0, 0])


def test_smooth_grad_without_noise_is_saliency():
    W = np.random.default_rng(2).normal(size=(3, 2 * 3 * 3)).astype(np.float32)
    x = np.random.default_rng(3).random((2, 2, 3, 3), dtype=np.float32)
    plain = Saliency(Linear(W))(x)
    for variant, expected in [("abs", plain.raw), ("signed", plain.raw), ("square", plain.raw**2)]:
        smooth = SmoothGrad(Linear(W), n_samples=3, noise_level=0.0, variant=variant)(x)
        np.testing.assert_allclose(smooth.raw, expected, rtol=1e-6, err_msg=variant)
        np.testing.assert_array_equal(smooth.targets, plain.targets)


@pytest.mark.parametrize(
    "options, message",
    [({"n_samples": 0}, "n_samples"), ({"noise_level": -0.1}, "noise_level"), ({"variant": "max"}, "variant")],
)
def test_smooth_grad_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        SmoothGrad(HalfSquare(), **options)


# --- SS-CAM and IS-CAM against one-masked-image-at-a-time loops --------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model = nets.DeadChannelNet(channels=4, classes=3).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(1)
        A = model.features(model.stem(x))
    return model, x, targets, A


def slow_weights(model, x, targets, A, copies):
    """``(1/S) sum_i softmax(f(x * copy_i(M_k)))_c``, one masked image at a time; ``copies(M)`` gives the S masks
    of one channel's mask, and is called channel by channel, image by image (the methods' row order)."""
    weights = np.zeros(A.shape[:2])
    with torch.no_grad():
        for n in range(len(x)):
            for k in range(A.shape[1]):
                a = A[n, k]
                if a.max() == a.min():
                    continue
                mask = F.interpolate(a[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                mask = ((mask - mask.min()) / (mask.max() - mask.min())).numpy()
                scores = [torch.softmax(model(x[n : n + 1] * torch.from_numpy(m)), 1)[0, targets[n]].item()
                          for m in copies(mask)]
                weights[n, k] = np.mean(scores)
    return weights


def test_is_cam_equals_the_one_copy_at_a_time_loop(tiny):
    model, x, targets, A = tiny
    c = score_variants.is_cam_coefficients(3)
    expected = slow_weights(model, x, targets, A, lambda m: [(ci * m).astype(np.float32) for ci in c])
    assert (expected[:, 0] == 0).all() and (expected[:, 1:] > 0).all()
    for batch_size in (1, 5, 100):
        ex = ISCAM(model, layer="features", n_samples=3, batch_size=batch_size)(x)
        np.testing.assert_allclose(ex.weights, expected, rtol=1e-5, atol=1e-7)
    assert ex.method == "iscam" and ex.maps.shape == (2, 8, 8)


def test_ss_cam_equals_the_one_copy_at_a_time_loop(tiny):
    model, x, targets, A = tiny
    rng = np.random.default_rng(5)  # the noise fields, drawn in the rows' order: image, channel, copy
    expected = slow_weights(
        model, x, targets, A, lambda m: [m + 0.5 * rng.standard_normal(m.shape, dtype=np.float32) for _ in range(4)]
    )
    for batch_size in (1, 3, 100):
        ex = SSCAM(model, layer="features", n_samples=4, sigma=0.5, seed=5, batch_size=batch_size)(x)
        np.testing.assert_allclose(ex.weights, expected, rtol=1e-5, atol=1e-7)
    assert ex.method == "sscam"


@pytest.mark.parametrize("weighting", ["classes", "channels"])
def test_one_unchanged_copy_is_score_cam(tiny, weighting):
    model, x, _, _ = tiny
    score = ScoreCAM(model, layer="features", weighting=weighting)(x)
    for variant in (SSCAM(model, layer="features", n_samples=3, sigma=0.0, weighting=weighting),
                    ISCAM(model, layer="features", n_samples=1, weighting=weighting)):
        ex = variant(x)
        np.testing.assert_allclose(ex.weights, score.weights, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ex.maps, score.maps, atol=1e-6)


def test_faster_variants_keep_their_names(tiny):
    model, x, _, _ = tiny
    assert SSCAM(model, layer="features", n_samples=2, max_channels=2)(x).method == "faster-sscam"
    assert ISCAM(model, layer="features", n_samples=2, max_channels=2)(x).method == "faster-iscam"


@pytest.mark.parametrize("build, message", [
    (lambda m: SSCAM(m, n_samples=0), "n_samples"),
    (lambda m: SSCAM(m, sigma=-1.0), "sigma"),
    (lambda m: ISCAM(m, n_samples=0), "n_samples"),
])
def test_score_variants_bad_options(tiny, build, message):
    with pytest.raises(ValueError, match=message):
        build(tiny[0])


# --- the same model in PyTorch, Keras and JAX ----------------------------------------------------------------


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=3, input_seed=1)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: Saliency(m),
        lambda m: SmoothGrad(m, n_samples=3, variant="abs", batch_size=4),
        lambda m: SmoothGrad(m, n_samples=3, variant="signed"),
        lambda m: SmoothGrad(m, n_samples=3, variant="square"),
        lambda m: SSCAM(m, "features", n_samples=2, max_channels=6),
        lambda m: ISCAM(m, "features", n_samples=2, max_channels=6, weighting="channels"),
    ],
    ids=["saliency", "smoothgrad-abs", "smoothgrad-signed", "smoothgrad-square", "sscam", "iscam"],
)
def test_frameworks_agree(three_frameworks, build):
    results = {name: build(model)(x, target=[1, 3]) for name, (model, x) in three_frameworks.items()}
    ours = results["torch"]
    assert ours.maps.max() == 1.0 and ours.maps.std() > 0.05  # a map with structure, not an empty one
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps, ours.maps, atol=MAPS_ATOL, err_msg=name)
        np.testing.assert_array_equal(results[name].targets, ours.targets)
