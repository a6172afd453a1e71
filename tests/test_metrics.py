"""Every metric on hand-made maps and tiny models, with the answers worked out by hand in the comments; the
model-based metrics agree between PyTorch and Keras on the default model; bad input gets a clear error."""
import numpy as np
import pytest
import torch
from torch import nn

from gradcam import metrics

# --- maps against boxes: an 8x8 map with a 3x3 object at rows 2-4, columns 3-5 ------------------------

BOX = (3, 2, 6, 5)  # (x0, y0, x1, y1), end exclusive
PERFECT = np.zeros((8, 8))
PERFECT[2:5, 3:6] = 1.0
INVERTED = 1.0 - PERFECT
UNIFORM = np.ones((8, 8))
MAPS = np.stack([PERFECT, INVERTED, UNIFORM])
BOXES = [BOX, BOX, BOX]


def test_localization_iou_by_hand():
    # perfect: the segment is the object itself, IoU 1. Inverted: the largest segment is the ring around the
    # object, whose box is the whole image: IoU = 9 / 64. Uniform: every pixel passes 15%: whole image, 9 / 64.
    np.testing.assert_allclose(metrics.localization_iou(MAPS, BOXES), [1.0, 9 / 64, 9 / 64])
    np.testing.assert_array_equal(metrics.localization_correct(MAPS, BOXES), [True, False, False])


def test_localization_takes_the_best_of_several_boxes():
    # the map's box (3, 2, 6, 5) against (0, 0, 2, 2) (no overlap) and (3, 2, 6, 8): 9 / 18
    iou = metrics.localization_iou(PERFECT[None], [np.array([[0, 0, 2, 2], [3, 2, 6, 8]])])
    np.testing.assert_allclose(iou, [0.5])


def test_pointing_game_by_hand():
    # the first maximum: perfect (row 2, column 3) is in the box; inverted and uniform (0, 0) are not
    np.testing.assert_array_equal(metrics.pointing_game(MAPS, BOXES), [True, False, False])
    # a tolerance of 3 pixels widens the box to columns 0..8, rows -1..7: (0, 0) is then in
    np.testing.assert_array_equal(metrics.pointing_game(MAPS, BOXES, tolerance=3), [True, True, True])


def test_energy_pointing_game_by_hand():
    # all the energy inside; none; 9 of 64 equal pixels
    np.testing.assert_allclose(metrics.energy_pointing_game(MAPS, BOXES), [1.0, 0.0, 9 / 64])
    # overlapping boxes count their common pixels once: (3, 2, 6, 5) and (3, 2, 6, 4) cover 9 pixels
    overlapping = [np.array([BOX, (3, 2, 6, 4)])]
    np.testing.assert_allclose(metrics.energy_pointing_game(UNIFORM[None], overlapping), [9 / 64])


def test_energy_threshold_drops_the_weak_values():
    # 0.2 everywhere except 1.0 on the object: sum = 9 + 0.2 * 55 = 20; inside 9 -> 0.45. Thresholded at
    # 0.5 of the max the 0.2s count as 0 -> 1.0.
    soft = np.where(PERFECT > 0, 1.0, 0.2)[None]
    np.testing.assert_allclose(metrics.energy_pointing_game(soft, [BOX]), [0.45])
    np.testing.assert_allclose(metrics.energy_pointing_game(soft, [BOX], threshold=0.5), [1.0])


def test_all_zero_map_scores_zero_energy_and_coverage():
    zero = np.zeros((1, 8, 8))
    assert metrics.energy_pointing_game(zero, [BOX])[0] == 0.0
    assert metrics.instance_coverage(zero, [BOX])[0] == 0.0


def test_instance_coverage_by_hand():
    # two instances; the map lights the first (1.0) and the second at 0.4: half of them reach 0.5 * max
    two = np.array([[0, 0, 2, 2], [5, 5, 8, 8]])
    heat = np.zeros((8, 8))
    heat[0, 0] = 1.0
    heat[6, 6] = 0.4
    np.testing.assert_allclose(metrics.instance_coverage(heat[None], [two]), [0.5])
    np.testing.assert_allclose(metrics.instance_coverage(heat[None], [two], threshold=0.4), [1.0])


