"""One ResNet-style network (convs, batch norm in inference mode, a residual add, ReLU, global pooling, a dense
head) built in PyTorch, Keras and Flax from ONE .npz of weights: every method agrees across the three.

Tolerances: the three frameworks run the same float32 arithmetic in different orders, so activations differ by a
few float32 ulps (measured: about 1e-7 relative). Maps are normalised to [0, 1] by their own range, which keeps
such differences at the 1e-6 level unless a map is nearly flat; ``atol=1e-5`` on normalised maps leaves a margin
of about ten. Scores are compared relative to the batch's largest score (``Comparison.scores_relative``): a logit
near zero has no meaningful relative error, while 1e-5 of the score scale is ten times the float32 noise.
"""
import importlib

import numpy as np
import pytest

import gradcam
from gradcam.models import random_weights

MAPS_ATOL = 1e-5
SCORES_RTOL = 1e-5
BUILDERS = {"torch": "gradcam.models.torch_net", "keras": "gradcam.models.keras_net", "flax": "gradcam.models.flax_net"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet_style.npz"
    np.savez(path, **random_weights(seed=3))
    with np.load(path) as data:
        weights = {name: data[name] for name in data.files}
    return {name: importlib.import_module(module).build(weights) for name, module in BUILDERS.items()}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)


GRADIENT_METHODS = ["gradcam", "gradcam++", "smoothgradcam++", "xgradcam", "layercam", "hirescam", "eigencam"]


@pytest.mark.parametrize("layer", ["block3", "features"])
def test_every_gradient_method_agrees_across_frameworks(models, images, layer):
    comparison = gradcam.compare(
        {name: (model, layer) for name, model in models.items()}, images, methods=GRADIENT_METHODS, target=[0, 2, 4],
        method_options={"smoothgradcam++": {"n_samples": 4}},
    )
    comparison.assert_close(maps_atol=MAPS_ATOL, scores_rtol=SCORES_RTOL)
    assert {d.model for d in comparison.differences} == {"keras", "flax"}
    # the maps are not trivially equal because they are empty: each has real structure
    for per_model in comparison.explanations.values():
        assert all(ex.maps.max() == 1.0 and ex.maps.std() > 0.05 for ex in per_model.values())


def test_weights_agree_where_methods_have_them(models, images):
    comparison = gradcam.compare(
        {name: (model, "block3") for name, model in models.items()},
        images,
        methods=["gradcam", "gradcam++", "xgradcam"],
        target=1,
    )
    for difference in comparison.differences:
        reference = comparison.explanations[difference.method]["torch"].weights
        assert difference.weights <= 1e-5 * np.abs(reference).max()


def test_guided_methods_agree_across_frameworks(models, images):
    comparison = gradcam.compare(
        {name: (model, "block3") for name, model in models.items()},
        images,
        methods=["guided-backprop", "guided-gradcam"],
        target=[1, 1, 3],
    )
    comparison.assert_close(maps_atol=MAPS_ATOL, scores_rtol=SCORES_RTOL)


def test_top_one_targets_agree(models, images):
    layers = {name: (model, "features") for name, model in models.items()}
    comparison = gradcam.compare(layers, images, methods=["gradcam"])
    targets = {name: ex.targets.tolist() for name, ex in comparison.explanations["gradcam"].items()}
    assert targets["torch"] == targets["keras"] == targets["flax"]


def test_compare_reports_a_real_disagreement(models, images):
    other = importlib.import_module(BUILDERS["keras"]).build(random_weights(seed=4))
    pair = {"torch": (models["torch"], "features"), "keras-other": (other, "features")}
    comparison = gradcam.compare(pair, images, methods=["gradcam"], target=0)
    assert comparison.max_difference("maps") > 0.1
    with pytest.raises(AssertionError, match=r"\| gradcam \| keras-other \| torch \|"):
        comparison.assert_close()


def test_compare_needs_two_models_and_channels_first_images(models, images):
    with pytest.raises(ValueError, match="at least two models"):
        gradcam.compare({"torch": (models["torch"], "features")}, images)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        gradcam.compare({n: (m, "features") for n, m in models.items()}, images[0])
