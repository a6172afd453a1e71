"""The formulas exactly as the documents define them (issue 20): CAM without ReLU, Grad-CAM++'s assumption and its
rule where ``2 + S_k G`` vanishes or changes sign, seed 001's ``sum A G^3`` variant by name, and the claims of the
walkthrough about score scaling, checked by computation."""
import warnings

import numpy as np
import pytest

from gradcam import reference as ref
from gradcam.reference import cams

torch = pytest.importorskip("torch")
gradcam = pytest.importorskip("gradcam")
from gradcam.explanation import DegenerateMapWarning, SingularWeightWarning

# the walkthrough's section 1 layer and section 5 head (a 1x1 convolution, ReLU, GAP, dense)
A1 = [[1, 0, 2], [3, 5, 0], [1, 1, 1]]
A2 = [[0, 1, 0], [3, 1, 0], [1, 0, 1]]
A_DOC = np.array([[A1, A2]], dtype=np.float64)
M = np.array([[1.0, -1.0], [-0.5, 1.0], [0.5, 0.5]])
BIAS = np.array([0.25, -0.75, -1.25])
V = np.array([0.5, 1.0, -0.25])


def doc_gradient(A):
    is_open = (np.einsum("mk,nkij->nmij", M, A) + BIAS[:, None, None] > 0).astype(np.float64)
    return np.einsum("m,mk,nmij->nkij", V, M, is_open) / (A.shape[2] * A.shape[3])


# --- CAM: L = sum_k W_ck A_k, and Grad-CAM = ReLU(CAM) / Z ------------------------------------------------------


def test_cam_is_signed_and_grad_cam_is_its_relu_over_z():
    rng = np.random.default_rng(0)
    A = rng.integers(0, 5, size=(1, 4, 3, 5)).astype(np.float64)
    W_fc = rng.integers(-3, 4, size=(3, 4)).astype(np.float64)
    Z, c = 15, 2
    G = np.broadcast_to((W_fc[[c]] / Z)[:, :, None, None], A.shape)
    cam = ref.cam(A, W_fc, [c])
    np.testing.assert_allclose(cam[0], np.einsum("k,kij->ij", W_fc[c], A[0]), rtol=1e-6)
    np.testing.assert_allclose(ref.relu(cam) / Z, ref.grad_cam(A, G), rtol=1e-6, atol=1e-7)
    # the normalized maps differ where CAM is negative: the walkthrough's section 4 shows by how much
    assert np.abs(ref.normalize(cam) - ref.normalize(ref.grad_cam(A, G))).max() > 0.1


