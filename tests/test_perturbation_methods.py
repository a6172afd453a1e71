"""Score-CAM, Ablation-CAM and occlusion: equal to slow one-at-a-time references, the same in any batching,
the same in PyTorch, Keras and JAX (so masks go in each framework's own layout), and hand-worked cases."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_nets as nets
from backend_kits import embedded_net_everywhere
from torch import nn

import gradcam
from gradcam.methods.perturbation import ablation_weights, window_starts


@pytest.fixture(scope="module")
def tiny():
    model = nets.DeadChannelNet(channels=5, classes=4, stem_bias=0.2).eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(1)
    captured = []
    handle = model.features.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return model, x, targets, captured[0]


def slow_score_cam_weights(model, x, targets, A):
    """The Score-CAM authors' loop: one masked image at a time, flat channels skipped."""
    weights = torch.zeros(A.shape[:2])
    with torch.no_grad():
        for n in range(len(x)):
            for k in range(A.shape[1]):
                a = A[n, k]
                if a.max() == a.min():
                    continue
                mask = F.interpolate(a[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                mask = (mask - mask.min()) / (mask.max() - mask.min())
                weights[n, k] = torch.softmax(model(x[n : n + 1] * mask), dim=1)[0, targets[n]]
    return weights.numpy()


def slow_ablation_cam_weights(model, x, targets, A):
    """One ablated image at a time: a hook zeroes channel k of ``features``; ``(y - y_k) / |y|``."""
    weights = np.zeros(A.shape[:2])
    with torch.no_grad():
        for n in range(len(x)):
            y = model(x[n : n + 1])[0, targets[n]].item()
            for k in range(A.shape[1]):
                def zero_k(module, inputs, output, k=k):
                    output = output.clone()
                    output[:, k] = 0
                    return output

                handle = model.features.register_forward_hook(zero_k)
                y_k = model(x[n : n + 1])[0, targets[n]].item()
                handle.remove()
                weights[n, k] = (y - y_k) / abs(y)
    return weights


def test_score_cam_equals_the_one_channel_at_a_time_reference(tiny):
    model, x, targets, A = tiny
    ex = gradcam.ScoreCAM(model, layer="features")(x)
    expected = slow_score_cam_weights(model, x, targets, A)
    assert (expected[:, 0] == 0).all() and (expected[:, 1:] > 0).all()  # the dead channel is skipped
    np.testing.assert_allclose(ex.weights, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ex.raw, gradcam.reference.weighted_map(A.numpy(), expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ex.targets, targets.numpy())
    assert ex.method == "scorecam" and ex.maps.shape == (3, 12, 12)


@pytest.mark.parametrize("batch_size", [1, 4, 1000])
def test_score_cam_chunks_over_channels_and_images_give_the_same_weights(tiny, batch_size):
    model, x, _, _ = tiny
    # 3 images x 4 live channels = 12 rows: 12 batches of 1, 3 of 4 (each mixing two images), or 1 of 12
    reference = gradcam.ScoreCAM(model, layer="features", batch_size=12)(x)
    chunked = gradcam.ScoreCAM(model, layer="features", batch_size=batch_size)(x)
    np.testing.assert_allclose(chunked.weights, reference.weights, rtol=1e-6, atol=1e-8)


def test_faster_score_cam_keeps_the_channels_of_largest_variance(tiny):
    model, x, _, A = tiny
    full = gradcam.ScoreCAM(model, layer="features")(x)
    fast = gradcam.ScoreCAM(model, layer="features", max_channels=2)(x)
    top2 = np.argsort(-A.numpy().var(axis=(2, 3)), axis=1)[:, :2]
    kept = np.zeros(A.shape[:2], dtype=bool)
    np.put_along_axis(kept, top2, True, axis=1)
    np.testing.assert_allclose(fast.weights[kept], full.weights[kept], rtol=1e-6)
    assert (fast.weights[~kept] == 0).all()
    assert fast.method == "faster-scorecam"


def test_ablation_cam_equals_the_one_channel_at_a_time_reference(tiny):
    model, x, targets, A = tiny
    ex = gradcam.AblationCAM(model, layer="features", batch_size=5)(x)
    expected = slow_ablation_cam_weights(model, x, targets, A)
    assert (expected[:, 0] == 0).all()  # zeroing the dead channel changes nothing
    np.testing.assert_allclose(ex.weights, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ex.raw, gradcam.reference.weighted_map(A.numpy(), expected), rtol=1e-4, atol=1e-6)
    assert ex.method == "ablationcam"


def test_ablation_cam_batching_does_not_change_the_weights(tiny):
    model, x, _, _ = tiny
    one = gradcam.AblationCAM(model, layer="features", batch_size=1)(x)
    all_rows = gradcam.AblationCAM(model, layer="features", batch_size=100)(x)
    np.testing.assert_allclose(one.weights, all_rows.weights, rtol=1e-5, atol=1e-7)


# seed 000 (DESIGN.md section 4): the layer outputs A1, A2; sum(A1) = 14, sum(A2) = 7
SEED_A = np.array([[[1, 0, 2], [3, 5, 0], [1, 1, 1]], [[0, 1, 0], [3, 1, 0], [1, 0, 1]]], dtype=np.float32)


class LinearHead(nn.Module):
    """``y = sum_k alpha_k sum_ij A_kij`` on an identity layer ``features`` (the input is ``A``)."""

    def __init__(self, alpha):
        super().__init__()
        self.features = nn.Identity()
        self.alpha = torch.tensor(alpha)

    def forward(self, x):
        return (self.features(x).sum(dim=(2, 3)) * self.alpha).sum(dim=1, keepdim=True)


@pytest.mark.parametrize(
    "alpha, weights, raw",
    [
        # y = 14/3 - 14/3 = 0: the weights are the drops, 14/3 and -14/3; L = 14/3 ReLU(A1 - A2)
        ((1 / 3, -2 / 3), (14 / 3, -14 / 3), 14 / 3 * np.array([[1, 0, 2], [0, 4, 0], [0, 1, 0]])),
        # y = 14/3 - 7 = -7/3 < 0: drops 14/3 and -7 over |y| = 7/3 give 2 and -3 (over y they would flip
        # to -2 and 3 and the map would show A2 instead); L = ReLU(2 A1 - 3 A2)
        ((1 / 3, -1.0), (2.0, -3.0), np.array([[2, 0, 4], [0, 7, 0], [0, 2, 0]])),
    ],
    ids=["zero score", "negative score"],
)
def test_ablation_cam_rule_for_a_zero_or_negative_score(alpha, weights, raw):
    ex = gradcam.AblationCAM(LinearHead(alpha), layer="features")(SEED_A[None], target=0)
    np.testing.assert_allclose(ex.weights, [weights], rtol=1e-5)
    np.testing.assert_allclose(ex.raw, raw[None], rtol=1e-5, atol=1e-5)


def test_ablation_weights_by_hand():
    drops = np.array([[1.0, -2.0], [1.0, -2.0], [1.0, -2.0]])
    np.testing.assert_allclose(ablation_weights(np.array([4.0, 0.0, -2.0]), drops), [[0.25, -0.5], [1, -2], [0.5, -1]])


class PixelSum(nn.Module):
    """Class 0's raw score is the sum of the input pixels."""

    def forward(self, x):
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_occlusion_by_hand():
    # image [[1, 2, 3], [4, 5, 6], [7, 8, 9]], a 2x2 window with stride 1 and baseline 0: the drops are the
    # window sums 12, 16 (top row), 24, 28 (bottom row); each pixel averages the windows covering it
    image = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    ex = gradcam.Occlusion(PixelSum(), window=2, stride=1, score="raw")(image, target=0)
    np.testing.assert_allclose(ex.raw, [[[12, 14, 16], [18, 20, 22], [24, 26, 28]]])
    np.testing.assert_allclose(ex.maps, [(np.array([[12, 14, 16], [18, 20, 22], [24, 26, 28]]) - 12) / 16])
    np.testing.assert_allclose(ex.scores, [45.0])
    # a baseline of 1 fills the window with ones: every drop is 4 less
    shifted = gradcam.Occlusion(PixelSum(), window=2, stride=1, baseline=1.0, score="raw")(image, target=0)
    np.testing.assert_allclose(shifted.raw, ex.raw - 4)


def test_occlusion_batching_does_not_change_the_map(tiny):
    model, x, _, _ = tiny
    one = gradcam.Occlusion(model, window=4, stride=3, batch_size=1)(x)
    many = gradcam.Occlusion(model, window=4, stride=3, batch_size=50)(x)
    np.testing.assert_allclose(one.raw, many.raw, rtol=1e-5, atol=1e-7)


def test_window_starts_cover_the_edge():
    assert window_starts(5, 2, 2) == [0, 2, 3]
    assert window_starts(6, 2, 2) == [0, 2, 4]
    assert window_starts(4, 4, 3) == [0]


@pytest.mark.parametrize(
    "build, message",
    [
        (
            # a target function in torch-only operations fails on the NumPy outputs of the masked copies
            lambda m: gradcam.ScoreCAM(m)(torch.rand(1, 3, 12, 12), target=lambda out: out.sum(dim=1)),
            "call a target function with the model's outputs as one NumPy array",
        ),
        (lambda m: gradcam.Occlusion(m, window=13)(torch.rand(1, 3, 12, 12)), r"window \(13 pixels\) is larger than"),
        (
            lambda m: gradcam.Occlusion(m, window=(2, 2, 2))(torch.rand(1, 3, 12, 12)),
            r"window must be an int or \(height, width\)",
        ),
        (lambda m: gradcam.ScoreCAM(m, batch_size=0), "batch_size must be a positive integer"),
        (lambda m: gradcam.ScoreCAM(m, max_channels=0), "max_channels must be a positive integer"),
        (lambda m: gradcam.Occlusion(m, score="logit"), "score must be one of"),
        (lambda m: gradcam.AblationCAM(m, reshape=gradcam.vit_reshape), "a reshape function hides"),
    ],
)
def test_bad_arguments_get_a_clear_error(tiny, build, message):
    with pytest.raises(ValueError, match=message):
        build(tiny[0])


# --- the same numbers in PyTorch, Keras and JAX (NCHW against NHWC input) -----------------------------


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=2, input_seed=0)


@pytest.mark.parametrize(
    "method, options",
    [("scorecam", {"max_channels": 8}), ("ablationcam", {}), ("occlusion", {"window": 16, "stride": 16})],
)
def test_frameworks_agree(three_frameworks, method, options):
    layer = None if method == "occlusion" else "features"
    results = {
        name: gradcam.explain(model, x, method=method, layer=layer, target=1, **options)
        for name, (model, x) in three_frameworks.items()
    }
    ours = results["torch"]
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps, ours.maps, atol=1e-4, err_msg=name)
        if ours.weights is not None:
            np.testing.assert_allclose(results[name].weights, ours.weights, rtol=1e-3, atol=1e-6, err_msg=name)
