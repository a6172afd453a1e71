"""The rest of the family (issue 16): Eigen-Grad-CAM, KPCA-CAM, FEM, Finer-CAM, ``eigen_smooth`` and CAM's dense
layer found without ``fc_layer``. Hand-worked values on tiny ``A`` and ``G``; the classes through PyTorch on models
whose gradients are known in closed form; the same network in PyTorch, Keras and Flax giving the same maps.

Tolerances: the reference computes in float64 and returns float32, so hand-worked values hold to ``rtol=1e-6``;
maps through a backend (float32 activations) to ``1e-5``; across frameworks the normalised maps to ``MAPS_ATOL``
(``test_cross_framework.py`` gives the reason).
"""
import importlib

import numpy as np
import pytest
import torch
from seeds import SEED_A
from torch import nn

import gradcam
from gradcam import reference as ref
from gradcam.methods.family import FEM, KPCACAM, EigenGradCAM, FinerCAM
from gradcam.models import random_weights
from gradcam.reference import family

MAPS_ATOL = 1e-5


def as_A(O, h: int, w: int) -> np.ndarray:
    """``O`` (positions x channels, positions row by row) as one image's activations ``(1, K, h, w)``."""
    return np.asarray(O, np.float64).T.reshape(1, -1, h, w)


# --- Eigen-Grad-CAM ---------------------------------------------------------------------------------------------

# A * G = s (3, 4)^T with s = (1, 2, 0.5): rank one, v_1 = (3, 4)/5, p = O v_1 = 5 s
EG_A = as_A([[1, 2], [3, 4], [0.5, 1]], 1, 3)
EG_G = as_A([[3, 2], [2, 2], [3, 2]], 1, 3)


def test_eigen_grad_cam_is_the_first_component_of_activations_times_gradients():
    np.testing.assert_allclose(family.eigen_grad_cam(EG_A, EG_G), [[[5, 10, 2.5]]], rtol=1e-6)
    # the gradient matters: Eigen-CAM of A alone is another map
    assert not np.allclose(ref.eigen_cam(EG_A), [[[5, 10, 2.5]]], rtol=1e-2)
    # the sign of the SVD's vector does not: -G gives the product -O and the same map (Eigen-CAM's rule)
    np.testing.assert_allclose(family.eigen_grad_cam(EG_A, -EG_G), [[[5, 10, 2.5]]], rtol=1e-6)


def test_eigen_grad_cam_centred_subtracts_the_channel_means_first():
    # s - mean(s) = (-1/6, 5/6, -2/3): p = +-5 (-1/6, 5/6, -2/3); the pole 5/6 carries 25 of the 42 units of energy
    np.testing.assert_allclose(family.eigen_grad_cam(EG_A, EG_G, centred=True), [[[0, 25 / 6, 0]]], rtol=1e-6)


def test_eigen_grad_cam_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        family.eigen_grad_cam(EG_A, EG_G[:, :1])


# --- eigen_smooth -----------------------------------------------------------------------------------------------

S = SEED_A[0].astype(np.float64)  # one 3x3 pattern, >= 0
A_RANK_ONE = np.stack([S, 2 * S])[None]  # A_2 = 2 A_1: w_k A_k = s (w_1, 2 w_2)


def test_eigen_smooth_of_a_rank_one_layer_is_the_pattern_times_the_weights_norm():
    # w = (1/3, 2/3): O = s (1/3, 4/3), p = |(1/3, 4/3)| s = sqrt(17)/3 s, and the plain sum 5/3 s agrees with it
    smoothed = family.eigen_smooth_map(A_RANK_ONE, [[1 / 3, 2 / 3]])
    np.testing.assert_allclose(smoothed[0], np.sqrt(17) / 3 * S, rtol=1e-6)