class GapHead(torch.nn.Module):
    """``features`` (the identity on the input), global average pooling, one dense layer."""

    def __init__(self, weight):
        super().__init__()
        self.features = torch.nn.Identity()
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(torch.as_tensor(weight))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_cam_method_keeps_the_sign_and_names_a_map_negative_everywhere():
    model = GapHead(np.array([[1.0, -2.0], [-1.0, -1.0]], np.float32)).eval()
    x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.5, 0.0], [1.0, 0.0]]]])
    ex = gradcam.CAM(model, layer="features", fc_layer="fc", quiet=True)(x, target=0)
    np.testing.assert_allclose(ex.raw[0], [[0.0, 2.0], [-2.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(ex.maps[0, [0, 0, -1], [0, -1, 0]], [0.5, 1.0, 0.0], atol=1e-6)  # 0 shows at 1/2
    assert not ex.warnings
    with pytest.warns(DegenerateMapWarning, match="negative or zero at every position"):
        negative = gradcam.CAM(model, layer="features", fc_layer="fc")(x, target=1)
    assert negative.raw.max() <= 0 and len(negative.warnings) == 1


# --- Grad-CAM++: the assumption A >= 0, the rule at the pole, the seed variant ---------------------------------


def test_grad_cam_pp_position_weights_lie_in_zero_to_one_half_when_activations_are_non_negative():
    rng = np.random.default_rng(1)
    A = rng.random((3, 5, 4, 4)) * 10
    G = rng.normal(size=A.shape) * 10.0 ** rng.integers(-4, 2, size=(3, 5, 1, 1))
    a = 1 / (2 + A.sum(axis=(2, 3), keepdims=True) * G)
    assert (a[G > 0] > 0).all() and (a[G > 0] <= 0.5).all()
    assert not cams.grad_cam_pp_singular(A, G).any()


def one_channel(S_over_four, g):
    """A 2x2 channel whose activations sum to ``4 * S_over_four`` and whose gradient is ``g`` everywhere."""
    return np.full((1, 1, 2, 2), float(S_over_four)), np.full((1, 1, 2, 2), float(g))


def test_grad_cam_pp_near_the_pole_keeps_the_formula_and_past_it_uses_zero():
    # S_k = -4: the pole is G = -2 / S_k = 0.5
    A, G = one_channel(-1.0, 0.5 - 1e-6)
    weight = ref.grad_cam_pp_weights(A, G)[0, 0]
    assert weight == pytest.approx(4 * (0.5 - 1e-6) / (2 - 4 * (0.5 - 1e-6)), rel=1e-6)
    assert 499_000 < weight < 500_000
    assert cams.grad_cam_pp_singular(A, G).all()
    A, G = one_channel(-1.0, 0.5 + 1e-6)  # 2 + S_k G < 0: the sign changed
    assert ref.grad_cam_pp_weights(A, G)[0, 0] == 0.0 and cams.grad_cam_pp_singular(A, G).all()
    A, G = one_channel(-1.0, 0.5)  # exactly at the pole
    assert ref.grad_cam_pp_weights(A, G)[0, 0] == 0.0
    A, G = one_channel(-1.0, 0.2)  # 2 + S_k G = 1.2: a = 0.83, inside [0, 1], no warning
    assert ref.grad_cam_pp_weights(A, G)[0, 0] == pytest.approx(4 * 0.2 / 1.2, rel=1e-6)
    assert not cams.grad_cam_pp_singular(A, G).any()


def test_seed_variant_by_name_on_the_walkthrough_data():
    G = doc_gradient(A_DOC)
    np.testing.assert_allclose(ref.grad_cam_pp_weights(A_DOC, G), [[0.1361, 0.0582]], atol=5e-5)
    np.testing.assert_allclose(ref.grad_cam_pp_weights(A_DOC, G, variant="seed"), [[0.1511, 0.0701]], atol=5e-5)
    G2, G3 = G**2, G**3
    seed = G2 / (2 * G2 + (A_DOC * G3).sum(axis=(2, 3), keepdims=True))  # seed 001's line, verbatim in NumPy
    np.testing.assert_allclose(
        ref.grad_cam_pp_weights(A_DOC, G, variant="seed"), (seed * np.maximum(G, 0)).sum(axis=(2, 3)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="variants are paper, seed"):
        ref.grad_cam_pp_weights(A_DOC, G, variant="pytorch")


def test_smooth_grad_cam_pp_follows_the_same_rule():
    A, G = one_channel(-1.0, 0.5 + 1e-6)
    assert ref.smooth_grad_cam_pp_weights(A, G[None], np.zeros((1, 1)))[0, 0] == 0.0
    assert cams.smooth_grad_cam_pp_singular(A, G[None], np.zeros((1, 1))).all()
    A, G = one_channel(1.0, 0.5)
    assert not cams.smooth_grad_cam_pp_singular(A, G[None], np.zeros((1, 1))).any()


class ChannelSums(torch.nn.Module):
    """``y = sum_k c_k sum_ij A_kij`` on ``features`` (the identity on the input): ``G_k = c_k`` everywhere."""

    def __init__(self, c):
        super().__init__()
        self.features = torch.nn.Identity()
        self.c = torch.tensor(c)

    def forward(self, x):
        return (self.c * self.features(x).sum(dim=(2, 3))).sum(1, keepdim=True)


def test_grad_cam_pp_method_warns_and_applies_the_rule_on_negative_activations():
    model = ChannelSums([0.5 - 1e-3, 0.5 + 1e-3, 0.25]).eval()
    x = torch.ones(1, 3, 2, 2)
    x[:, :2] = -1.0  # two channels whose activations sum to S_k = -4: the pole is G = 0.5
    with pytest.warns(SingularWeightWarning, match="eq. 19 excludes"):
        ex = gradcam.GradCAMPlusPlus(model, layer="features")(x, target=0)
    A, G = x.numpy().astype(np.float64), np.broadcast_to(model.c.numpy()[None, :, None, None], x.shape)
    np.testing.assert_allclose(ex.weights, ref.grad_cam_pp_weights(A, G), rtol=1e-5)
    assert ex.weights[0, 0] > 100 and ex.weights[0, 1] == 0.0  # near the pole, and past it
    assert sum(w.category is SingularWeightWarning for w in ex.warnings) == 1
    seed = gradcam.GradCAMPlusPlus(model, layer="features", variant="seed", quiet=True)(x, target=0)
    np.testing.assert_allclose(seed.weights, ref.grad_cam_pp_weights(A, G, variant="seed"), rtol=1e-5)
    assert seed.method == "gradcam++ (seed variant)"
    with pytest.raises(ValueError, match="variants are paper, seed"):
        gradcam.GradCAMPlusPlus(model, layer="features", variant="torchcam")


def test_grad_cam_pp_method_is_silent_after_a_relu():
    model = ChannelSums([0.5, -0.5, 0.25]).eval()
    x = torch.rand(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularWeightWarning)
        ex = gradcam.GradCAMPlusPlus(model, layer="features")(x, target=0)
    assert not [w for w in ex.warnings if w.category is SingularWeightWarning]


# --- score scaling: Grad-CAM's normalized map does not move, Grad-CAM++'s does -----------------------------------


def test_scaling_the_score_moves_grad_cam_pp_but_not_grad_cam():
    G = doc_gradient(A_DOC)
    base_pp, base = ref.normalize(ref.grad_cam_pp(A_DOC, G)), ref.normalize(ref.grad_cam(A_DOC, G))
    moves = []
    for factor in (10.0, 100.0):
        np.testing.assert_allclose(ref.normalize(ref.grad_cam(A_DOC, factor * G)), base, atol=1e-6)
        moves.append(np.abs(ref.normalize(ref.grad_cam_pp(A_DOC, factor * G)) - base_pp).max())
    assert 0.01 < moves[0] < moves[1]
