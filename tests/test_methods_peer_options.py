"""The options that reproduce a peer library's numbers (README, "Coming from pytorch-grad-cam, captum, torchcam
or tf-keras-vis"): hand-worked weights on a model whose layer outputs its input ``A`` and whose head is
``y = sum_kij W_kij A_kij``, so that ``G = W`` exactly."""
import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from gradcam import reference as ref


class LinearHead(nn.Module):
    """``features`` is the identity (its output is the input ``A``); ``y_c = sum_kij W_ckij A_kij``."""

    def __init__(self, W: np.ndarray):
        super().__init__()
        self.features = nn.Identity()
        self.W = torch.as_tensor(np.asarray(W, np.float32))

    def forward(self, x):
        return torch.einsum("ckij,nkij->nc", self.W, self.features(x))


def weights_of(method, A, W, **options):
    model = LinearHead(np.asarray(W)[None])
    ex = method(model, "features", quiet=True, **options)(torch.as_tensor(np.float32(A)), target=0)  # 1-channel maps
    return ex.weights[0]


def test_grad_cam_pp_with_pytorch_grad_cams_epsilon():
    # one channel, A = (2, 2): S = 4; G = (1e-3, 2e-3)
    A, W = [[[[2.0, 2.0]]]], [[[1e-3, 2e-3]]]
    # the paper: a = 1 / (2 + S G) = (1/2.004, 1/2.008); w = sum a G
    np.testing.assert_allclose(weights_of(gradcam.GradCAMPlusPlus, A, W), [1e-3 / 2.004 + 2e-3 / 2.008], rtol=1e-5)
    # eps = 1e-6: a = G^2 / (2 G^2 + S G^3 + eps) = (1e-6 / 3.004e-6, 4e-6 / 9.032e-6), a drop of 18 %
    expected = 1e-6 / 3.004e-6 * 1e-3 + 4e-6 / 9.032e-6 * 2e-3
    np.testing.assert_allclose(weights_of(gradcam.GradCAMPlusPlus, A, W, eps=1e-6), [expected], rtol=1e-5)
    assert expected == pytest.approx(1.218629e-3, rel=1e-6)


def test_grad_cam_pp_epsilon_leaves_zero_gradients_at_zero():
    # G = (0, 1e-3): where G = 0 the peer sets a = 0, as the paper's form does
    A, W = [[[[1.0, 3.0]]]], [[[0.0, 1e-3]]]
    expected = 1e-6 / (2e-6 + 4 * 1e-9 + 1e-6) * 1e-3
    np.testing.assert_allclose(weights_of(gradcam.GradCAMPlusPlus, A, W, eps=1e-6), [expected], rtol=1e-5)


def test_xgrad_cam_with_pytorch_grad_cams_epsilon():
    # A = (1, -1) sums to 0: the paper's share A / sum A is undefined, and the channel weighs 0;
    # the peer divides by 0 + 1e-7: (1 * 2 - 1 * 4) / 1e-7 = -2e7
    A, W = [[[[1.0, -1.0]]]], [[[2.0, 4.0]]]
    np.testing.assert_array_equal(weights_of(gradcam.XGradCAM, A, W), [0.0])
    np.testing.assert_allclose(weights_of(gradcam.XGradCAM, A, W, eps=1e-7), [-2e7], rtol=1e-5)
    # away from 0 the epsilon hardly matters: 14 / 4
    A, W = [[[[1.0, 3.0]]]], [[[2.0, 4.0]]]
    np.testing.assert_allclose(weights_of(gradcam.XGradCAM, A, W, eps=1e-7), [3.5], rtol=1e-6)


@pytest.mark.parametrize("cls", [gradcam.GradCAMPlusPlus, gradcam.XGradCAM])
@pytest.mark.parametrize("eps", [-1e-6, float("nan")])
def test_a_bad_epsilon_is_refused(cls, eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        cls(LinearHead(np.zeros((1, 1, 1, 2))), "features", eps=eps)


def test_score_cam_weighted_over_the_channels():
    rng = np.random.default_rng(0)
    A = rng.random((1, 3, 4, 4)).astype(np.float32)
    A[0, 2] = 0.5  # a flat channel: the peer masks with 0 and keeps it in the softmax
    W = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    model = LinearHead(W)
    masks = ref.normalize(A[0])  # the layer is the input: no upsampling; the flat mask is 0
    with torch.no_grad():
        raw = model(torch.as_tensor(A * masks[:, None])).numpy()  # (K, classes): row k is f(x * M_k)
    target = int(model(torch.as_tensor(A)).argmax())
    ex = gradcam.ScoreCAM(model, "features", weighting="channels")(torch.as_tensor(A), target=target)
    expected = ref.softmax(raw[:, target])
    np.testing.assert_allclose(ex.weights[0], expected, rtol=1e-5)
    np.testing.assert_allclose(ex.raw, ref.weighted_map(A, expected[None]), rtol=1e-5)
    # the authors' weighting: a softmax over the classes, a flat channel weighs 0
    ex = gradcam.ScoreCAM(model, "features")(torch.as_tensor(A), target=target)
    np.testing.assert_allclose(ex.weights[0, :2], ref.softmax(raw[:2])[:, target], rtol=1e-5)
    assert ex.weights[0, 2] == 0


def test_score_cam_refuses_an_unknown_weighting():
    with pytest.raises(ValueError, match="weighting must be one of classes, channels"):
        gradcam.ScoreCAM(LinearHead(np.zeros((1, 1, 1, 2))), "features", weighting="softmax")
