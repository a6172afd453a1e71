"""The upsampling modes (nearest, bicubic beside bilinear) and test-time augmentation smoothing: the rules by hand,
against Pillow (and JAX) where they promise its numbers, through a method, and the same in PyTorch, Keras and JAX.

Tolerances: Pillow resizes float (``"F"``) images with float64 weights and float32 output, so ``1e-6`` on values in
[0, 1]; ``MAPS_ATOL = 1e-5`` on normalized maps across frameworks (``test_cross_framework.py``).
"""
import numpy as np
import pytest
import torch
from backend_kits import embedded_net_everywhere
from PIL import Image
from torch import nn

from gradcam.explanation import Explanation
from gradcam.methods.augment import AugmentSmooth, transform_indices
from gradcam.methods.base import Method, combine_layers
from gradcam.methods.gradient import GradCAM
from gradcam.methods.guided import GuidedBackprop
from gradcam.reference import fast, postprocess

MAPS_ATOL = 1e-5

# --- the rules by hand and against Pillow ---------------------------------------------------------------------


def test_nearest_taps_by_hand():
    # output pixel i covers input position (i + 1/2) n_in / n_out
    np.testing.assert_array_equal(postprocess.nearest_taps(6, 3), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(postprocess.nearest_taps(5, 2), [0, 0, 1, 1, 1])  # 0.2 0.6 1.0 1.4 1.8


def test_cubic_kernel_by_hand():
    # a = -0.5: W(0) = 1, W(1) = W(2) = 0, W(1/2) = 9/16, W(3/2) = -1/16, W(1/4) = 111/128, W(5/4) = -9/128
    t = np.array([0.0, 1.0, 2.0, 0.5, 1.5, 0.25, 1.25, -0.5, 2.5])
    np.testing.assert_allclose(
        postprocess.cubic_kernel(t), [1, 0, 0, 9 / 16, -1 / 16, 111 / 128, -9 / 128, 9 / 16, 0], atol=1e-15
    )


def test_bicubic_enlarging_two_pixels_by_hand():
    # [0, 1] from 2 to 4 pixels: s = -1/4, 1/4, 3/4, 5/4; only the neighbours 0 and 1 lie in the image, their
    # weights divided by their sum. s = -1/4: W(1/4) = 111/128 on 0, W(5/4) = -9/128 on 1 -> -9/102 = -3/34 (an
    # overshoot); s = 1/4: W(1/4) on 0, W(3/4) = 29/128 on 1 -> 29/140; s = 3/4 -> 111/140; s = 5/4 -> 111/102
    index, weights = postprocess.bicubic_taps(4, 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-15)
    assert index.min() >= 0 and index.max() <= 1
    out = postprocess.resize(np.array([[[0.0, 1.0]]]), (1, 4), "bicubic")
    np.testing.assert_allclose(out[0, 0], [-3 / 34, 29 / 140, 111 / 140, 37 / 34], rtol=1e-6)


@pytest.mark.parametrize("mode, pillow", [("nearest", Image.NEAREST), ("bicubic", Image.BICUBIC),
                                          ("bilinear", Image.BILINEAR)])
@pytest.mark.parametrize("size_in, size_out", [((7, 5), (30, 23)), ((7, 7), (64, 64)), ((2, 3), (9, 4))])
def test_modes_equal_pillow(mode, pillow, size_in, size_out):
    m = np.random.default_rng(0).random((1, *size_in))
    pil = Image.fromarray(m[0].astype(np.float32), mode="F").resize(size_out[::-1], pillow)
    np.testing.assert_allclose(postprocess.resize(m, size_out, mode)[0], np.asarray(pil), atol=1e-6)


def test_modes_equal_jax_image_resize():
    jax = pytest.importorskip("jax")
    m = np.random.default_rng(1).random((7, 5)).astype(np.float32)
    for mode, theirs in [("nearest", "nearest"), ("bicubic", "cubic")]:
        ours = postprocess.resize(m[None], (30, 23), mode)[0]
        np.testing.assert_allclose(ours, np.asarray(jax.image.resize(m, (30, 23), theirs)), atol=1e-6)


def test_bilinear_mode_is_the_old_upsample_and_unknown_modes_are_refused():
    m = np.random.default_rng(2).random((2, 4, 3))
    np.testing.assert_array_equal(postprocess.resize(m, (9, 8)), postprocess.upsample(m, (9, 8)))
    with pytest.raises(ValueError, match="bilinear, nearest, bicubic"):
        postprocess.resize(m, (9, 8), "area")


def test_combine_layers_in_each_mode():
    raws = [np.random.default_rng(3).random((2, 4, 4)).astype(np.float32), np.zeros((2, 2, 2), np.float32)]
    raws[1][:, 0, 0] = 1.0
    for mode in ("nearest", "bicubic"):
        each = [postprocess.normalize(postprocess.resize(r, (8, 8), mode)) for r in raws]
        np.testing.assert_allclose(combine_layers(raws, (8, 8), mode), fast.normalize(np.mean(each, axis=0)),
                                   atol=1e-6)
    np.testing.assert_array_equal(combine_layers(raws[1:], (8, 8), "nearest")[0, :4, :4], 1.0)  # one block
    np.testing.assert_array_equal(combine_layers(raws[1:], (8, 8), "nearest")[0, 4:, :], 0.0)


# --- the option on a method -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_frameworks():
    return embedded_net_everywhere(weights_seed=3, input_seed=1)


def test_a_method_upsamples_by_its_mode(three_frameworks):
    model, x = three_frameworks["torch"]
    default = GradCAM(model, "features")(x, target=1)
    np.testing.assert_array_equal(GradCAM(model, "features", upsample="bilinear")(x, target=1).maps, default.maps)
    for mode in ("nearest", "bicubic"):
        ex = GradCAM(model, "features", upsample=mode)(x, target=1)
        np.testing.assert_array_equal(ex.raw, default.raw)
        expected = postprocess.normalize(postprocess.resize(ex.raw, (64, 64), mode))
        np.testing.assert_allclose(ex.maps, expected, atol=1e-6)
        assert np.abs(ex.maps - default.maps).max() > 0.05  # the mode changes the picture
    nearest = GradCAM(model, "features", upsample="nearest")(x, target=1).maps
    blocks = nearest.reshape(2, 16, 4, 16, 4)  # a 16 x 16 layer: every cell a constant 4 x 4 block
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
    with pytest.raises(ValueError, match="upsample must be one of bilinear, nearest, bicubic, got 'cubic'"):
        GradCAM(model, "features", upsample="cubic")


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_modes_agree_across_frameworks(three_frameworks, mode):
    results = {name: GradCAM(model, "features", upsample=mode)(x, target=[0, 2])
               for name, (model, x) in three_frameworks.items()}
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps, results["torch"].maps, atol=MAPS_ATOL, err_msg=name)


