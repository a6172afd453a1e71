"""The PyTorch backend against hand-worked numbers and independently computed autograd results."""
from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from gradcam.backends import common, get_backend  # noqa: E402
from gradcam.backends import torch as backend  # noqa: E402
import torch_nets as nets  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-6)


def reference_probe(model: nn.Module, x: torch.Tensor, layers: list[str], target=None):
    """Activations and gradients from a full-graph forward with ``retain_grad`` and ``.backward()``.

    Works on a copy of the model with every ReLU out of place, so that in-place ops cannot disturb
    the retained tensors; the copy's parameter gradients are formed and thrown away.
    """
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    outputs = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output

        return hook

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in layers]
    with torch.enable_grad():
        logits = model(x)
    for h in handles:
        h.remove()
    index = logits.argmax(1) if target is None else torch.as_tensor(target).expand(len(x))
    logits.gather(1, index[:, None]).sum().backward()
    return (
        {n: outputs[n].detach().numpy() for n in layers},
        {n: outputs[n].grad.numpy() for n in layers},
    )


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


# --- the documents' example -------------------------------------------------------------------


def test_seed_000_gradient_is_alpha_everywhere_exactly():
    model = nets.SeedNet()
    result = backend.probe(model, nets.SEED_A[None], layers="features", target=0)
    G = result.gradients["features"]
    expected = np.broadcast_to(nets.SEED_ALPHA[None, :, None, None], (1, 2, 3, 3))
    assert G.dtype == np.float32 and np.array_equal(G, expected)
    assert np.array_equal(result.activations["features"], nets.SEED_A[None])
    # Grad-CAM by hand from what the backend handed out gives the documents' L
    alpha = G.mean(axis=(2, 3))
    L = np.maximum(np.einsum("nk,nkij->nij", alpha, result.activations["features"]), 0)
    np.testing.assert_allclose(L[0], [[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]], atol=1e-6)
    # the channels sum to 14 and 7: y = 14/3 - 2/3 * 7 = 0
    np.testing.assert_allclose(result.scores, [0.0], atol=1e-6)
    assert result.layers == ["features"] and result.input_size == (3, 3)
    assert result.targets.tolist() == [0] and result.logits.shape == (1, 1)


# --- equality with independent autograd ----------------------------------------------------------


@pytest.mark.parametrize(
    "layers", [["layer2"], ["layer1.conv2"], ["layer2.bn1"], ["layer1", "layer2.conv1", "layer2"]]
)
def test_probe_equals_full_graph_autograd(layers):
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(3)
    result = backend.probe(model, x, layers=layers)
    acts, grads = reference_probe(model, x, layers)
    assert result.layers == layers
    for name in layers:
        np.testing.assert_allclose(result.activations[name], acts[name], **F32)
        np.testing.assert_allclose(result.gradients[name], grads[name], **F32)
    logits = model(x).detach().numpy()
    assert result.targets.tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(result.scores, logits.max(1), **F32)
    np.testing.assert_allclose(result.logits, logits, **F32)


def test_vgg_head_with_relus_equals_autograd():
    model = nets.seeded(nets.VGGStyle())
    x = nets.images(2)
    result = backend.probe(model, x, layers=["features.3", "features"], target=2)
    acts, grads = reference_probe(model, x, ["features.3", "features"], target=2)
    for name in ["features.3", "features"]:
        np.testing.assert_allclose(result.activations[name], acts[name], **F32)
        np.testing.assert_allclose(result.gradients[name], grads[name], **F32)
    # features.3 is the conv before the last ReLU: its gradient is masked where the ReLU is off
    assert (result.gradients["features.3"][acts["features.3"] < 0] == 0).all()


