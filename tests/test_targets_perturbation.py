"""Every target form in the forward-only methods (Score-CAM, Ablation-CAM, occlusion) and the metrics: a target
function scores each batch of copies from its NumPy outputs, row by row for the right image; hand-worked cases,
the same numbers as the equivalent class target, several targets per image, and grids of one and three axes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_nets as nets
from backend_kits import embedded_net_everywhere
from torch import nn

import gradcam
from gradcam import metrics
from gradcam.targets import ClassScore, SegmentationRegion


@pytest.fixture(scope="module")
def tiny():
    model = nets.DeadChannelNet(channels=5, classes=4, stem_bias=0.2).eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    captured = []
    handle = model.features.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return model, x, captured[0]


CLASSES = np.array([2, 0, 3])


def slow_raw_score_cam_weights(model, x, score, A):
    """The Score-CAM loop, one masked image at a time, with a target function's score instead of a softmax."""
    weights = np.zeros(A.shape[:2])
    with torch.no_grad():
        for n in range(len(x)):
            for k in range(A.shape[1]):
                a = A[n, k]
                if a.max() == a.min():
                    continue
                mask = F.interpolate(a[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                mask = (mask - mask.min()) / (mask.max() - mask.min())
                weights[n, k] = score(model(x[n : n + 1] * mask).numpy(), n)
    return weights


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_score_cam_weights_with_a_target_function_are_its_scores_of_the_masked_images(tiny, batch_size):
    # batches of 4 rows mix images: each row must be scored with its own image's class
    model, x, A = tiny
    ex = gradcam.ScoreCAM(model, layer="features", batch_size=batch_size, quiet=True)(x, target=ClassScore(CLASSES))
    expected = slow_raw_score_cam_weights(model, x, lambda out, n: out[0, CLASSES[n]], A)
    np.testing.assert_allclose(ex.weights, expected, rtol=1e-5, atol=1e-6)
    assert (ex.targets == -1).all()


def per_image_class(out):
    """A plain callable written for the explained batch: image n's score is its own class's logit."""
    return out[np.arange(len(CLASSES)), CLASSES]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])  # 3: a batch of as many rows as images, mixed