# --- test-time augmentation -------------------------------------------------------------------------------------


def test_transform_indices_by_hand():
    forward, back = transform_indices(4, 1, flip=False)
    np.testing.assert_array_equal(forward, [0, 0, 1, 2])  # content one pixel right, the edge repeated
    np.testing.assert_array_equal(back, [1, 2, 3, 3])
    forward, back = transform_indices(4, 1, flip=True)
    np.testing.assert_array_equal(forward, [2, 1, 0, 0])
    np.testing.assert_array_equal(back, [2, 1, 0, 0])
    row = np.array([10.0, 11.0, 12.0, 13.0])
    for shift in (-2, 0, 1):
        for flip in (False, True):
            forward, back = transform_indices(4, shift, flip)
            kept = np.clip(np.arange(4) + shift, 0, 3) == np.arange(4) + shift  # not shifted out of the copy
            np.testing.assert_array_equal(row[forward][back][kept], row[kept])


class Echo(Method):
    """A "method" whose map is the image's first channel (or ``fixed``): what augmentation does to a map, by hand."""

    name = "echo"

    def __init__(self, fixed=None, **options):
        super().__init__(nn.Identity(), **options)
        self.fixed = fixed

    def __call__(self, x, target=None):
        images = self.backend.to_numpy(x)
        maps = images[:, 0].copy() if self.fixed is None else np.broadcast_to(self.fixed, images[:, 0].shape).copy()
        n = len(images)
        return Explanation(maps=maps, targets=np.full(n, 7), scores=np.zeros(n, np.float32), method=self.name)