def test_batch_equals_images_one_by_one():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(4)
    batch = backend.probe(model, x, layers=["layer1", "layer2"])
    for i in range(4):
        single = backend.probe(model, x[i : i + 1], layers=["layer1", "layer2"])
        for name in ["layer1", "layer2"]:
            np.testing.assert_allclose(batch.activations[name][i : i + 1], single.activations[name], **F32)
            np.testing.assert_allclose(batch.gradients[name][i : i + 1], single.gradients[name], **F32)
        assert batch.targets[i] == single.targets[0]


def test_several_layers_equal_each_layer_alone():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    both = backend.probe(model, x, layers=["layer2", "layer1.bn1"])
    assert both.layers == ["layer2", "layer1.bn1"]
    for name in both.layers:
        alone = backend.probe(model, x, layers=name)
        np.testing.assert_array_equal(both.activations[name], alone.activations[name])
        np.testing.assert_allclose(both.gradients[name], alone.gradients[name], **F32)


def test_graph_starts_at_the_layer():
    model = nets.seeded(nets.SmallResNet())
    recorded = {}

    def record(name):
        def hook(module, inputs, output):
            recorded[name] = (torch.is_grad_enabled(), output.requires_grad)

        return hook

    names = ["conv1", "layer1", "layer2.conv1", "fc"]
    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in names]
    backend.probe(model, nets.images(1), layers="layer1")
    for h in handles:
        h.remove()
    assert recorded == {
        "conv1": (False, False),
        "layer1": (False, False),  # our hook runs after this one and starts the graph
        "layer2.conv1": (True, True),
        "fc": (True, True),
    }


def test_layer_called_twice_is_taken_at_its_last_call():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    shared = backend.probe(model, x, layers="layer1.relu")
    block = backend.probe(model, x, layers="layer1")
    np.testing.assert_array_equal(shared.activations["layer1.relu"], block.activations["layer1"])
    np.testing.assert_allclose(shared.gradients["layer1.relu"], block.gradients["layer1"], **F32)


def test_layer_output_aliasing_its_input_keeps_the_value_it_had():
    class EditsAfterLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.view = nn.Identity()
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            h = self.conv(x)
            a = self.view(h)
            h.mul_(2)  # edits what the layer returned an alias of
            return self.head(a.mean(dim=(2, 3)))

    model = nets.seeded(EditsAfterLayer())
    x = nets.images(2)
    result = backend.probe(model, x, layers="view", target=1)
    np.testing.assert_allclose(result.activations["view"], model.conv(x).detach().numpy(), **F32)
    expected = np.broadcast_to(model.head.weight[1].detach().numpy()[None, :, None, None] / 64, (2, 2, 8, 8))
    np.testing.assert_allclose(result.gradients["view"], expected, **F32)


def test_called_inside_inference_mode():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    outside = backend.probe(model, x, layers="layer2")
    with torch.inference_mode():
        x_inference = x.clone()  # an inference tensor, which autograd refuses to record
        inside = backend.probe(model, x_inference, layers="layer2")
        guided = backend.input_gradient(model, x_inference, rule="guided")
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
    np.testing.assert_array_equal(inside.gradients["layer2"], outside.gradients["layer2"])
    assert guided.gradient.shape == (2, 3, 8, 8)


def test_layer_given_as_module_and_numpy_input():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    by_module = backend.probe(model, x.numpy().astype(np.float64), layers=[model.layer2])
    by_name = backend.probe(model, x, layers="layer2")
    assert by_module.layers == ["layer2"]
    np.testing.assert_array_equal(by_module.gradients["layer2"], by_name.gradients["layer2"])