def test_eigen_smooth_keeps_the_sign_of_the_plain_sum():
    # w = (1/3, -2/3): O = s (1/3, -4/3), the sum -s is evidence against the class everywhere, Grad-CAM's map is 0;
    # the component points the same way, so the smoothed map is 0 too, where Eigen-CAM's energy rule says +|p|
    weights = np.array([[1 / 3, -2 / 3]])
    np.testing.assert_array_equal(ref.weighted_map(A_RANK_ONE, weights), np.zeros((1, 3, 3), np.float32))
    np.testing.assert_array_equal(family.eigen_smooth_map(A_RANK_ONE, weights), np.zeros((1, 3, 3), np.float32))
    np.testing.assert_allclose(ref.eigen_cam(weights[:, :, None, None] * A_RANK_ONE)[0], np.sqrt(17) / 3 * S,
                               rtol=1e-6)


def test_eigen_smooth_centred_is_the_centred_projection():
    rng = np.random.default_rng(0)
    A, weights = rng.random((2, 5, 4, 3)), rng.standard_normal((2, 5))
    smoothed = family.eigen_smooth_map(A, weights, centred=True)
    for n in range(2):
        O = (weights[n, :, None, None] * A[n]).reshape(5, 12).T
        X = O - O.mean(axis=0)
        p = X @ np.linalg.svd(X)[2][0]
        p = p if p @ O.sum(axis=1) > 0 else -p
        np.testing.assert_allclose(smoothed[n].ravel(), np.maximum(p, 0), rtol=1e-6, atol=1e-12)


class MeanHead(nn.Module):
    """Identity ``features`` (its output is the input ``A``), then ``y = W mean_ij A + b``: ``G_c = W_c / Z``."""

    def __init__(self, W, b=None):
        super().__init__()
        W = torch.tensor(np.asarray(W, np.float32))
        self.features = nn.Identity()
        self.fc = nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
        with torch.no_grad():
            self.fc.weight.copy_(W)
            if b is not None:
                self.fc.bias.copy_(torch.tensor(np.asarray(b, np.float32)))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", [gradcam.GradCAM, gradcam.GradCAMPlusPlus, gradcam.XGradCAM])
def test_every_channel_weight_method_takes_eigen_smooth(method):
    x = np.random.default_rng(2).random((2, 4, 5, 5)).astype(np.float32)
    model = MeanHead(np.random.default_rng(3).standard_normal((3, 4)))
    plain = method(model, "features")(x, [0, 2])
    for eigen_smooth in (True, "centred"):
        smoothed = method(model, "features", eigen_smooth=eigen_smooth, quiet=True)(x, [0, 2])
        np.testing.assert_array_equal(smoothed.weights, plain.weights)  # the weights are the method's
        expected = family.eigen_smooth_map(x, plain.weights, centred=eigen_smooth == "centred")
        np.testing.assert_allclose(smoothed.raw, expected, rtol=1e-5, atol=1e-7)
        assert np.abs(smoothed.maps - plain.maps).max() > 0.05  # a different map, not the sum again


def test_eigen_smooth_refuses_anything_but_false_true_or_centred():
    with pytest.raises(ValueError, match="eigen_smooth must be False, True or 'centred'"):
        gradcam.GradCAM(MeanHead(np.eye(2)), "features", eigen_smooth="yes")


# --- KPCA-CAM ---------------------------------------------------------------------------------------------------


def test_kpca_cam_of_three_positions_two_alike_worked_by_hand():
    # x = (0, 0, 1), rbf with gamma = ln 2: K = [[1, 1, 1/2], [1, 1, 1/2], [1/2, 1/2, 1]]. The centred kernel maps
    # (1, -1, 0) to 0 and u = (1, 1, -2)/sqrt(6) to lambda u with lambda = u^T K u = 4 (1 - 1/2) / 3 = 2/3, so
    # p = sqrt(2/3) u = (1, 1, -2)/3, and the pole -2/3 carries more energy: the map is (0, 0, 2/3)
    A = as_A([[0], [0], [1]], 1, 3)
    np.testing.assert_allclose(family.kpca_cam(A, "rbf", gamma=np.log(2)), [[[0, 0, 2 / 3]]], rtol=1e-6)
    # two positions x = (0, 1), gamma = 1: lambda = 1 - 1/e, p = +-sqrt(lambda/2) (1, -1), a tie: the first is kept
    a = np.sqrt((1 - np.exp(-1)) / 2)
    np.testing.assert_allclose(family.kpca_cam(as_A([[0], [1]], 1, 2), gamma=1.0), [[[a, 0]]], rtol=1e-6)


