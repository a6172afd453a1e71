"""Eigen-CAM's sign rule and its centred form: hand-worked projections, the sign independent of the SVD's, never
an all-zero map while the first component carries signal (issue 14: all-zero maps on MobileNetV3, ViT and
ConvNeXt, whose channel means are about 0), and pytorch-grad-cam's centred projection."""
import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from gradcam import reference as ref


def as_A(O: np.ndarray, h: int, w: int) -> np.ndarray:
    """``O`` (positions x channels, positions row by row) as one image's activations ``(1, K, h, w)``."""
    return np.asarray(O, np.float64).T.reshape(1, -1, h, w)


def test_the_pole_with_more_energy_is_positive_when_the_channel_mean_is_zero():
    # every position's channels sum to 0 (as after LayerNorm): O^T O = [[5, -5], [-5, 5]], v1 = +-(1, -1)/sqrt(2),
    # p = +-(4, 0, -2, 0)/sqrt(2); the pole (4, 0) carries 16 of the 20 units of energy
    A = as_A([[2, -2], [0, 0], [-1, 1], [0, 0]], 2, 2)
    expected = np.float32([[[2 * np.sqrt(2), 0], [0, 0]]])
    np.testing.assert_allclose(ref.eigen_cam(A), expected, rtol=1e-6)
    np.testing.assert_allclose(ref.eigen_cam(-A), expected, rtol=1e-6)


def test_a_one_signed_component_is_never_all_zero_whatever_the_channel_mean():
    # rank one, O = s d^T with d = (3, -4): p = +-5 s has one sign; the channel mean -s/2 points the other way,
    # which made the old rule (agree with the channel mean) return ReLU(-5 s) = 0 everywhere
    s = np.array([1.0, 2.0, 0.5, 3.0])
    A = as_A(np.outer(s, [3.0, -4.0]), 2, 2)
    np.testing.assert_allclose(ref.eigen_cam(A)[0], 5 * s.reshape(2, 2), rtol=1e-6)
    np.testing.assert_allclose(ref.eigen_cam(-A)[0], 5 * s.reshape(2, 2), rtol=1e-6)


def test_a_tie_of_energies_goes_to_the_largest_entry_then_the_first():
    # one channel, p = +-(1, -1, 0): equal energies; the first entry of largest |p| is made positive
    np.testing.assert_allclose(ref.eigen_cam(as_A([[1], [-1], [0]], 1, 3)), [[[1, 0, 0]]], rtol=1e-6)
    np.testing.assert_allclose(ref.eigen_cam(as_A([[-1], [1], [0]], 1, 3)), [[[1, 0, 0]]], rtol=1e-6)
    # p = +-(1, -2, 1): no tie, the pole -2 carries 4 units of energy against 2, though two entries are positive
    np.testing.assert_allclose(ref.eigen_cam(as_A([[1], [-2], [1]], 1, 3)), [[[0, 2, 0]]], rtol=1e-6)


def test_the_map_does_not_depend_on_the_sign_the_svd_returns():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 8, 5, 4))
    A -= A.mean(axis=1, keepdims=True)  # channel mean 0 everywhere: the old rule's coin toss
    maps = ref.eigen_cam(A)
    np.testing.assert_array_equal(maps, ref.eigen_cam(-A))
    assert (maps.reshape(6, -1).max(axis=1) > 0).all()


def test_only_all_zero_activations_give_an_all_zero_map():
    A = np.zeros((2, 3, 2, 2))
    A[1, 0, 0, 1] = -0.5
    maps = ref.eigen_cam(A)
    np.testing.assert_array_equal(maps[0], np.zeros((2, 2), np.float32))
    np.testing.assert_allclose(maps[1], [[0, 0.5], [0, 0]], rtol=1e-6)


def test_the_centred_form_subtracts_each_channels_mean_first():
    # channel means (2, 1): centred O = [[1, 0], [-1, 0], [0, 0]], v1 = (+-1, 0), p = +-(1, -1, 0), a tie
    A = as_A([[3, 1], [1, 1], [2, 1]], 1, 3)
    np.testing.assert_allclose(ref.eigen_cam(A, centred=True), [[[1, 0, 0]]], rtol=1e-6)
    # uncentred, the same O has v1 close to (0.93, 0.37) and a positive projection everywhere
    O = np.array([[3, 1], [1, 1], [2, 1]], np.float64)
    v1 = np.linalg.svd(O)[2][0]
    np.testing.assert_allclose(ref.eigen_cam(A), np.abs(O @ v1).reshape(1, 1, 3), rtol=1e-6)


# pytorch-grad-cam 1.5.7's get_2d_projection (its EigenCAM's map before the ReLU) on PEER_A, printed in
# .venv-bench: it centres, and keeps the sign LAPACK returned (here the pole with less energy is positive)
PEER_A = np.array([[[[3, 1, 0], [2, 5, 1]], [[1, 2, 2], [0, 1, 3]], [[2, 0, 1], [1, 1, 4]]]], np.float32)
PEER_PROJECTION = np.float32([[[-0.95504415, 0.70265687, 1.8344604], [-0.73165834, -2.9662638, 2.115849]]])


def test_the_centred_form_is_pytorch_grad_cams_projection_up_to_its_sign():
    ours = ref.eigen_cam(PEER_A, centred=True)
    np.testing.assert_allclose(ours, np.maximum(-PEER_PROJECTION, 0), rtol=1e-5, atol=1e-6)


class LayerNormNet(nn.Module):
    """conv -> LayerNorm over the channels at each position (ConvNeXt's, channels last) -> hard-swish -> head.

    The LayerNorm's bias (what a trained one learns; zero at initialization) is shared by every position, so it is
    the activations' first component, and its mean, -0.01, is nearly all of the channel mean: the case where the
    old rule, agree with the channel mean, turned the component away and returned all-zero maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        with torch.no_grad():
            bias = 3 * torch.randn(16)
            self.norm.bias.copy_(bias - bias.mean() - 0.01)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        a = self.act(self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", ["norm", "act"])
def test_no_image_gets_an_all_zero_map_on_a_layer_normed_net(layer):
    torch.manual_seed(0)
    model = LayerNormNet().eval()
    x = torch.randn(16, 3, 8, 8)
    # the layer is channels-last (N, h, w, K); the reshape lays it out as (N, K, h, w)
    ex = gradcam.EigenCAM(model, layer, reshape=lambda a: a.transpose(0, 3, 1, 2))(x)
    assert (ex.raw.reshape(16, -1).max(axis=1) > 0).all()  # the old rule: 16 all-zero maps at "norm"
    assert (ex.maps.reshape(16, -1).max(axis=1) == 1).all()


def test_the_method_passes_centred_on():
    torch.manual_seed(0)
    model = LayerNormNet().eval()
    x = torch.randn(2, 3, 6, 6)
    to_nchw = lambda a: a.transpose(0, 3, 1, 2)  # noqa: E731
    captured = {}
    handle = model.norm.register_forward_hook(lambda m, i, o: captured.setdefault("A", o.detach()))
    model(x)
    handle.remove()
    A = to_nchw(captured["A"].numpy())
    for centred in (False, True):
        ex = gradcam.EigenCAM(model, "norm", reshape=to_nchw, centred=centred)(x)
        np.testing.assert_allclose(ex.raw, ref.eigen_cam(A, centred=centred), rtol=1e-5, atol=1e-6)
