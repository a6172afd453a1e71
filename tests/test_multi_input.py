"""Models with several inputs (an image and a metadata vector): ``x`` a tuple, list or dict, ``input=`` the one
explained. One image + metadata model in PyTorch, Keras and Flax from one set of weights (``multi_input_nets``).

Tolerances: the three frameworks run the same float32 arithmetic in different orders (a few ulps apart), and maps
are normalised to [0, 1] (input gradients: compared relative to their largest magnitude), so ``atol=1e-5`` leaves
a margin of about ten, as in ``test_cross_framework.py``. Hand-written references run in float64 and are compared
at ``rtol=1e-5`` of the float32 values.
"""
import copy

import multi_input_nets as nets
import numpy as np
import pytest
import torch

from gradcam.backends import inputs as multi
from gradcam.backends import torch as torch_backend
from gradcam.methods import METHODS, GradCAM, Occlusion, ScoreCAM

keras = pytest.importorskip("keras")
pytest.importorskip("flax")

MAPS_ATOL = 1e-5
TARGETS = [0, 1, 2]
LAYER = "conv"
# options that give every method a map with structure on an 8 x 8 image in a test's time
OPTIONS = {
    "occlusion": {"window": 2, "stride": 2},
    "smoothgrad": {"n_samples": 4},
    "smoothgradcam++": {"n_samples": 4},
    "sscam": {"n_samples": 2},
    "iscam": {"n_samples": 2},
}
# CAM reads a dense layer's weights as class weights of the layer's channels: this head also sees the metadata
EVERY_METHOD = sorted(name for name in METHODS if name != "cam")


@pytest.fixture(scope="module")
def weights():
    return nets.weights()


@pytest.fixture(scope="module")
def models(weights):
    return {"torch": nets.torch_model(weights), "keras": nets.keras_model(weights), "flax": nets.flax_model(weights)}


@pytest.fixture(scope="module")
def batch():
    return nets.batch(3)


def method(name, model, **options):
    cls = METHODS[name]
    layer = {"layer": LAYER} if cls.takes_layer and name != "fullgrad" else {}
    return cls(model, **layer, **OPTIONS.get(name, {}), **options)


def framework_inputs(batch):
    """The same examples as each framework takes them: a torch tuple, a Keras list, a Flax dict."""
    image, meta = batch
    last = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    return {"torch": (image, meta), "keras": [last, meta], "flax": {"image": last, "meta": meta}}


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_agrees_across_frameworks(models, batch, name):
    given = framework_inputs(batch)
    maps = {
        framework: method(name, model, input="image" if framework == "flax" else None)(given[framework], TARGETS).maps
        for framework, model in models.items()
    }
    reference = maps["torch"]
    assert reference.shape[-2:] == nets.IMAGE_SHAPE[1:]  # the explained input's grid
    scale = np.abs(reference).max()
    assert scale > 0 and all(np.abs(m).max() > 0 for m in reference)  # every image's map has structure
    for framework in ("keras", "flax"):
        np.testing.assert_allclose(maps[framework] / scale, reference / scale, rtol=0, atol=MAPS_ATOL)


