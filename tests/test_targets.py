"""The ready targets (gradcam.targets): hand-worked values on NumPy and torch, the same maps as the equivalent
class target or hand-written torch function in PyTorch, Keras and JAX, and several targets per image in one call."""
import numpy as np
import pytest
import torch
from backend_kits import embedded_net_everywhere
from torch import nn

import gradcam
from gradcam.targets import BoxScore, ClassScore, EmbeddingSimilarity, SegmentationRegion, box_iou, target_columns

OUT = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, -6.0]], dtype=np.float32)


@pytest.mark.parametrize("as_array", [np.asarray, torch.as_tensor])
def test_class_score_by_hand(as_array):
    out = as_array(OUT)
    np.testing.assert_array_equal(np.asarray(ClassScore(2)(out)), [3.0, -6.0])
    np.testing.assert_array_equal(np.asarray(ClassScore([0, 1])(out)), [1.0, 5.0])
    np.testing.assert_array_equal(np.asarray(ClassScore([0, 1]).for_images(np.array([1, 1]))(out)), [2.0, 5.0])
    with pytest.raises(ValueError, match=r"class index 3 is out of range: valid classes are 0..2"):
        ClassScore(3)(out)
    with pytest.raises(ValueError, match="got 3 classes for a batch of 2 images"):
        ClassScore([0, 1, 2])(out)


def test_segmentation_region_by_hand():
    out = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # class 1 of image 0: [[4, 5], [6, 7]]
    mask = np.array([[1, 0], [0, 1]])
    np.testing.assert_array_equal(SegmentationRegion(1, mask)(out), [4 + 7, 16 + 19])
    per_image = np.stack([mask, 1 - mask])
    np.testing.assert_array_equal(SegmentationRegion(1, per_image)(out), [4 + 7, 17 + 18])
    np.testing.assert_array_equal(SegmentationRegion(1, per_image).for_images(np.array([1]))(out[:1]), [5 + 6])
    channels_last = np.moveaxis(out, 1, -1)
    np.testing.assert_array_equal(SegmentationRegion(1, mask, channel_axis=-1)(channels_last), [11, 35])
    signal = out[:, :, 0]  # a 1-D grid (N, C, L)
    np.testing.assert_array_equal(SegmentationRegion(1, [0, 1], grid=1)(signal), [5, 17])
    with pytest.raises(ValueError, match=r"a mask of grid \(3,\) does not fit the class map's grid \(2,\)"):
        SegmentationRegion(1, [0, 1, 1], grid=1)(signal)


