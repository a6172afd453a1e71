"""The metrics on signals (N, L) and volumes (N, D, H, W): hand-worked 1-D and 3-D cases with exact values, an
image stacked in depth scoring as the image itself wherever the formula says it must, and channels-first and
channels-last models giving the same curves."""
import numpy as np
import pytest
import torch
from torch import nn

from gradcam import metrics

# --- a signal of 8 samples with an object on samples 2..4 ---------------------------------------------

SIGNAL_BOX = (2, 5)  # (x0, x1), end exclusive
RAMP = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0])  # sums to 10, peak 4 at sample 4


def test_signal_localization_by_hand():
    # the ramp's samples >= 0.15 * 4 = 0.6 are 1..4: box (1, 5) against (2, 5): 3 / 4. A map on exactly the
    # object gives its own box: 1.
    on_object = np.zeros(8)
    on_object[2:5] = 1.0
    np.testing.assert_allclose(metrics.localization_iou(np.stack([RAMP, on_object]), [SIGNAL_BOX] * 2), [0.75, 1.0])


def test_signal_pointing_and_energy_by_hand():
    peak_outside = np.zeros((1, 8))
    peak_outside[0, 6] = 1.0
    # the ramp's peak (sample 4) lies in (2, 5); sample 6 does not, but does once the box is widened by 2
    np.testing.assert_array_equal(metrics.pointing_game(np.stack([RAMP, peak_outside[0]]), [SIGNAL_BOX] * 2), [1, 0])
    np.testing.assert_array_equal(metrics.pointing_game(peak_outside, [SIGNAL_BOX], tolerance=2), [True])
    # energy inside (2, 5): (2 + 3 + 4) / 10; thresholded at half the peak the 1 goes: 9 / 9
    np.testing.assert_allclose(metrics.energy_pointing_game(RAMP[None], [SIGNAL_BOX]), [0.9])
    np.testing.assert_allclose(metrics.energy_pointing_game(RAMP[None], [SIGNAL_BOX], threshold=0.5), [1.0])


def test_signal_coverage_correlation_and_masks_by_hand():
    # boxes (0, 2) and (5, 8): the first reaches 1 >= 0.25 * 4, the second only 0: half the instances lit
    two = [np.array([(0, 2), (5, 8)])]
    np.testing.assert_allclose(metrics.instance_coverage(RAMP[None], two, threshold=0.25), [0.5])
    np.testing.assert_allclose(metrics.rank_correlation([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]), [-1.0])
    # segment at 0.5: samples >= 2 are 2, 3, 4. Mask 3..6: intersection {3, 4}, union {2..6}: 2 / 5; energy 7 / 10
    mask = np.zeros((1, 8), dtype=bool)
    mask[0, 3:7] = True
    np.testing.assert_array_equal(metrics.threshold_masks(RAMP[None], 0.5)[0], RAMP >= 2)
    np.testing.assert_allclose(metrics.mask_iou(RAMP[None], mask, 0.5), [0.4])
    np.testing.assert_allclose(metrics.mask_energy(RAMP[None], mask), [0.7])


# --- a 2x3x4 volume (D, H, W) with an object at slice 1, rows 0..1, columns 1..2 -----------------------

VOLUME_BOX = (1, 0, 1, 3, 2, 2)  # (x0, y0, z0, x1, y1, z1): 2 * 2 * 1 = 4 voxels
ON_OBJECT = np.zeros((2, 3, 4))
ON_OBJECT[1, 0:2, 1:3] = 1.0
UNIFORM = np.ones((2, 3, 4))


def test_volume_localization_pointing_and_energy_by_hand():
    volumes = np.stack([ON_OBJECT, UNIFORM])
    boxes = [VOLUME_BOX] * 2
    # the object's own box: 1; the uniform map's box is the whole volume: 4 / 24
    np.testing.assert_allclose(metrics.localization_iou(volumes, boxes), [1.0, 4 / 24])
    # first maxima: (z, y, x) = (1, 0, 1) inside; (0, 0, 0) is on slice 0, outside
    np.testing.assert_array_equal(metrics.pointing_game(volumes, boxes), [True, False])
    np.testing.assert_allclose(metrics.energy_pointing_game(volumes, boxes), [1.0, 4 / 24])
    np.testing.assert_allclose(metrics.instance_coverage(volumes, boxes), [1.0, 1.0])


def test_volume_boxes_list_the_axes_from_the_last():
    # one voxel at (z, y, x) = (1, 0, 2) is the box x 2..3, y 0..1, z 1..2
    voxel = np.zeros((1, 2, 3, 4))
    voxel[0, 1, 0, 2] = 1.0
    np.testing.assert_allclose(metrics.localization_iou(voxel, [(2, 0, 1, 3, 1, 2)]), [1.0])
    np.testing.assert_array_equal(metrics.pointing_game(voxel, [(2, 0, 1, 3, 1, 2)]), [True])
    # a box one column to the left: no overlap, no hit; the first box written in (z, y, x) order runs past the
    # 2 slices
    np.testing.assert_allclose(metrics.localization_iou(voxel, [(1, 0, 1, 2, 1, 2)]), [0.0])
    np.testing.assert_array_equal(metrics.pointing_game(voxel, [(1, 0, 1, 2, 1, 2)]), [False])
    with pytest.raises(ValueError, match="outside the 2x3x4 volume"):
        metrics.pointing_game(voxel, [(1, 0, 2, 2, 1, 3)])