def test_gradcam_equals_hand_written_gradcam(models, weights, batch):
    image, meta = batch
    model = models["torch"]
    probe = torch_backend.probe(model, (image, meta), LAYER, TARGETS)
    A, G = probe.activations[LAYER].astype(np.float64), probe.gradients[LAYER].astype(np.float64)
    # A is the conv of the image alone, G the gradient of each target's logit at it: both by hand in float64
    w = {name: torch.from_numpy(value).double() for name, value in weights.items()}
    a = torch.nn.functional.conv2d(torch.from_numpy(image).double(), w["conv_w"], w["conv_b"], padding=1)
    a.requires_grad_()
    side = torch.relu(torch.from_numpy(meta).double() @ w["meta_w"].T + w["meta_b"])
    logits = torch.cat([torch.relu(a).mean(dim=(2, 3)), side], dim=1) @ w["head_w"].T + w["head_b"]
    (g,) = torch.autograd.grad(logits[range(3), TARGETS].sum(), a)
    np.testing.assert_allclose(A, a.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(G, g.numpy(), rtol=1e-5, atol=1e-8)
    weights_k = G.mean(axis=(2, 3))
    hand = np.maximum(np.einsum("nk,nkhw->nhw", weights_k, A), 0)
    explanation = GradCAM(model, LAYER)((image, meta), TARGETS)
    np.testing.assert_allclose(explanation.raw_by_layer[LAYER], hand, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(explanation.targets, TARGETS)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


class _GuidedModule(torch.nn.Module):
    def forward(self, x):
        return _GuidedReLU.apply(x)


@pytest.mark.parametrize("rule", ["plain", "guided"])
def test_input_gradient_is_autograd_with_respect_to_the_image_only(models, batch, rule):
    image, meta = batch
    model = copy.deepcopy(models["torch"])
    found = torch_backend.input_gradient(model, multi.Inputs({"image": image, "meta": meta}, "image"), TARGETS, rule)
    if rule == "guided":
        model.relu, model.meta_relu = _GuidedModule(), _GuidedModule()
    xt = torch.from_numpy(image).requires_grad_()
    metat = torch.from_numpy(meta).requires_grad_()
    (gradient,) = torch.autograd.grad(model(xt, metat)[range(3), TARGETS].sum(), xt)
    assert found.gradient.shape == image.shape
    np.testing.assert_allclose(found.gradient, gradient.numpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(found.gradient).max() > 0


@pytest.mark.filterwarnings("ignore::gradcam.explanation.GradcamWarning")
def test_occlusion_changes_only_the_image(models, batch):
    image, meta = batch
    model = models["torch"]
    occlusion = Occlusion(model, window=4, stride=4, batch_size=5)
    model.seen.clear()
    occlusion((image, meta), TARGETS)
    seen = np.concatenate(model.seen)
    # one clean forward, then 4 windows per image, image-major: every copy of image n carries meta row n
    np.testing.assert_array_equal(seen, np.concatenate([meta, np.repeat(meta, 4, axis=0)]))
    assert [len(m) for m in model.seen] == [3, 5, 5, 2]


def test_score_cam_copies_carry_their_images_metadata(models, batch):
    image, meta = batch
    model = models["torch"]
    model.seen.clear()
    explanation = ScoreCAM(model, LAYER, batch_size=4)((image, meta), TARGETS)
    seen = np.concatenate(model.seen[1:])  # after the probe's forward: one masked copy per (image, live channel)
    live = np.abs(explanation.raw_by_layer[LAYER]).sum() > 0
    assert live and len(seen) > 0
    rows = [np.flatnonzero((meta == row).all(axis=1)) for row in seen]
    assert all(len(r) == 1 for r in rows)
    assert np.all(np.diff([r[0] for r in rows]) >= 0)  # the copies go image by image


@pytest.mark.parametrize(
    "given, key",
    [
        (lambda image, meta: (image, meta), None),
        (lambda image, meta: [image, meta], 0),
        (lambda image, meta: {"image": image, "meta": meta}, "image"),
        (lambda image, meta: {"image": image, "meta": meta}, 0),
        (lambda image, meta: {"meta": meta, "image": image}, "image"),
    ],
)
def test_tuples_dicts_and_names_give_the_same_map(models, batch, given, key):
    image, meta = batch
    model = models["torch"]
    expected = GradCAM(model, LAYER)((image, meta), TARGETS)
    found = GradCAM(model, LAYER, input=key)(given(image, meta), TARGETS)
    np.testing.assert_array_equal(found.maps, expected.maps)
    np.testing.assert_array_equal(found.scores, expected.scores)


def test_the_metadata_changes_the_scores(models, batch):
    # a check that the metadata reaches the model at all: other metadata, other scores
    image, meta = batch
    model = models["torch"]
    first = torch_backend.predict(model, (image, meta))
    second = torch_backend.predict(model, (image, meta + 1))
    assert np.abs(first - second).max() > 1e-3
    # chunks of 2 rows: the last chunk's row is computed in another batch shape, a float32 ulp or so apart
    np.testing.assert_allclose(torch_backend.predict(model, (image, meta), batch_size=2), first, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "by_name, key, message",
    [
        (True, "picture", r"input='picture' names no input of the model; give one of \['image', 'meta'\]"),
        (False, 2, r"input=2 is out of range: the model has 2 inputs \(0..1\)"),
        (False, "image", r"input='image' names no input of the model; give an index 0..1"),
    ],
)
def test_unknown_inputs_are_refused(models, batch, by_name, key, message):
    image, meta = batch
    x = {"image": image, "meta": meta} if by_name else (image, meta)
    with pytest.raises(ValueError, match=message):
        GradCAM(models["torch"], LAYER, input=key)(x)


def test_batch_sizes_that_differ_are_refused(models, batch):
    image, meta = batch
    with pytest.raises(ValueError, match=r"same number of examples \(axis 0\), got 0: 3, 1: 2"):
        GradCAM(models["torch"], LAYER)((image, meta[:2]))
    with pytest.raises(ValueError, match=r"got 'image': 3, 'meta': 2"):
        torch_backend.probe(models["torch"], {"image": image, "meta": meta[:2]}, LAYER)


def test_inputs_replace_and_take_rows():
    image = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    meta = np.array([[10.0], [20.0], [30.0]], dtype=np.float32)
    inputs = multi.Inputs({"meta": meta, "image": image}, "image")
    assert inputs.shape == (3, 2)
    copies = inputs.replaced(np.zeros((4, 2), np.float32), np.array([2, 2, 0, 1]))
    assert list(copies.parts) == ["meta", "image"]  # the model's order is kept
    np.testing.assert_array_equal(copies.parts["meta"][:, 0], [30, 30, 10, 20])
    np.testing.assert_array_equal(copies.explained, np.zeros((4, 2)))
    np.testing.assert_array_equal(inputs.take(slice(1, 2)).parts["image"], image[1:2])
    assert inputs.call(lambda meta, image: (meta[0, 0], image[0, 1]), image) == (10.0, 1.0)
    assert multi.read(image).explained is image and multi.wrapped(image) is image


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_lists_and_dicts_agree_in_keras_and_flax(weights, batch, framework):
    image, meta = batch
    last = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    by_list = nets.keras_model(weights) if framework == "keras" else nets.flax_model(weights)
    by_name = nets.keras_model(weights, by_name=True) if framework == "keras" else by_list
    expected = GradCAM(by_list, LAYER)([last, meta], TARGETS)
    found = GradCAM(by_name, LAYER, input="image")({"meta": meta, "image": last}, TARGETS)
    np.testing.assert_allclose(found.maps, expected.maps, rtol=0, atol=MAPS_ATOL)
    backend = GradCAM(by_list, LAYER).backend
    # chunks of 2 rows: the last one padded to the compiled shape, with the metadata padded alike
    outputs = backend.predict(by_list, [last, meta], batch_size=2)
    torch_outputs = torch_backend.predict(nets.torch_model(weights), (image, meta))
    np.testing.assert_allclose(outputs, torch_outputs, rtol=1e-5, atol=1e-6)


def test_a_single_input_model_takes_input_zero_and_a_tuple_of_one(batch):
    image, _ = batch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    expected = GradCAM(model, "0")(image, TARGETS)
    for x, key in ((image, 0), ((image,), None), ((image,), -1)):
        np.testing.assert_array_equal(GradCAM(model, "0", input=key)(x, TARGETS).maps, expected.maps)
    # a list of images of one shape is one batch, stacked, as before models could take several inputs
    images = [np.asarray(row) for row in np.asarray(image)]
    np.testing.assert_array_equal(GradCAM(model, "0")(images, TARGETS).maps, expected.maps)
    with pytest.raises(ValueError, match="input='image' names no input of the model; give an index 0..0"):
        GradCAM(model, "0", input="image")(image)