def test_embedding_similarity_by_hand():
    out = np.array([[3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(EmbeddingSimilarity([1.0, 0.0])(out), [0.6, 0.0], atol=1e-12)
    np.testing.assert_allclose(EmbeddingSimilarity([[0.0, 5.0], [0.0, -1.0]])(out), [0.8, -1.0], atol=1e-12)
    np.testing.assert_allclose(EmbeddingSimilarity([1.0, 0.0])(np.zeros((1, 2))), [0.0])
    with pytest.raises(ValueError, match="a reference embedding is zero"):
        EmbeddingSimilarity([0.0, 0.0])


def test_box_iou_and_box_score_by_hand():
    np.testing.assert_allclose(box_iou(np.array([0, 0, 2, 2.0]), np.array([[1, 1, 3, 3.0], [0, 0, 2, 2.0]])),
                               [1 / 7, 1.0])
    detections = [
        {"boxes": np.array([[0, 0, 10, 10], [0, 0, 9, 10.0]]), "labels": np.array([1, 2]),
         "scores": np.array([0.9, 0.8])},
        {"boxes": np.array([[5, 5, 6, 6.0]]), "labels": np.array([1]), "scores": np.array([0.7])},
    ]
    # image 0: a label-2 box matches the second detection (IoU 0.9); image 1: the only box overlaps too little
    target = BoxScore([[[0, 0, 10, 10]], [[0, 0, 4, 4]]], [[2], [1]])
    np.testing.assert_allclose(target(detections), [0.8, 0.0])
    two = BoxScore([[[0, 0, 10, 10], [0, 0, 10, 10]], [[5, 5, 6, 6]]], [[1, 2], [1]])
    np.testing.assert_allclose(two(detections), [0.9 + 0.8, 0.7])
    np.testing.assert_allclose(two.for_images(np.array([1]))(detections[1:]), [0.7])


class TinyDetector(nn.Module):
    """Two fixed boxes per image whose scores are sigmoids of a conv's pooled channels: a torchvision-style
    output (a list of dicts) with a gradient path from the scores to the conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)

    def forward(self, x):
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0]])
        return [{"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.sigmoid(row)} for row in pooled]


def test_box_score_explains_the_matched_detection_in_torch():
    model = TinyDetector().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    target = BoxScore([[4, 4, 12, 12], [4, 5, 12, 12]], [2, 2])  # image 1's box has IoU 56/64 with detection 1
    ex = gradcam.GradCAM(model, layer="conv")(x, target=target)
    by_hand = gradcam.GradCAM(model, layer="conv")(x, target=lambda out: torch.stack([o["scores"][1] for o in out]))
    np.testing.assert_allclose(ex.maps, by_hand.maps, atol=1e-6)
    np.testing.assert_allclose(ex.scores, by_hand.scores, rtol=1e-6)
    assert (ex.targets == -1).all()


class TinySegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.features(x))


def test_segmentation_region_equals_the_hand_written_torch_target():
    model = TinySegmenter().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = np.zeros((8, 8), dtype=np.float32)
    mask[:4, :4] = 1
    ex = gradcam.GradCAM(model, layer="features")(x, target=SegmentationRegion(2, mask))
    by_hand = gradcam.GradCAM(model, layer="features")(x, target=lambda out: out[:, 2, :4, :4].sum(dim=(1, 2)))
    np.testing.assert_allclose(ex.maps, by_hand.maps, atol=1e-6)
    np.testing.assert_allclose(ex.scores, by_hand.scores, rtol=1e-5)


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=3, input_seed=1)


def test_class_score_gives_the_class_targets_map_in_every_framework(three_frameworks):
    for name, (model, x) in three_frameworks.items():
        by_class = gradcam.GradCAM(model, quiet=True)(x, target=[1, 2])
        by_target = gradcam.GradCAM(model, quiet=True)(x, target=ClassScore([1, 2]))
        np.testing.assert_allclose(by_target.maps, by_class.maps, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(by_target.scores, by_class.scores, rtol=1e-5, err_msg=name)


def test_embedding_similarity_agrees_across_frameworks(three_frameworks):
    """The model's logits (N, 5) as the embedding; a reference per image. Torch's map against a hand-written
    torch cosine similarity, Keras's and JAX's against torch's (float32 tolerances)."""
    reference = np.random.default_rng(4).standard_normal((2, 5))
    target = EmbeddingSimilarity(reference)
    results = {name: gradcam.GradCAM(model, quiet=True)(x, target=target) for name, (model, x) in
               three_frameworks.items()}
    model, x = three_frameworks["torch"]
    ref = torch.as_tensor(reference, dtype=torch.float32)
    by_hand = gradcam.GradCAM(model, quiet=True)(x, target=lambda out: nn.functional.cosine_similarity(out, ref))
    np.testing.assert_allclose(results["torch"].maps, by_hand.maps, atol=1e-5)
    np.testing.assert_allclose(results["torch"].scores, by_hand.scores, atol=1e-6)
    assert np.all(np.abs(by_hand.scores) <= 1)
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps, results["torch"].maps, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(results[name].scores, results["torch"].scores, atol=1e-5, err_msg=name)


def test_target_columns():
    assert target_columns(None) is None and target_columns(3) is None and target_columns([1, 2]) is None
    columns = target_columns(np.array([[1, 2, 3], [4, 5, 6]]))
    np.testing.assert_array_equal(columns[2], [3, 6])
    f, g = ClassScore(1), ClassScore(2)
    assert target_columns([f, g]) == [f, g]
    with pytest.raises(ValueError, match="all callables"):
        target_columns([f, 2])


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "ablationcam", "scorecam"])
def test_several_classes_per_image_equal_the_single_calls(three_frameworks, method):
    model, x = three_frameworks["torch"]
    classes = np.array([[1, 4, 3], [0, 0, 2]])
    options = {"max_channels": 4} if method == "scorecam" else {}
    cam = gradcam.method_class(method)(model, quiet=True, **options)
    ex = cam(x, target=classes)
    assert ex.maps.shape == (2, 3, 64, 64) and ex.targets.shape == (2, 3) and ex.scores.shape == (2, 3)
    np.testing.assert_array_equal(ex.targets, classes)
    for t in range(3):
        single = cam(x, target=classes[:, t])
        np.testing.assert_array_equal(ex.maps[:, t], single.maps)
        np.testing.assert_array_equal(ex.raw[:, t], single.raw)
        np.testing.assert_array_equal(ex.scores[:, t], single.scores)
    np.testing.assert_array_equal(ex.logits, single.logits)
    assert not ex.pixel_space and ex.heatmaps() is ex.maps


def test_a_list_of_target_functions_per_image_in_keras(three_frameworks):
    model, x = three_frameworks["tensorflow"]
    cam = gradcam.GradCAM(model, quiet=True)
    ex = cam(x, target=[ClassScore(3), EmbeddingSimilarity(np.ones(5))])
    assert ex.maps.shape == (2, 2, 64, 64) and (ex.targets == -1).all()
    np.testing.assert_array_equal(ex.maps[:, 0], cam(x, target=3).maps)


def test_segmentation_region_in_keras_equals_the_hand_written_tf_target():
    import keras_nets

    model = keras_nets.segmenter(seed=0)
    x = np.random.default_rng(5).random((2, 8, 8, 3), dtype=np.float32)
    mask = np.zeros((8, 8))
    mask[2:5, 2:5] = 1
    ex = gradcam.GradCAM(model, layer="relu", quiet=True)(x, target=SegmentationRegion(1, mask, channel_axis=-1))
    by_hand = gradcam.GradCAM(model, layer="relu", quiet=True)(x, target=keras_nets.region)
    np.testing.assert_allclose(ex.maps, by_hand.maps, atol=1e-6)
    np.testing.assert_allclose(ex.scores, by_hand.scores, rtol=1e-5)


def test_segmentation_region_in_jax_equals_the_hand_written_jax_target():
    import jax.numpy as jnp

    weights = np.random.default_rng(6).standard_normal((3, 2)).astype(np.float32)

    def features(x):
        return jnp.maximum(x - 0.3, 0.0)

    def head(a):  # a per-pixel linear classifier: (N, H, W, 3) -> (N, H, W, 2)
        return a @ weights

    x = np.random.default_rng(7).random((2, 6, 6, 3), dtype=np.float32)
    mask = np.zeros((2, 6, 6))
    mask[0, :3], mask[1, 3:] = 1, 1
    ex = gradcam.GradCAM((features, head), quiet=True)(x, target=SegmentationRegion(0, mask, channel_axis=-1))
    rows = jnp.asarray(mask)
    by_hand = gradcam.GradCAM((features, head), quiet=True)(x, target=lambda out: jnp.sum(out[..., 0] * rows,
                                                                                           axis=(1, 2)))
    np.testing.assert_allclose(ex.maps, by_hand.maps, atol=1e-6)
    np.testing.assert_allclose(ex.scores, by_hand.scores, rtol=1e-5)
    assert not np.allclose(ex.maps[0], ex.maps[1])  # the masks differ per image