def test_volume_masks_by_hand():
    # segment of ON_OBJECT: its 4 voxels; a mask of slice 1 (12 voxels) holds them: IoU 4 / 12, energy 1
    mask = np.zeros((1, 2, 3, 4), dtype=bool)
    mask[0, 1] = True
    np.testing.assert_allclose(metrics.mask_iou(ON_OBJECT[None], mask, 0.5), [4 / 12])
    np.testing.assert_allclose(metrics.mask_energy(UNIFORM[None], mask), [0.5])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.pointing_game(np.zeros((1, 8)), [(0, 0, 2, 2)]), r"maps must have shape \(N, H, W\)"),
        (lambda: metrics.pointing_game(UNIFORM[None], [(0, 0, 2, 2)]), r"maps must have shape \(N, H, W\)"),
        (lambda: metrics.pointing_game(UNIFORM[None], [(0, 0, 0, 1, 1)]), r"not \(x0, y0, z0, x1, y1, z1\) rows"),
        (lambda: metrics.localization_iou(UNIFORM[None], [(0, 0, 0, 5, 1, 1)]), "outside the 2x3x4 volume"),
        (lambda: metrics.energy_pointing_game(UNIFORM[None], [(0, 0, 1, 1, 1, 1)]), "of image 0 is empty"),
        (lambda: metrics.rank_correlation(RAMP[None], RAMP[None, :4]), r"signals of size \(L,\) = \(8,\)"),
        (lambda: metrics.pointing_game(np.zeros((1, 2, 2, 2, 2)), [(0, 1)]), r"got 5-D shape"),
        (lambda: metrics.mask_energy(UNIFORM[None], np.zeros((1, 2, 3, 4), dtype=bool)), "mask of image 0 is empty"),
    ],
)
def test_bad_grids_get_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- through a model: the sum of the input over channels and grid -------------------------------------