def test_kpca_cam_with_the_linear_kernel_is_centred_eigen_cam():
    A = np.random.default_rng(4).random((3, 6, 4, 5))
    np.testing.assert_allclose(family.kpca_cam(A, "linear"), ref.eigen_cam(A, centred=True), rtol=1e-5, atol=1e-6)


def test_kpca_cam_kernels_and_their_refusals():
    X = np.array([[1.0, 2.0], [0.0, -1.0]])
    dot = X @ X.T  # [[5, -2], [-2, 1]]; gamma defaults to 1/K = 1/2
    np.testing.assert_allclose(family.kernel_matrix(X, "poly"), (dot / 2 + 1) ** 3)
    np.testing.assert_allclose(family.kernel_matrix(X, "sigmoid"), np.tanh(dot / 2 + 1))
    np.testing.assert_allclose(family.kernel_matrix(X, "rbf"), np.exp(-np.array([[0, 10], [10, 0]]) / 2))
    with pytest.raises(ValueError, match="unknown kernel 'cosine'; kernels are rbf, poly, sigmoid, linear"):
        KPCACAM(MeanHead(np.eye(2)), "features", kernel="cosine")
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        KPCACAM(MeanHead(np.eye(2)), "features", gamma=0)


def test_kpca_cam_is_zero_where_every_position_is_alike():
    np.testing.assert_array_equal(family.kpca_cam(np.ones((1, 3, 2, 2))), np.zeros((1, 2, 2), np.float32))


# --- FEM --------------------------------------------------------------------------------------------------------

FEM_A = np.stack(
    [
        [[0, 0, 0], [0, 9, 0], [0, 0, 0]],  # mu 1, sigma 2 sqrt(2): threshold 1 + 4 sqrt(2) = 6.66, the 9 passes
        [[1, 1, 1], [1, 1, 1], [1, 1, 4]],  # mu 4/3, sigma sqrt(8)/3: threshold 3.22, the 4 passes
        np.full((3, 3), np.float32(0.1)),  # flat: every position at its threshold, mask all ones, weight 0.1
    ]
).astype(np.float32)[None]


def test_fem_worked_by_hand():
    tenth = float(np.float32(0.1))
    expected = np.full((3, 3), tenth)
    expected[1, 1] += 1
    expected[2, 2] += 4 / 3
    np.testing.assert_allclose(family.fem(FEM_A)[0], expected, rtol=1e-6)
    # k = 3: thresholds 1 + 6 sqrt(2) = 9.49 > 9 and 4/3 + sqrt(8) = 4.16 > 4; only the flat channel is left
    np.testing.assert_allclose(family.fem(FEM_A, k=3)[0], np.full((3, 3), tenth), rtol=1e-6)


def test_fem_method_is_the_formula_and_ignores_the_target():
    model = MeanHead(np.random.default_rng(5).standard_normal((3, 3)))
    first, second = FEM(model, "features")(FEM_A, 0), FEM(model, "features")(FEM_A, 2)
    np.testing.assert_allclose(first.raw, family.fem(FEM_A), rtol=1e-6)
    np.testing.assert_array_equal(first.raw, second.raw)
    with pytest.raises(ValueError, match="k must be a finite number"):
        FEM(model, "features", k=float("nan"))


# --- Finer-CAM --------------------------------------------------------------------------------------------------

