"""The Keras applications users start from, randomly initialized (``weights=None``) at 64 px: ResNet50,
MobileNetV3Small (hard-swish), EfficientNetB0 (swish) and ConvNeXtTiny (LayerNorm, GELU), each built with its
default ``classifier_activation="softmax"``. The explained score is the logit before the softmax (noted); the
automatic layer is the last stage's output; Grad-CAM equals a Grad-CAM written here with a ``GradientTape`` on
the logit (to 1e-5). Every method runs on each of them, one image each: about a minute per model on one core
(each method compiles its own graph; Ablation-CAM runs one forward per channel, 2048 on ResNet50), so each model is
its own test and pytest-xdist spreads them.
"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from zoo_common import Case, by_hand_nchw, check_grad_cam, grad_cam_by_hand, run_every_method

import gradcam

SIZE = 64


def application(build, **options):
    def make():
        keras.utils.set_random_seed(0)  # the same weights whatever ran before in this process
        return build(weights=None, input_shape=(SIZE, SIZE, 3), classes=10, **options)

    return make


def mobilenet_last_map(model) -> str:
    """The hard-swish after MobileNetV3's last conv (Keras names it ``activation_<n>``, n counted per session)."""
    norm = model.get_layer("conv_1_bn").output
    return next(layer.name for layer in model.layers if getattr(layer, "input", None) is norm)


CASES = {
    "keras ResNet50": Case(application(keras.applications.ResNet50), SIZE, "conv5_block3_out", "NHWC",
                           fc="predictions"),
    "keras MobileNetV3Small": Case(application(keras.applications.MobileNetV3Small, include_preprocessing=False),
                                   SIZE, mobilenet_last_map, "NHWC"),
    "keras EfficientNetB0": Case(application(keras.applications.EfficientNetB0), SIZE, "top_activation", "NHWC",
                                 fc="predictions"),
    "keras ConvNeXtTiny": Case(application(keras.applications.ConvNeXtTiny, include_preprocessing=False), SIZE,
                               "convnext_tiny_stage_3_block_2_identity", "NHWC"),
}


@pytest.fixture(scope="module", params=list(CASES))
def zoo(request):
    case = CASES[request.param]
    model = case.build()
    if callable(case.layer):
        case = Case(case.build, case.size, case.layer(model), case.layout, fc=case.fc)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    return request.param, case, model, x


def grad_cam_with_a_tape(model, x, layer: str) -> np.ndarray:
    """Grad-CAM written out on the logit: the layer's output and the final layer's input from one functional
    model, the logit by hand (``input @ kernel + bias`` for a dense softmax layer), ``tape.gradient``."""
    final = model.layers[-1]
    split = keras.Model(model.inputs, [model.get_layer(layer).output, final.input])
    with tf.GradientTape() as tape:
        A, before = split(x, training=False)
        logits = before @ final.kernel + final.bias if isinstance(final, keras.layers.Dense) else before
        score = tf.reduce_max(logits, axis=1)
    G = tape.gradient(score, A)
    return grad_cam_by_hand(by_hand_nchw(np.asarray(A), "NHWC"), by_hand_nchw(np.asarray(G), "NHWC"))


def test_automatic_layer_layout_and_grad_cam_of_the_logit_equal_a_hand_written_grad_cam(zoo):
    name, case, model, x = zoo
    ex = check_grad_cam(name, case, model, x, grad_cam_with_a_tape(model, x, case.layer), "tensorflow")
    assert "explaining the logit before the final softmax" in " ".join(gradcam.GradCAM(model).notes)
    assert ex.scores.max() > 1.0 or not np.allclose(ex.scores.sum(), 1.0)  # a logit, not a probability


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_runs_on_every_application(name):
    case = CASES[name]
    model = case.build()
    layer = case.layer(model) if callable(case.layer) else case.layer
    x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    outcome = run_every_method(name, case, model, x, layer=layer)
    assert len(outcome) == len(gradcam.METHODS)
    # CAM needs GAP + one dense layer: ConvNeXt's head puts a LayerNorm between them
    assert (outcome["cam"] == "no GAP + dense head") == (case.fc is None), outcome
    # guided backpropagation changes only ReLUs' backward: swish / GELU networks are told it met none
    no_relu = name in ("keras EfficientNetB0", "keras ConvNeXtTiny")
    assert ("NoReluWarning" in outcome["guided-backprop"]) == no_relu, outcome


def test_the_probability_is_explained_when_asked_and_differs_from_the_logit():
    model = CASES["keras ResNet50"].build()
    x = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    logit = gradcam.GradCAM(model, "conv5_block3_out", quiet=True)(x)
    probability_cam = gradcam.GradCAM(model, "conv5_block3_out", probability=True, quiet=True)
    probability = probability_cam(x)
    assert probability_cam.notes[0].startswith("the explained score is a probability")
    assert 0 < probability.scores[0] <= 1 < logit.scores[0] and probability.targets[0] == logit.targets[0]
    assert not np.allclose(probability.raw / probability.raw.max(), logit.raw / logit.raw.max(), atol=1e-3)
    np.testing.assert_allclose(np.asarray(model(x)).sum(), 1.0, rtol=1e-5)  # the model as given keeps its softmax