class GridSum(nn.Module):
    """Outputs ``(sum of the input, 0)`` for ``(N, C, *grid)`` input: class 0's raw score is the sum."""

    def forward(self, x):
        total = x.flatten(1).sum(dim=1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


RAW = dict(target=0, steps=4, score="raw")


def test_signal_deletion_and_insertion_by_hand():
    # one channel [1, 3, 4, 2], the map ranking it 4, 3, 2, 1: deletion 10, 6, 3, 1, 0 -> 0.25 * (8 + 4.5 + 2 +
    # 0.5) = 3.75; insertion 0, 4, 7, 9, 10 -> 6.25
    signal = np.array([[[1.0, 3.0, 4.0, 2.0]]], dtype=np.float32)
    scores, fractions = metrics.deletion_curve(GridSum(), signal, signal[:, 0], **RAW)
    np.testing.assert_allclose(scores, [[10.0, 6.0, 3.0, 1.0, 0.0]])
    np.testing.assert_allclose(metrics.deletion_auc(GridSum(), signal, signal[:, 0], **RAW), [3.75])
    np.testing.assert_allclose(metrics.insertion_auc(GridSum(), signal, signal[:, 0], **RAW), [6.25])


def test_volume_deletion_removes_every_channel():
    # (C, D, H, W) = (2, 2, 1, 2): channel 0 holds 1, 3 on slice 0 and 4, 2 on slice 1, channel 1 ten times it,
    # 110 in all. The map ranks the voxels 4, 3, 2, 1, each step removing 11 times the voxel:
    # deletion 110, 66, 33, 11, 0 -> 0.25 * (88 + 49.5 + 22 + 5.5) = 41.25; insertion 0, 44, 77, 99, 110 -> 68.75
    channel = np.array([[[1.0, 3.0]], [[4.0, 2.0]]], dtype=np.float32)
    volume = np.stack([channel, 10 * channel])[None]
    scores, _ = metrics.deletion_curve(GridSum(), volume, channel[None], **RAW)
    np.testing.assert_allclose(scores, [[110.0, 66.0, 33.0, 11.0, 0.0]])
    np.testing.assert_allclose(metrics.deletion_auc(GridSum(), volume, channel[None], **RAW), [41.25])
    np.testing.assert_allclose(metrics.insertion_auc(GridSum(), volume, channel[None], **RAW), [68.75])


def test_signal_confidence_by_hand():
    # Y = 1 + 3 + 4 + 2 = 10; on image * [0.5, 1, 1, 0]: O = 0.5 + 3 + 4 = 7.5, drop 2.5 / 10. Doubled: O = 20
    signal = np.array([[[1.0, 3.0, 4.0, 2.0]]] * 2, dtype=np.float32)
    maps = np.array([[0.5, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(metrics.average_drop(GridSum(), signal, maps, target=0, score="raw"), [0.25, 0.0])
    np.testing.assert_array_equal(
        metrics.increase_in_confidence(GridSum(), signal, maps, target=0, score="raw"), [False, True]
    )


def test_bad_signal_maps_for_a_model_get_a_clear_error():
    signal = np.ones((1, 1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"do not fit signals of size \(L,\) = \(4,\)"):
        metrics.deletion_auc(GridSum(), signal, np.ones((1, 5)), **RAW)


# --- an image stacked in depth: a volume whose metrics are the image's --------------------------------

DEPTH = 3
rng = np.random.default_rng(0)
IMAGE_MAPS = rng.random((3, 4, 4))  # distinct values: no ties for the curves to order differently
STACKED_MAPS = np.repeat(IMAGE_MAPS[:, None], DEPTH, axis=1)
IMAGE_BOXES = [np.array([(0, 0, 2, 2), (1, 2, 4, 4)]), (1, 1, 3, 4), (0, 0, 4, 1)]
STACKED_BOXES = [
    np.concatenate([b[:, :2], np.zeros((len(b), 1), int), b[:, 2:], np.full((len(b), 1), DEPTH)], axis=1)
    for b in (np.atleast_2d(box) for box in IMAGE_BOXES)
]


@pytest.mark.parametrize(
    "metric, options",
    [
        (metrics.localization_iou, {"threshold": 0.5}),
        (metrics.pointing_game, {"tolerance": 1}),
        (metrics.energy_pointing_game, {"threshold": 0.3}),
        (metrics.instance_coverage, {"threshold": 0.8}),
    ],
)
def test_a_stacked_image_scores_as_the_image_against_boxes(metric, options):
    # boxes spanning every slice: the segment, the peak and the energy of each slice are the image's
    image = metric(IMAGE_MAPS, IMAGE_BOXES, **options)
    np.testing.assert_allclose(metric(STACKED_MAPS, STACKED_BOXES, **options), image, rtol=1e-12)


def test_a_stacked_image_scores_as_the_image_against_masks_and_maps():
    masks = IMAGE_MAPS > 0.5
    stacked_masks = np.repeat(masks[:, None], DEPTH, axis=1)
    np.testing.assert_allclose(
        metrics.mask_iou(STACKED_MAPS, stacked_masks, 0.4), metrics.mask_iou(IMAGE_MAPS, masks, 0.4), rtol=1e-12
    )
    np.testing.assert_allclose(
        metrics.mask_energy(STACKED_MAPS, stacked_masks), metrics.mask_energy(IMAGE_MAPS, masks), rtol=1e-12
    )
    # repeating every value shifts each average rank affinely (D r - (D - 1) / 2): Spearman's rho is unchanged
    other = IMAGE_MAPS[::-1] ** 2
    np.testing.assert_allclose(
        metrics.rank_correlation(STACKED_MAPS, np.repeat(other[:, None], DEPTH, axis=1)),
        metrics.rank_correlation(IMAGE_MAPS, other),
        rtol=1e-12,
    )


class MeanLinear(nn.Module):
    """Class scores from the channels' means over the grid: a volume repeating an image in depth scores as it."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data = weight

    def forward(self, x):
        return self.linear(x.flatten(2).mean(dim=2))


def test_a_stacked_image_scores_as_the_image_through_a_model():
    # steps 8 divides the 16 pixels: step i removes the top 2 i pixels of the image and the top 2 i D voxels
    # of the volume, the same pixels in every slice (each value appears D times, next to each other in order)
    model = MeanLinear(torch.from_numpy(np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)))
    images = np.random.default_rng(2).random((3, 2, 4, 4), dtype=np.float32)
    volumes = np.repeat(images[:, :, None], DEPTH, axis=2)
    for metric in (metrics.deletion_auc, metrics.insertion_auc):
        np.testing.assert_allclose(
            metric(model, volumes, STACKED_MAPS, steps=8, baseline=0.25),
            metric(model, images, IMAGE_MAPS, steps=8, baseline=0.25),
            rtol=1e-5,
        )
    for metric in (metrics.average_drop, metrics.increase_in_confidence):
        np.testing.assert_allclose(metric(model, volumes, STACKED_MAPS), metric(model, images, IMAGE_MAPS), rtol=1e-5)


# --- channels first (PyTorch) and channels last (Keras): the same signal, the same curve --------------


def test_signal_curves_agree_between_channels_first_and_channels_last():
    keras = pytest.importorskip("keras")
    weight = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    torch_model = MeanLinear(torch.from_numpy(weight))
    keras_model = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4, use_bias=False)]
    )
    keras_model.layers[-1].set_weights([weight.T])
    signals = np.random.default_rng(4).random((2, 3, 6), dtype=np.float32)
    maps = np.random.default_rng(5).random((2, 6))
    ours = metrics.deletion_curve(torch_model, signals, maps, steps=3)[0]
    theirs = metrics.deletion_curve(keras_model, signals.transpose(0, 2, 1), maps, steps=3)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert not np.allclose(ours[:, 0], ours[:, -1])  # the curve moves: the comparison is not of constants