def test_rank_correlation_by_hand():
    ramp = np.arange(64, dtype=float).reshape(8, 8)
    maps = np.stack([ramp, -ramp, UNIFORM])
    reference = np.stack([ramp, ramp, ramp])
    # the same ranking: 1; reversed: -1; a constant map ranks nothing: 0 by rule
    np.testing.assert_allclose(metrics.rank_correlation(maps, reference), [1.0, -1.0, 0.0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.pointing_game(np.zeros((2, 8)), [BOX, BOX]), r"maps must have shape \(N, H, W\)"),
        (lambda: metrics.pointing_game(MAPS, [BOX]), "boxes for 1 images and maps for 3"),
        (lambda: metrics.localization_iou(PERFECT[None], [(3, 2, 3, 5)]), "of image 0 is empty"),
        (lambda: metrics.energy_pointing_game(PERFECT[None], [np.zeros((0, 4))]), "image 0 has no box"),
        (lambda: metrics.pointing_game(PERFECT[None], [(0, 0, 9, 4)]), "outside the 8x8 image"),
        (lambda: metrics.energy_pointing_game(-PERFECT[None], [BOX]), "non-negative"),
        (lambda: metrics.rank_correlation(MAPS, MAPS[:, :4]), r"do not fit images of size"),
        (lambda: metrics.pointing_game(np.full((1, 8, 8), np.nan), [BOX]), "NaN"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- through a model: one whose score is the sum of its input pixels ----------------------------------


class PixelSum(nn.Module):
    """Outputs ``(sum of the pixels, 0)``: class 0's raw score is the sum, its probability sigmoid(sum)."""

    def forward(self, x):
        total = x.sum(dim=(1, 2, 3))
        return torch.stack([total, torch.zeros_like(total)], dim=1)


# one image, one channel, 2x2 pixels [[1, 3], [4, 2]]: 10 in all
IMAGE = np.array([[[[1.0, 3.0], [4.0, 2.0]]]], dtype=np.float32)
PERFECT_ORDER = IMAGE[:, 0]  # the map ranks the pixels 4, 3, 2, 1
INVERTED_ORDER = -IMAGE[:, 0]  # 1, 2, 3, 4
FLAT = np.ones((1, 2, 2))  # ties: row-major order 1, 3, 4, 2


@pytest.mark.parametrize(
    "maps, deletion, insertion",
    [
        # deletion scores 10, 6, 3, 1, 0: 0.25 * (8 + 4.5 + 2 + 0.5); insertion 0, 4, 7, 9, 10
        (PERFECT_ORDER, 3.75, 6.25),
        # deletion 10, 9, 7, 4, 0; insertion 0, 1, 3, 6, 10
        (INVERTED_ORDER, 6.25, 3.75),
        # deletion 10, 9, 6, 2, 0: 0.25 * (9.5 + 7.5 + 4 + 1); insertion 0, 1, 4, 8, 10
        (FLAT, 5.5, 4.5),
    ],
    ids=["perfect", "inverted", "uniform"],
)
def test_deletion_and_insertion_by_hand(maps, deletion, insertion):
    model = PixelSum()
    kw = dict(target=0, steps=4, score="raw")
    np.testing.assert_allclose(metrics.deletion_auc(model, IMAGE, maps, **kw), [deletion], rtol=1e-6)
    np.testing.assert_allclose(metrics.insertion_auc(model, IMAGE, maps, **kw), [insertion], rtol=1e-6)


def test_curves_with_a_baseline_and_fewer_steps():
    # steps 2 change floor(i * 4 / 2) = 0, 2, 4 pixels; removed pixels become 0.5
    scores, fractions = metrics.deletion_curve(PixelSum(), IMAGE, PERFECT_ORDER, 0, steps=2, baseline=0.5, score="raw")
    np.testing.assert_allclose(fractions, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(scores, [[10.0, 4.0, 2.0]])  # 10; 1 + 2 + 0.5 + 0.5; 4 * 0.5
    scores, _ = metrics.insertion_curve(PixelSum(), IMAGE, PERFECT_ORDER, 0, steps=2, baseline=0.5, score="raw")
    np.testing.assert_allclose(scores, [[2.0, 8.0, 10.0]])  # 4 * 0.5; 4 + 3 + 0.5 + 0.5; 10


def sigmoid(s):
    return 1 / (1 + np.exp(-s))


def test_probability_score_is_the_softmax_of_the_target():
    # logits (sum, 0): softmax of class 0 = sigmoid(sum); with 1 step the curve is the image and the baseline
    scores, _ = metrics.deletion_curve(PixelSum(), IMAGE, PERFECT_ORDER, 0, steps=1)
    np.testing.assert_allclose(scores, [[sigmoid(10.0), 0.5]], rtol=1e-6)


def test_average_drop_and_increase_in_confidence_by_hand():
    model = PixelSum()
    image = np.repeat(IMAGE, 3, axis=0)
    # the map [[0, 2/3], [1, 1/3]] keeps 0 + 2 + 4 + 2/3 = 20/3 of 10: drop 1/3. A map of ones keeps all:
    # drop 0, no increase. A map of twos doubles the score: drop 0 and an increase.
    maps = np.stack([(IMAGE[0, 0] - 1) / 3, np.ones((2, 2)), np.full((2, 2), 2.0)])
    kw = dict(target=0, score="raw")
    np.testing.assert_allclose(metrics.average_drop(model, image, maps, **kw), [1 / 3, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(metrics.increase_in_confidence(model, image, maps, **kw), [False, False, True])
    Y, O = metrics.explanation_scores(model, image, maps, target=0)
    np.testing.assert_allclose(Y, sigmoid(10.0), rtol=1e-6)
    np.testing.assert_allclose(O, sigmoid(np.array([20 / 3, 10.0, 20.0])), rtol=1e-6)


def test_average_drop_refuses_a_non_positive_raw_score():
    with pytest.raises(ValueError, match=r"score .* <= 0; use score='probability'"):
        metrics.average_drop(PixelSum(), -IMAGE, PERFECT_ORDER, target=0, score="raw")


def test_batching_does_not_change_the_curves():
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 4, 4)).astype(np.float32)
    maps = rng.random((3, 4, 4))
    one, _ = metrics.deletion_curve(PixelSum(), images, maps, 0, steps=5, score="raw", batch_size=1)
    many, _ = metrics.deletion_curve(PixelSum(), images, maps, 0, steps=5, score="raw", batch_size=7)
    np.testing.assert_allclose(one, many, rtol=1e-6)


@pytest.mark.parametrize(
    "metric, maps, options, message",
    [
        (metrics.deletion_auc, PERFECT_ORDER, {"steps": 0}, "steps must be an integer >= 1"),
        (metrics.insertion_auc, np.ones((1, 3, 3)), {}, r"do not fit images of size \(H, W\) = \(2, 2\)"),
        (metrics.average_drop, np.ones((2, 2, 2)), {}, "got 2 maps for 1 images"),
        (metrics.deletion_auc, PERFECT_ORDER, {"score": "logit"}, "score must be one of"),
        (metrics.deletion_auc, PERFECT_ORDER, {"target": lambda out: out.sum(dim=1)}, "as one NumPy array"),
        (metrics.deletion_auc, PERFECT_ORDER, {"target": 2}, r"valid classes are 0..1"),
        (metrics.deletion_auc, PERFECT_ORDER, {"baseline": np.zeros(3)}, "baseline of shape"),
    ],
)
def test_bad_model_metric_input_gets_a_clear_error(metric, maps, options, message):
    with pytest.raises(ValueError, match=message):
        metric(PixelSum(), IMAGE, maps, **options)


# --- the same numbers from PyTorch and Keras ----------------------------------------------------------


def test_model_metrics_agree_between_pytorch_and_keras():
    from gradcam.datasets import make_split
    from gradcam.models import default_model

    split = make_split("single", 4, seed=3, train=False)
    x_torch, x_keras = split.to_float(channels_first=True), split.to_float(channels_first=False)
    rng = np.random.default_rng(1)
    maps = rng.random((4, 64, 64))
    results = {}
    for name, x in (("torch", x_torch), ("tensorflow", x_keras)):
        model = default_model(name)
        results[name] = [
            metrics.deletion_auc(model, x, maps, steps=4, baseline=0.5, batch_size=8),
            metrics.insertion_auc(model, x, maps, steps=4, baseline=0.5, batch_size=8),
            metrics.average_drop(model, x, maps),
            metrics.explanation_scores(model, x, maps)[1],
        ]
    for ours, theirs in zip(results["torch"], results["tensorflow"], strict=False):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