# y = W mean(A) + b on SEED_A (channel means 14/9, 7/9), the bias making the logits (3, 2, 2 - ln 3, -5): the
# classes closest to class 0 are 1 (|3 - 2| = 1) and 2 (1 + ln 3), with softmax weights e^2 : e^(2 - ln 3) = 3/4 : 1/4
FINER_W = np.array([[1, 0], [0, 1], [1, 1], [2, -1]], np.float64)
FINER_LOGITS = np.array([3, 2, 2 - np.log(3), -5])
FINER_B = FINER_LOGITS - FINER_W @ SEED_A.mean(axis=(1, 2))


def finer_model():
    return MeanHead(FINER_W, FINER_B)


def test_finer_references_are_the_closest_logits_with_softmax_weights():
    chosen, weights = family.finer_references(FINER_LOGITS[None], np.array([0]), 2)
    np.testing.assert_array_equal(chosen, [[1, 2]])
    np.testing.assert_allclose(weights, [[3 / 4, 1 / 4]], rtol=1e-12)
    # for class 2 (logit 0.90) the closest are 1 (1.10 away) and 0 (2.10 away)
    np.testing.assert_array_equal(family.finer_references(FINER_LOGITS[None], np.array([2]), 2)[0], [[1, 0]])
    with pytest.raises(ValueError, match="references must be between 1 and classes - 1 = 3"):
        family.finer_references(FINER_LOGITS[None], np.array([0]), 4)


def test_finer_cam_worked_by_hand():
    # G^F = (W_0 - 3/4 W_1 - 1/4 W_2) / Z = (3/4, -1) / 9 everywhere: alpha = (1/12, -1/9),
    # L = ReLU(3/4 A1 - A2) / 9 = [[.75, 0, 1.5], [0, 2.75, 0], [0, .75, 0]] / 9, and the score
    # y_0 - (3/4 y_1 + 1/4 y_2) = 1 + ln(3)/4
    ex = FinerCAM(finer_model(), "features", references=2)(SEED_A[None], None)
    np.testing.assert_allclose(ex.weights, [[1 / 12, -1 / 9]], rtol=1e-5)
    np.testing.assert_allclose(ex.raw[0], np.array([[0.75, 0, 1.5], [0, 2.75, 0], [0, 0.75, 0]]) / 9, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(ex.scores, [1 + np.log(3) / 4], rtol=1e-5)
    np.testing.assert_array_equal(ex.targets, [0])
    # the reference formula on the gradients written down: G^c = W_c / 9 at every position
    G = {c: np.broadcast_to(FINER_W[c][None, :, None, None] / 9, (1, 2, 3, 3)) for c in range(4)}
    expected = np.array([[0.75, 0, 1.5], [0, 2.75, 0], [0, 0.75, 0]]) / 9
    np.testing.assert_allclose(family.finer_cam(SEED_A[None], G[0], np.stack([G[1], G[2]]), [[0.75, 0.25]])[0],
                               expected, rtol=1e-6, atol=1e-12)


def test_finer_cam_with_one_reference_is_grad_cam_of_the_logit_difference():
    # the closest class alone, weight 1: G^F = (W_0 - W_1)/9 = (1, -1)/9, L = ReLU(A1 - A2)/9; pytorch-grad-cam's
    # FinerCAM with comparison_categories=[1] explains the same difference (its one softmax weight cancels)
    ex = FinerCAM(finer_model(), "features", references=1)(SEED_A[None], 0)
    np.testing.assert_allclose(ex.raw[0], np.array([[1, 0, 2], [0, 4, 0], [0, 1, 0]]) / 9, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ex.scores, [1.0], rtol=1e-5)


def test_finer_cam_with_gamma_zero_is_grad_cam():
    model = finer_model()
    finer = FinerCAM(model, "features", gamma=0.0)(SEED_A[None], 3)
    plain = gradcam.GradCAM(model, "features")(SEED_A[None], 3)
    np.testing.assert_allclose(finer.raw, plain.raw, rtol=1e-6)
    np.testing.assert_allclose(finer.scores, plain.scores, rtol=1e-6)


def test_finer_cam_refuses_target_functions_and_single_outputs():
    with pytest.raises(ValueError, match="Finer-CAM compares class scores"):
        FinerCAM(finer_model(), "features")(SEED_A[None], lambda out: out[:, 0])
    with pytest.raises(ValueError, match="two or more classes"):
        FinerCAM(MeanHead([[1.0, 2.0]]), "features")(SEED_A[None], 0)
    with pytest.raises(ValueError, match="references must be a positive integer"):
        FinerCAM(finer_model(), "features", references=0)


def test_finer_cam_takes_as_many_references_as_there_are_other_classes():
    # 4 classes: references=3 and references=10 both compare with the 3 others
    three = FinerCAM(finer_model(), "features", references=3)(SEED_A[None], 0)
    many = FinerCAM(finer_model(), "features", references=10)(SEED_A[None], 0)
    np.testing.assert_array_equal(three.raw, many.raw)


# --- CAM without fc_layer ---------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self, hidden: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.hidden = nn.Linear(6, 6) if hidden else nn.Identity()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.hidden(self.features(x).mean(dim=(2, 3))))


class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.classifier(self.features(x)).mean(dim=(2, 3))


def test_cam_finds_the_dense_layer_after_the_pooling():
    model, x = SmallCNN().eval(), torch.rand(2, 3, 8, 8)
    found = gradcam.CAM(model, "features")(x, [1, 3])
    named = gradcam.CAM(model, "features", fc_layer="fc")(x, [1, 3])
    np.testing.assert_array_equal(found.raw, named.raw)
    np.testing.assert_allclose(found.weights, model.fc.weight.detach().numpy()[[1, 3]], rtol=0)


def test_cam_refuses_when_it_finds_no_dense_layer_or_several():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"found the dense layers 'hidden', 'fc' after it; give the dense layer "):
        gradcam.CAM(SmallCNN(hidden=True).eval(), "features")(x, 0)
    with pytest.raises(ValueError, match="found no dense layer after it"):
        gradcam.CAM(ConvHead().eval(), "features")(x, 0)