def test_a_plain_per_image_callable_scores_each_copy_with_its_own_image(tiny, batch_size):
    # rows of a batch mix copies of the three images; the callable must still see copy m in its image's row
    model, x, A = tiny
    ex = gradcam.ScoreCAM(model, layer="features", batch_size=batch_size, quiet=True)(x, target=per_image_class)
    expected = slow_raw_score_cam_weights(model, x, lambda out, n: out[0, CLASSES[n]], A)
    np.testing.assert_allclose(ex.weights, expected, rtol=1e-5, atol=1e-6)
    occlusion = gradcam.Occlusion(model, window=4, stride=3, score="raw", batch_size=batch_size)
    np.testing.assert_allclose(
        occlusion(x, target=per_image_class).raw, occlusion(x, target=CLASSES).raw, rtol=1e-6, atol=1e-6
    )
    ablation = gradcam.AblationCAM(model, layer="features", batch_size=batch_size, quiet=True)
    np.testing.assert_allclose(
        ablation(x, target=per_image_class).weights, ablation(x, target=CLASSES).weights, rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(
    "method, options",
    [
        (gradcam.ScoreCAM, {"weighting": "channels"}),
        (gradcam.SSCAM, {"weighting": "channels", "n_samples": 2}),
        (gradcam.ISCAM, {"weighting": "channels", "n_samples": 2}),
        (gradcam.AblationCAM, {}),
    ],
)
def test_raw_score_methods_give_the_class_targets_numbers_with_class_score(tiny, method, options):
    """These use the raw class score, so ``ClassScore(c)`` and ``target=c`` must agree exactly."""
    model, x, _ = tiny
    cam = method(model, layer="features", batch_size=4, quiet=True, **options)
    by_function, by_class = cam(x, target=ClassScore(CLASSES)), cam(x, target=CLASSES)
    np.testing.assert_allclose(by_function.weights, by_class.weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(by_function.maps, by_class.maps)


def test_occlusion_with_a_target_function_equals_the_raw_class_score(tiny):
    model, x, _ = tiny
    occlusion = gradcam.Occlusion(model, window=4, stride=3, score="raw", batch_size=7)
    by_function = occlusion(x, target=ClassScore(CLASSES))
    by_class = occlusion(x, target=CLASSES)
    np.testing.assert_allclose(by_function.raw, by_class.raw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(by_function.scores, by_class.scores, rtol=1e-6)


def test_occlusion_of_a_segmentation_region_by_hand():
    # the model is the identity: the region's score is the sum of the input's masked pixels. Ones, the mask
    # on pixel (0, 0) only, 2x2 windows with stride 2: only the top-left window drops the score, by 1
    image = np.ones((1, 1, 4, 4), dtype=np.float32)
    mask = np.zeros((4, 4))
    mask[0, 0] = 1
    ex = gradcam.Occlusion(nn.Identity(), window=2, stride=2)(image, target=SegmentationRegion(0, mask))
    expected = np.zeros((1, 4, 4))
    expected[0, :2, :2] = 1
    np.testing.assert_array_equal(ex.raw, expected)
    np.testing.assert_array_equal(ex.scores, [1.0])
    assert ex.logits is None and (ex.targets == -1).all()


def test_several_targets_per_image_in_occlusion(tiny):
    model, x, _ = tiny
    occlusion = gradcam.Occlusion(model, window=4, stride=4, quiet=True)
    classes = np.array([[0, 1], [2, 3], [1, 1]])
    ex = occlusion(x, target=classes)
    assert ex.maps.shape == (3, 2, 12, 12) and ex.raw.shape == (3, 2, 12, 12)
    for t in range(2):
        np.testing.assert_array_equal(ex.maps[:, t], occlusion(x, target=classes[:, t]).maps)


def test_frameworks_agree_with_a_ready_target():
    results = {
        name: gradcam.Occlusion(model, window=16, stride=16, quiet=True)(x, target=ClassScore([1, 3]))
        for name, (model, x) in embedded_net_everywhere(weights_seed=2, input_seed=0).items()
    }
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps, results["torch"].maps, atol=1e-4, err_msg=name)


# --- the metrics ----------------------------------------------------------------------------------------


class PixelSum(nn.Module):
    """Class 0's raw score is the sum of the input pixels, class 1's is 0."""

    def forward(self, x):
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_deletion_curve_with_a_target_function_by_hand():
    # pixels 1..4, deleted largest map value first (the map is the image): scores 10, 6, 3, 1, 0
    image = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    maps = image[:, 0]
    scores, _ = metrics.deletion_curve(PixelSum(), image, maps, target=lambda out: out[:, 0], steps=4)
    np.testing.assert_array_equal(scores, [[10, 6, 3, 1, 0]])
    by_class, _ = metrics.deletion_curve(PixelSum(), image, maps, target=0, steps=4, score="raw")
    np.testing.assert_array_equal(scores, by_class)


def test_metrics_with_a_ready_target_equal_the_raw_class_score(tiny):
    model, x, _ = tiny
    maps = np.random.default_rng(0).random((3, 12, 12))
    for metric in (metrics.insertion_auc, metrics.deletion_auc):
        by_function = metric(model, x, maps, target=ClassScore(CLASSES), steps=5, batch_size=4)
        by_class = metric(model, x, maps, target=CLASSES, steps=5, score="raw", batch_size=4)
        np.testing.assert_allclose(by_function, by_class, rtol=1e-6, atol=1e-6)
    Y, O = metrics.explanation_scores(PixelSum(), np.ones((1, 1, 2, 2), np.float32), np.full((1, 2, 2), 0.25),
                                      target=lambda out: out[:, 0])
    np.testing.assert_array_equal([Y, O], [[4.0], [1.0]])
    np.testing.assert_allclose(
        metrics.average_drop(PixelSum(), np.ones((1, 1, 2, 2), np.float32), np.full((1, 2, 2), 0.25),
                             target=lambda out: out[:, 0]),
        [0.75],
    )


# --- grids of one and three axes (torch) ----------------------------------------------------------------


def run_or_skip(call):
    """The result of ``call()``, or a skip while the backend still refuses input that is not 4-D."""
    try:
        return call()
    except ValueError as error:
        if "expected a batch of images" in str(error):
            pytest.skip(f"the backend refuses non-4-D input: {error}")
        raise


class SignalSum(nn.Module):
    """``(N, 1, L)`` -> ``(N, 2)``: class 0 is the sum of the signal, class 1 is 0; ``features`` the identity."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x):
        total = self.features(x).sum(dim=(1, 2))
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def test_occlusion_of_a_signal_by_hand():
    # signal 1..5, window 2, stride 2 (last window starts at 3): drops 3, 7, 9 over [0, 2), [2, 4), [3, 5)
    signal = np.arange(1, 6, dtype=np.float32).reshape(1, 1, 5)
    ex = run_or_skip(lambda: gradcam.Occlusion(SignalSum(), window=2, stride=2, score="raw")(signal, target=0))
    np.testing.assert_allclose(ex.raw, [[3, 3, 7, 8, 9]])
    assert ex.grid == 1 and not ex.pixel_space
    np.testing.assert_allclose(ex.maps, [[0, 0, 4 / 6, 5 / 6, 1]])


def test_occlusion_of_a_volume_by_hand():
    volume = np.ones((1, 1, 2, 2, 4), dtype=np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0] * 16, [0.0] * 16]))
    ex = run_or_skip(lambda: gradcam.Occlusion(model, window=(2, 2, 2), stride=2, score="raw")(volume, target=0))
    np.testing.assert_allclose(ex.raw, np.full((1, 2, 2, 4), 8.0))  # every window holds 8 ones


def test_score_cam_on_a_signal_equals_the_loop():
    # features is the identity: A = the signal (one channel), its mask the normalised signal
    signal = np.array([[[0.0, 1.0, 3.0, 2.0]]], dtype=np.float32)
    ex = run_or_skip(lambda: gradcam.ScoreCAM(SignalSum(), layer="features")(signal, target=lambda out: out[:, 0]))
    mask = signal[0, 0] / 3
    np.testing.assert_allclose(ex.weights, [[(signal[0, 0] * mask).sum()]], rtol=1e-6)
    assert ex.maps.shape == (1, 4)


def test_is_cam_on_a_signal_by_hand():
    # IS-CAM with 2 samples scales the mask by c = 1/2 and 3/2; the score is linear: w = mean(c) * sum(x M) = sum(x M)
    signal = np.array([[[0.0, 1.0, 3.0, 2.0]]], dtype=np.float32)
    cam = gradcam.ISCAM(SignalSum(), layer="features", n_samples=2)
    ex = run_or_skip(lambda: cam(signal, target=lambda out: out[:, 0]))
    np.testing.assert_allclose(ex.weights, [[(signal[0, 0] * signal[0, 0] / 3).sum()]], rtol=1e-6)
