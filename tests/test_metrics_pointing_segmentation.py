"""The pointing game with recall (Grad-CAM 4.3) and the mask metrics (Grad-CAM 4.2), on values worked by hand."""
import numpy as np
import pytest

from gradcam import metrics


def test_declared_present_keeps_the_top_k_at_or_above_the_threshold():
    p = np.array([[0.6, 0.3, 0.05, 0.05], [0.25, 0.25, 0.4, 0.1]])
    # top 2 of row 1: class 2 (0.4), then the tie 0.25 / 0.25 goes to the lower index, class 0
    np.testing.assert_array_equal(
        metrics.declared_present(p, 0.2, top=2), [[True, True, False, False], [True, False, True, False]]
    )
    np.testing.assert_array_equal(
        metrics.declared_present(p, 0.3, top=2), [[True, True, False, False], [False, False, True, False]]
    )
    # top larger than the number of classes: every class above the threshold
    np.testing.assert_array_equal(metrics.declared_present(p, 0.1, top=5), p >= 0.1)


def test_pointing_precision_and_recall_over_image_class_pairs():
    present = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=bool)
    declared = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=bool)
    # image 0: classes 0 and 1 hit; class 2 "hit" but absent (no object of it): not a hit
    hits = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    precision, recall = metrics.pointing_precision_recall(declared, present, hits)
    # declared pairs in row-major order: (0,0) hit, (0,1) hit, (0,2) absent, (2,0) miss, (2,2) absent
    np.testing.assert_array_equal(precision, [1, 1, 0, 0, 0])
    # present pairs: (0,0) found, (0,1) found, (1,1) not declared, (2,0) declared but missed
    np.testing.assert_array_equal(recall, [1, 1, 0, 0])
    assert precision.mean() == 2 / 5 and recall.mean() == 2 / 4


def test_best_rejection_threshold_maximizes_f1_of_the_decisions():
    p = np.array([[0.7, 0.25, 0.05], [0.5, 0.45, 0.05], [0.1, 0.85, 0.05]])
    present = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)  # 4 present pairs
    # tau 0.05: 9 declared, 4 right -> F1 = 8 / 13; tau 0.2: 5 declared (0.7, 0.25, 0.5, 0.45, 0.85), 4 right ->
    # 8 / 9; tau 0.3: 4 declared (0.7, 0.5, 0.45, 0.85), all right -> 1; tau 0.6: 2 declared, right -> 4 / 6
    assert metrics.best_rejection_threshold(p, present, [0.05, 0.2, 0.3, 0.6], top=3) == 0.3
    # ties go to the lowest threshold, in whatever order they come: 0.3 and 0.4 both give F1 = 1
    assert metrics.best_rejection_threshold(p, present, [0.4, 0.3], top=3) == 0.3
    # with the top 1 only, class 1 of image 1 (0.45) is never declared: 0.05 and 0.3 declare the three top-1
    # classes, all right, F1 = 6 / 7; 0.6 drops image 1's, F1 = 4 / 6
    assert metrics.best_rejection_threshold(p, present, [0.6, 0.3, 0.05], top=1) == 0.05


MAPS = np.array([[[0.0, 0.2, 0.4], [0.6, 0.8, 1.0], [0.1, 0.3, 0.5]]])
MASK = np.array([[[False, False, True], [False, True, True], [False, False, False]]])


def test_threshold_masks_and_iou_by_hand():
    # threshold 0.5 of max 1.0: 0.6, 0.8, 1.0, 0.5 -> four pixels; the mask has 0.4, 0.8, 1.0
    np.testing.assert_array_equal(
        metrics.threshold_masks(MAPS, 0.5)[0], [[False, False, False], [True, True, True], [False, False, True]]
    )
    # intersection {0.8, 1.0} = 2, union {0.4, 0.6, 0.8, 1.0, 0.5} = 5
    np.testing.assert_allclose(metrics.mask_iou(MAPS, MASK, 0.5), [2 / 5])
    # threshold 0.8: {0.8, 1.0}, both in the mask of 3 -> 2 / 3;
    # threshold 0.35: {0.4, 0.5, 0.6, 0.8, 1.0}, three of them in the mask -> 3 / 5
    np.testing.assert_allclose(metrics.iou_by_threshold(MAPS, MASK, [0.8, 0.35]), [[2 / 3], [3 / 5]])
    # the scale of a map does not matter (the threshold is a share of its maximum)
    np.testing.assert_allclose(metrics.mask_iou(7 * MAPS, MASK, 0.5), [2 / 5])
    # an all-zero map segments nothing: IoU 0
    np.testing.assert_array_equal(metrics.mask_iou(np.zeros_like(MAPS), MASK, 0.5), [0.0])


def test_best_threshold_is_the_highest_mean_iou_first_among_ties():
    ious = np.array([[0.5, 0.7], [0.6, 0.8], [0.9, 0.5]])  # means 0.6, 0.7, 0.7
    assert metrics.best_threshold([0.1, 0.2, 0.3], ious) == 0.2


def test_mask_energy_by_hand():
    # inside: 0.4 + 0.8 + 1.0 = 2.2; total 3.9
    np.testing.assert_allclose(metrics.mask_energy(MAPS, MASK), [2.2 / 3.9])
    np.testing.assert_array_equal(metrics.mask_energy(np.zeros_like(MAPS), MASK), [0.0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.mask_iou(MAPS, MASK[:, :2], 0.5), "do not fit maps"),
        (lambda: metrics.mask_iou(MAPS, MASK.astype(int), 0.5), "must be boolean"),
        (lambda: metrics.mask_iou(MAPS, np.zeros_like(MASK), 0.5), "mask of image 0 is empty"),
        (lambda: metrics.mask_iou(MAPS, MASK, 0.0), "threshold must lie in (0, 1]"),
        (lambda: metrics.mask_energy(-MAPS, MASK), "non-negative maps"),
        (lambda: metrics.declared_present([[0.5, -0.1]], 0.2), "non-negative (N, C)"),
        (lambda: metrics.declared_present([[0.5, 0.5]], 1.5), "threshold must lie in [0, 1]"),
        (lambda: metrics.pointing_precision_recall([[True]], [[True, False]], [[True]]), "of one shape"),
        (lambda: metrics.best_threshold([0.1, 0.2], [[0.5]]), "ious must be (T, N)"),
    ],
)
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call()