# --- pytorch-grad-cam 1.5.7's values (printed in .venv-bench, where it and scikit-learn 1.9.1 are installed) ---------

PEER_A = np.array([[[[3, 1, 0], [2, 5, 1]], [[1, 2, 2], [0, 1, 3]], [[2, 0, 1], [1, 1, 4]]]], np.float32)
PEER_G = np.array([[[[1, -1, 2], [0.5, 1, -2]], [[2, 1, 0], [1, -1, 1]], [[-1, 2, 1], [1, 0.5, 1]]]], np.float32)
# get_2d_projection_kernel(PEER_A, kernel, None): KPCA_CAM's map before its ReLU
PEER_KPCA = {
    "rbf": np.float32([[[-0.50327826, 0.6340251, 0.6692753], [-0.30315098, -0.40350547, -0.09336589]]]),
    "sigmoid": np.float32([[[0.36973968, -0.24553582, -0.8151624], [0.373446, 1.0502983, -0.73278564]]]),
}
# get_2d_projection(PEER_G * PEER_A): EigenGradCAM's map before its ReLU
PEER_EIGEN_GRAD = np.float32([[[-2.5728035, 1.632785, 0.5990744], [-0.22173971, -4.0726104, 4.6352944]]])
# FinerCAM(...)(SEED_A, comparison_categories=...) on finer_model (its identity layer a 1x1 convolution), normalised
PEER_FINER_ONE = np.float32([[[0.24999997, 0, 0.49999994], [0, 0.9999999, 0], [0, 0.24999997, 0]]])
PEER_FINER_TWO = np.float32([[[0.25291076, 0, 0.5058215], [0, 0.9999999, 0], [0, 0.25291076, 0]]])


@pytest.mark.parametrize("kernel", PEER_KPCA)
def test_kpca_cam_is_pytorch_grad_cams_where_the_sign_agrees(kernel):
    # in both, LAPACK's sign happens to put more energy on the positive side: the maps are equal after the ReLU
    np.testing.assert_allclose(family.kpca_cam(PEER_A, kernel), np.maximum(PEER_KPCA[kernel], 0), rtol=1e-5,
                               atol=1e-6)