def test_shifts_are_mapped_back_and_averaged_by_hand():
    # one row [0, 1/3, 2/3, 1]; copies shifted one pixel right and left, edges repeated, and shifted back:
    # [0, 1/3, 2/3, 2/3] and [1/3, 1/3, 2/3, 1]; with the row itself their mean is [1/9, 1/3, 2/3, 8/9],
    # normalized [0, 2/7, 5/7, 1]
    x = np.array([0, 1 / 3, 2 / 3, 1], np.float32).reshape(1, 1, 1, 4)
    ex = AugmentSmooth(Echo(), flip=False, shifts=[(0, 1), (0, -1)])(x)
    np.testing.assert_allclose(ex.maps[0, 0], [0, 2 / 7, 5 / 7, 1], rtol=1e-6, atol=1e-7)
    assert ex.method == "echo+aug" and ex.targets.tolist() == [7]


def test_flips_are_mapped_back_by_hand():
    # a map that marks the left column whatever the image: the mirrored copy's mark, mirrored back, lands on the
    # right column, so the mean marks both with 1/2 (normalized: 1)
    left = np.array([[1.0, 0.0, 0.0]], np.float32)
    ex = AugmentSmooth(Echo(fixed=left), flip=True, shifts=[])(np.zeros((2, 1, 1, 3), np.float32))
    np.testing.assert_array_equal(ex.maps, np.broadcast_to([[1.0, 0.0, 1.0]], (2, 1, 3)))


def test_no_augmentation_is_the_method_itself(three_frameworks):
    model, x = three_frameworks["torch"]
    plain = GradCAM(model, "features")(x, target=1)
    same = AugmentSmooth(GradCAM(model, "features"), flip=False, shifts=[])(x, target=1)
    np.testing.assert_array_equal(same.maps, plain.maps)
    smoothed = AugmentSmooth(GradCAM(model, "features"))(x, target=1)
    assert 0.01 < np.abs(smoothed.maps - plain.maps).max() and smoothed.maps.max() == 1.0
    np.testing.assert_array_equal(smoothed.raw, plain.raw)


def test_augmentation_refuses_what_it_cannot_map_back(three_frameworks):
    model, x = three_frameworks["torch"]
    with pytest.raises(ValueError, match="smaller than the image"):
        AugmentSmooth(GradCAM(model, "features"), shifts=[(64, 0)])(x)
    with pytest.raises(ValueError, match="wraps a gradcam method"):
        AugmentSmooth(lambda x, target=None: None)


@pytest.mark.parametrize("build", [lambda m: GradCAM(m, "features"), lambda m: GuidedBackprop(m)],
                         ids=["gradcam", "guided-backprop"])
def test_augmentation_agrees_across_frameworks(three_frameworks, build):
    results = {name: AugmentSmooth(build(model), shifts=[(0, 0), (3, -2)])(x, target=[1, 3])
               for name, (model, x) in three_frameworks.items()}
    ours = results["torch"].maps
    assert ours.shape[0] == 2 and np.abs(ours).max() > 0
    scale = np.abs(ours).max() if ours.ndim == 4 else 1.0  # input gradients compared relative to their size
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(results[name].maps / scale, ours / scale, atol=MAPS_ATOL, err_msg=name)


def test_augmentation_in_the_channels_last_layout(three_frameworks):
    torch_model, x_nchw = three_frameworks["torch"]
    keras_model, x_nhwc = three_frameworks["tensorflow"]
    aug = {"shifts": [(2, 5)], "flip": True}
    ours = AugmentSmooth(GradCAM(torch_model, "features"), **aug)(torch.from_numpy(x_nchw), target=0)
    theirs = AugmentSmooth(GradCAM(keras_model, "features"), **aug)(x_nhwc, target=0)
    np.testing.assert_allclose(theirs.maps, ours.maps, atol=MAPS_ATOL)