def test_default_layer_and_layer_listing():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    assert backend.default_layer(model, x) == "layer2"
    assert backend.probe(model, x).layers == ["layer2"]
    names = backend.layer_names(model)
    assert names[:3] == ["conv1", "bn1", "relu"] and "layer2.shortcut.0" in names and "" not in names
    shapes = dict(backend.layer_shapes(model, x))
    assert shapes["layer1"] == (2, 8, 8, 8) and shapes["layer2"] == (2, 16, 4, 4) and shapes["fc"] == (2, 10)
    order = [name for name, _ in backend.layer_shapes(model, x)]
    assert order.index("layer2.bn2") < order.index("layer2.relu") < order.index("layer2") < order.index("fc")
    assert backend.default_layer(nets.seeded(nets.VGGStyle()), x) == "features"
    with pytest.raises(ValueError, match="spatial"):
        backend.default_layer(nets.SeedNet(), torch.ones(1, 2, 1, 1))


# --- the model is left as found -------------------------------------------------------------------


class Failing(nn.Module):
    """Raises in its forward after the requested layer has run (and turned grad mode on)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nets.seeded(nets.SmallResNet())

    def forward(self, x):
        self.net.layer1(self.net.relu(self.net.bn1(self.net.conv1(x))))
        raise RuntimeError("boom")


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [id(m) for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def _assert_same_state(before, after):
    assert before[0] == after[0] and before[1] == after[1] and before[3] == after[3]
    for g0, g1 in zip(before[2], after[2]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before[4].keys() == after[4].keys()
    for k in before[4]:
        assert torch.equal(before[4][k], after[4][k]), k


def _prepare(model):
    """Known grads on some parameters, a frozen one, a module in training mode."""
    params = list(model.parameters())
    for i, p in enumerate(params):
        if i % 3 == 0:
            p.grad = torch.full_like(p, 0.5 + i)
    params[1].requires_grad_(False)
    model.get_submodule("layer1.bn2" if hasattr(model, "layer1") else "net.layer1.bn2").train()
    return model


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: backend.probe(m, x, layers=["layer1", "layer2"]),
        lambda m, x: backend.input_gradient(m, x, rule="guided", layers="layer2"),
        lambda m, x: backend.input_gradient(m, x, rule="deconvnet"),
        lambda m, x: backend.predict(m, x),
        lambda m, x: backend.default_layer(m, x),
    ],
    ids=["probe", "guided+layers", "deconvnet", "predict", "default_layer"],
)
@pytest.mark.parametrize("grad_mode", [True, False])
def test_model_left_as_found(call, grad_mode):
    model = _prepare(nets.seeded(nets.SmallResNet()))
    before = _state(model)
    with torch.set_grad_enabled(grad_mode):
        call(model, nets.images(2))
        assert torch.is_grad_enabled() is grad_mode
    _assert_same_state(before, _state(model))
    assert hook_count(model) == 0


@pytest.mark.parametrize("rule", [None, "plain", "guided", "deconvnet"])
def test_model_left_as_found_after_exception_in_forward(rule):
    model = _prepare(Failing())
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        if rule is None:
            backend.probe(model, nets.images(2), layers="net.layer1.conv1")
        else:
            backend.input_gradient(model, nets.images(2), rule=rule, layers="net.layer1")
    assert torch.is_grad_enabled()
    _assert_same_state(before, _state(model))
    assert hook_count(model) == 0
    assert not torch.overrides._is_torch_function_mode_enabled()


def test_training_mode_model_is_explained_as_is_and_its_statistics_kept():
    model = nets.seeded(nets.SmallResNet()).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = nets.images(4)
    result = backend.probe(model, x, layers="layer2")
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k
    # the forward used batch statistics: differs from the same weights in eval mode
    evaluated = backend.probe(copy.deepcopy(model).eval(), x, layers="layer2")
    assert not np.allclose(result.activations["layer2"], evaluated.activations["layer2"])


def test_repeated_calls_do_not_grow_memory():
    psutil = pytest.importorskip("psutil")
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)

    def explain_twice():
        backend.probe(model, x, layers="layer2")
        backend.input_gradient(model, x, rule="guided", layers="layer2")

    for _ in range(20):  # the allocator's first growth is not a leak
        explain_twice()
    gc.collect()
    rss = psutil.Process().memory_info().rss
    for _ in range(200):
        explain_twice()
    gc.collect()
    grown = psutil.Process().memory_info().rss - rss
    assert grown < 3 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 calls"
    assert hook_count(model) == 0


# --- guided backprop and deconvnet ----------------------------------------------------------------


@pytest.mark.parametrize("relu", list(nets.RELU_CALLS), ids=list(nets.RELU_CALLS))
@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_relu_rules_hand_worked_for_every_way_of_calling_relu(relu, rule):
    model = nets.HandReluNet(nets.RELU_CALLS[relu])
    result = backend.input_gradient(model, nets.HAND_X, target=0, rule=rule)
    assert result.gradient.dtype == np.float32 and result.gradient.shape == (1, 1, 1, 4)
    assert result.gradient.ravel().tolist() == nets.HAND_GRADIENTS[rule]
    assert result.scores.tolist() == [-2.0] and result.probe is None  # 2*1 + (-1)*4


def test_rule_lasts_one_call_only():
    model = nets.HandReluNet(nets.RELU_CALLS["F.relu"])
    backend.input_gradient(model, nets.HAND_X, target=0, rule="guided")
    x = torch.from_numpy(nets.HAND_X).requires_grad_()
    model(x).sum().backward()
    assert x.grad.ravel().tolist() == nets.HAND_GRADIENTS["plain"]
    plain = backend.input_gradient(model, nets.HAND_X, target=0)
    assert plain.gradient.ravel().tolist() == nets.HAND_GRADIENTS["plain"]


class GuidedRelu(torch.autograd.Function):
    """Independent Guided Backprop ReLU for the reference forward below."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (z > 0) * (g > 0)