def test_centred_eigen_grad_cam_is_pytorch_grad_cams_where_the_sign_agrees():
    np.testing.assert_allclose(family.eigen_grad_cam(PEER_A, PEER_G, centred=True), np.maximum(PEER_EIGEN_GRAD, 0),
                               rtol=1e-5, atol=1e-6)


def test_finer_cam_is_pytorch_grad_cams_with_one_reference_and_differs_with_two():
    one = FinerCAM(finer_model(), "features", references=1)(SEED_A[None], None)
    np.testing.assert_allclose(one.maps, PEER_FINER_ONE, rtol=0, atol=1e-6)
    # with two, pytorch-grad-cam differentiates the softmax weights 3/4, 1/4 too; held constant here, the map is
    # ReLU(3/4 A1 - A2) / 9 normalised: 0.75 / 2.75 = 0.2727 where pytorch-grad-cam has 0.2529
    two = FinerCAM(finer_model(), "features", references=2)(SEED_A[None], None)
    np.testing.assert_allclose(two.maps[0, 0, 0], 0.75 / 2.75, rtol=1e-5)
    assert np.abs(two.maps - PEER_FINER_TWO).max() == pytest.approx(0.75 / 2.75 * 2 - 0.5058215, abs=1e-5)


# --- the same network in PyTorch, Keras and Flax ----------------------------------------------------------------

BUILDERS = {"torch": "gradcam.models.torch_net", "keras": "gradcam.models.keras_net", "flax": "gradcam.models.flax_net"}


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("tensorflow")
    pytest.importorskip("flax")
    weights = random_weights(seed=3)
    return {name: importlib.import_module(module).build(weights) for name, module in BUILDERS.items()}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)


def explain_in_each(models, images, method, layer, **options):
    """Each framework's explanation of ``images`` (NCHW; NHWC for Keras and Flax) for the targets 0, 2, 4."""
    explanations = {}
    for name, model in models.items():
        x = images if name == "torch" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        explanations[name] = method(model, layer, quiet=True, **options)(x, [0, 2, 4])
    return explanations


CROSS_CASES = {
    "eigengradcam": (EigenGradCAM, {}),
    "eigengradcam-centred": (EigenGradCAM, {"centred": True}),
    "kpcacam": (KPCACAM, {}),
    "kpcacam-sigmoid": (KPCACAM, {"kernel": "sigmoid"}),
    "fem": (FEM, {}),
    "finercam": (FinerCAM, {}),
    "gradcam-eigen-smooth": (gradcam.GradCAM, {"eigen_smooth": True}),
    "gradcam++-eigen-smooth-centred": (gradcam.GradCAMPlusPlus, {"eigen_smooth": "centred"}),
}


@pytest.mark.parametrize("case", CROSS_CASES)
@pytest.mark.parametrize("layer", ["block3", "features"])
def test_the_same_network_gives_the_same_maps_in_every_framework(models, images, case, layer):
    method, options = CROSS_CASES[case]
    explanations = explain_in_each(models, images, method, layer, **options)
    reference = explanations["torch"]
    assert reference.maps.max() == 1.0 and reference.maps.std() > 0.05  # real structure, not an empty map
    for name in ("keras", "flax"):
        np.testing.assert_allclose(explanations[name].maps, reference.maps, rtol=0, atol=MAPS_ATOL)
        scale = np.abs(reference.scores).max()
        np.testing.assert_allclose(explanations[name].scores, reference.scores, rtol=0, atol=1e-5 * scale)


def test_cam_finds_the_dense_layer_in_every_framework(models, images):
    explanations = explain_in_each(models, images, gradcam.CAM, "features")
    for name in ("keras", "flax"):
        np.testing.assert_allclose(explanations[name].maps, explanations["torch"].maps, rtol=0, atol=MAPS_ATOL)
    W = random_weights(seed=3)["fc.weight"]
    np.testing.assert_allclose(explanations["flax"].weights, W[[0, 2, 4]], rtol=1e-6)