def functional_net_by_hand(net, x, relu):
    x = relu(net.conv1(x))
    x = relu(net.conv2(x))
    x = relu(net.conv3(x))
    x = relu(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
    x = relu(net.fc1(x))
    return net.fc2(x)


def test_guided_through_functional_relus_equals_independent_implementation():
    net = nets.seeded(nets.FunctionalReluNet())
    x = nets.images(2)
    guided = backend.input_gradient(net, x, target=1, rule="guided").gradient
    plain = backend.input_gradient(net, x, target=1).gradient
    expected = {}
    for name, relu in [("guided", GuidedRelu.apply), ("plain", torch.relu)]:
        xg = x.clone().requires_grad_()
        functional_net_by_hand(net, xg, relu)[:, 1].sum().backward()
        expected[name] = xg.grad.numpy()
    np.testing.assert_allclose(guided, expected["guided"], **F32)
    np.testing.assert_allclose(plain, expected["plain"], **F32)
    assert not np.allclose(guided, plain, atol=1e-3)


def test_guided_with_layers_gives_plain_layer_gradients():
    model = nets.seeded(nets.VGGStyle())
    x = nets.images(2)
    for rule in ["guided", "deconvnet"]:
        combined = backend.input_gradient(model, x, target=3, rule=rule, layers=["features", "features.0"])
        alone = backend.input_gradient(model, x, target=3, rule=rule)
        plain = backend.probe(model, x, layers=["features", "features.0"], target=3)
        np.testing.assert_array_equal(combined.gradient, alone.gradient)
        assert combined.probe.layers == ["features", "features.0"]
        for name in combined.probe.layers:
            np.testing.assert_array_equal(combined.probe.activations[name], plain.activations[name])
            np.testing.assert_allclose(combined.probe.gradients[name], plain.gradients[name], **F32)
        guided_at_input = backend.input_gradient(model, x, target=3, rule=rule).gradient
        plain_at_input = backend.input_gradient(model, x, target=3).gradient
        assert not np.allclose(guided_at_input, plain_at_input, atol=1e-4)


def test_plain_input_gradient_equals_autograd():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    result = backend.input_gradient(model, x, target=[1, 7])
    reference = copy.deepcopy(model)
    xg = x.clone().requires_grad_()
    reference(xg).gather(1, torch.tensor([[1], [7]])).sum().backward()
    np.testing.assert_allclose(result.gradient, xg.grad.numpy(), **F32)
    assert result.targets.tolist() == [1, 7]


def test_model_editing_its_input_in_place():
    class EditsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            x.mul_(2)
            return self.conv(x).mean(dim=(2, 3))

    model = nets.seeded(EditsInput())
    x = nets.images(1)
    kept = x.clone()
    result = backend.input_gradient(model, x, target=0)
    assert torch.equal(x, kept)
    xg = x.clone().requires_grad_()
    model.conv(2 * xg).mean(dim=(2, 3))[:, 0].sum().backward()
    np.testing.assert_allclose(result.gradient, xg.grad.numpy(), **F32)


# --- targets ---------------------------------------------------------------------------------


def test_targets_none_int_list_callable():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(3)
    logits = model(x).detach().numpy()
    top = backend.probe(model, x)
    assert top.targets.tolist() == logits.argmax(1).tolist()
    fixed = backend.probe(model, x, target=4)
    assert fixed.targets.tolist() == [4, 4, 4]
    np.testing.assert_allclose(fixed.scores, logits[:, 4], **F32)
    listed = backend.probe(model, x, target=[0, 9, 2])
    np.testing.assert_allclose(listed.scores, logits[[0, 1, 2], [0, 9, 2]], **F32)
    contrast = backend.probe(model, x, target=lambda out: out[:, 1] - out[:, 0])
    assert contrast.targets.tolist() == [-1, -1, -1]
    np.testing.assert_allclose(contrast.scores, logits[:, 1] - logits[:, 0], **F32)
    # the gradient of a difference of scores is the difference of the gradients
    g1 = backend.probe(model, x, target=1).gradients["layer2"]
    g0 = backend.probe(model, x, target=0).gradients["layer2"]
    np.testing.assert_allclose(contrast.gradients["layer2"], g1 - g0, rtol=1e-4, atol=1e-6)


def test_callable_target_on_a_non_class_output():
    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.classes = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.classes(torch.relu(self.body(x)))

    model = nets.seeded(Segmenter())
    x = nets.images(2)
    region = lambda out: out[:, 1, 2:5, 2:5].sum(dim=(1, 2))  # noqa: E731
    result = backend.probe(model, x, layers="body", target=region)
    assert result.logits is None and result.targets.tolist() == [-1, -1]
    assert result.gradients["body"].shape == (2, 4, 8, 8)
    assert (result.gradients["body"][:, :, 0, :] == 0).all()  # outside the region's 3x3 reach
    with pytest.raises(ValueError, match="callable"):
        backend.probe(model, x, layers="body")


def test_target_errors():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.9"):
        backend.probe(model, x, target=10)
    with pytest.raises(ValueError, match="2 images"):
        backend.probe(model, x, target=[1, 2, 3])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        backend.probe(model, x, target=lambda out: out)
    assert hook_count(model) == 0


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_layer_names_closest():
    model = nets.seeded(nets.SmallResNet())
    with pytest.raises(KeyError, match=r"no layer named 'layer3'.*closest: .*layer1") as info:
        backend.probe(model, nets.images(1), layers="layer3")
    assert "layer2" in str(info.value)
    with pytest.raises(KeyError, match="closest"):
        backend.probe(model, nets.images(1), layers="layer2.conv3")
    with pytest.raises(ValueError, match="not a submodule"):
        backend.probe(model, nets.images(1), layers=nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="dotted name"):
        backend.probe(model, nets.images(1), layers=3)


def test_non_spatial_layer_without_reshape():
    model = nets.seeded(nets.SmallResNet())
    with pytest.raises(ValueError, match="not a spatial map.*reshape="):
        backend.probe(model, nets.images(1), layers="fc")
    assert hook_count(model) == 0


def test_layer_that_does_not_run():
    model = nets.seeded(nets.SmallResNet())
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError, match="'unused' did not run"):
        backend.probe(model, nets.images(1), layers=["layer2", "unused"])
    assert hook_count(model) == 0


def test_vit_tokens_with_reshape():
    model = nets.seeded(nets.TinyViT())
    x = nets.images(2, size=16)
    result = backend.probe(model, x, layers="blocks.1", reshape=common.vit_reshape)
    assert result.activations["blocks.1"].shape == (2, 16, 4, 4)
    acts, grads = reference_probe(model, x, ["blocks.1"])
    np.testing.assert_allclose(result.activations["blocks.1"], common.vit_reshape(acts["blocks.1"]), **F32)
    np.testing.assert_allclose(result.gradients["blocks.1"], common.vit_reshape(grads["blocks.1"]), **F32)
    with pytest.raises(ValueError, match="reshape="):
        backend.probe(model, x, layers="blocks.1")
    assert backend.default_layer(model, x) == "patch"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    x[1, 0, 3, 3] = bad
    for given in (x, x.numpy()):
        with pytest.raises(ValueError, match="NaN or Inf"):
            backend.probe(model, given)
        with pytest.raises(ValueError, match="NaN or Inf"):
            backend.input_gradient(model, given, rule="guided")


def test_wrong_rank_and_wrong_model():
    model = nets.seeded(nets.SmallResNet())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).*x\[None\]"):
        backend.probe(model, nets.images(1)[0])
    with pytest.raises(ValueError, match="got shape"):
        backend.predict(model, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        backend.probe(lambda x: x, nets.images(1))
    with pytest.raises(ValueError, match="unknown rule"):
        backend.input_gradient(model, nets.images(1), rule="smooth")
    assert backend.is_model(model) and not backend.is_model(object())
    assert get_backend(model) is backend


# --- predict, dtypes ----------------------------------------------------------------------------


def test_predict_equals_forward_in_chunks():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(5)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(backend.predict(model, x), expected, **F32)
    chunked = backend.predict(model, x.numpy(), batch_size=2)
    assert chunked.dtype == np.float32 and chunked.shape == (5, 10)
    np.testing.assert_allclose(chunked, expected, **F32)
    assert backend.to_numpy(x).dtype == np.float32 and np.array_equal(backend.to_numpy(x), x.numpy())


def test_dense_weight_is_classes_by_inputs():
    model = nets.seeded(nets.SmallResNet())
    W = backend.dense_weight(model, "fc")
    assert W.dtype == np.float32 and W.shape == (10, 16)
    np.testing.assert_array_equal(W, model.fc.weight.detach().numpy())
    W[0, 0] += 1  # a copy: editing it leaves the model alone
    assert not np.array_equal(W, model.fc.weight.detach().numpy())
    with pytest.raises(ValueError, match="not a Linear layer"):
        backend.dense_weight(model, "layer2")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_float32_close_to_float32_model(dtype):
    model = nets.seeded(nets.SmallResNet())
    low = copy.deepcopy(model).to(dtype)
    x = nets.images(2)
    full = backend.probe(model, x, layers="layer2", target=3)
    half = backend.probe(low, x, layers="layer2", target=3)
    tolerance = 0.02 if dtype is torch.float16 else 0.08
    for kind in ("activations", "gradients"):
        a, b = getattr(full, kind)["layer2"], getattr(half, kind)["layer2"]
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= tolerance * np.abs(a).max(), kind
    guided = backend.input_gradient(low, x.to(dtype), target=3, rule="guided")
    reference = backend.input_gradient(model, x, target=3, rule="guided")
    assert guided.gradient.dtype == np.float32
    assert np.abs(guided.gradient - reference.gradient).max() <= tolerance * np.abs(reference.gradient).max()
    assert backend.predict(low, x).dtype == np.float32
