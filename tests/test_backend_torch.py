"""What only the PyTorch backend has: forward hooks that start the graph at the layer, in-place ops, grad and
inference modes, ``requires_grad`` flags and buffers left as found, ReLU rules for every way torch can call a
ReLU (a ``TorchFunctionMode``), half precision, memory. Checked against autograd on the full graph.

The contract that every backend keeps (hand-worked numbers, targets, errors, layer listings, predict) is tested
once for all in ``test_backend_contract.py``.
"""
from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import seeds
import torch_nets as nets
from torch import nn

from gradcam.backends import common
from gradcam.backends import torch as backend

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


# --- equality with autograd on the full graph ------------------------------------------------------


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


def test_in_place_relu_module_called_twice_is_taken_at_its_last_call():
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


class EditsInPlace(nn.Module):
    """conv -> ``edit`` -> conv2 -> GAP -> dense, where ``edit`` is "relu" (an in-place ReLU on the first conv's
    output), "no_grad" (that output doubled in place under ``no_grad``), "second" (the second conv's output
    edited in place by ``+=``) or None; ``edited=False`` runs the same arithmetic out of place (the reference)."""

    def __init__(self, edit, edited=True):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.edit, self.edited, self.forwards = edit, edited, 0

    def forward(self, x):
        self.forwards += 1
        h = self.conv(x)
        if self.edit == "relu":
            h = torch.relu_(h) if self.edited else torch.relu(h)
        if self.edit == "no_grad":
            with torch.no_grad():
                h.mul_(2) if self.edited else None
            h = h if self.edited else h.detach() * 2 + (h - h.detach())  # same value, gradient as if untouched
        g = self.conv2(h)
        if self.edit == "second":
            g = g.add_(1) if self.edited else g + 1
        return self.head(g.mean(dim=(2, 3)))


@pytest.mark.parametrize("edit", ["relu", "no_grad", "second"])
def test_a_captured_output_edited_in_place_downstream_keeps_the_value_it_had(edit):
    """The hooks hand on the captured tensor itself; a forward that edited one in place is run again with copies
    (two forwards), and the activations and gradients are those of the same model written out of place."""
    model = nets.seeded(EditsInPlace(edit))
    reference = copy.deepcopy(model)
    reference.edited = False
    x = nets.images(2)
    got = backend.probe(model, x, layers=["conv", "conv2"], target=2)
    want = backend.probe(reference, x, layers=["conv", "conv2"], target=2)
    assert (model.forwards, reference.forwards) == (2, 1)
    for name in ("conv", "conv2"):
        np.testing.assert_allclose(got.activations[name], want.activations[name], **F32)
        np.testing.assert_allclose(got.gradients[name], want.gradients[name], **F32)
    np.testing.assert_allclose(got.activations["conv"], model.conv(x).detach().numpy(), **F32)


def test_a_model_that_edits_nothing_in_place_runs_one_forward():
    model = nets.seeded(EditsInPlace(None))
    backend.probe(model, nets.images(2), layers=["conv", "conv2"])
    assert model.forwards == 1


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


def test_layer_given_as_module_and_float64_numpy_input():
    model = nets.seeded(nets.SmallResNet())
    x = nets.images(2)
    by_module = backend.probe(model, x.numpy().astype(np.float64), layers=[model.layer2])
    by_name = backend.probe(model, x, layers="layer2")
    assert by_module.layers == ["layer2"]
    np.testing.assert_array_equal(by_module.gradients["layer2"], by_name.gradients["layer2"])


def test_layer_that_is_not_a_submodule_or_not_a_name_is_refused():
    model = nets.seeded(nets.SmallResNet())
    with pytest.raises(ValueError, match="not a submodule"):
        backend.probe(model, nets.images(1), layers=nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="dotted name"):
        backend.probe(model, nets.images(1), layers=3)


def test_layer_that_does_not_run():
    model = nets.seeded(nets.SmallResNet())
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError, match="'unused' did not run"):
        backend.probe(model, nets.images(1), layers=["layer2", "unused"])
    assert nets.hook_count(model) == 0


def test_vit_tokens_with_reshape_equal_autograd():
    model = nets.seeded(nets.TinyViT())
    x = nets.images(2, size=16)
    result = backend.probe(model, x, layers="blocks.1", reshape=common.vit_reshape)
    assert result.activations["blocks.1"].shape == (2, 16, 4, 4)
    acts, grads = reference_probe(model, x, ["blocks.1"])
    np.testing.assert_allclose(result.activations["blocks.1"], common.vit_reshape(acts["blocks.1"]), **F32)
    np.testing.assert_allclose(result.gradients["blocks.1"], common.vit_reshape(grads["blocks.1"]), **F32)
    # without reshape the layout is inferred from the shape (one class token, a 4x4 grid), and so are the names
    for layout, read_as in ((None, "NTC:1"), ("NTC:1", "NTC:1"), ("ntc:1:4x4", "NTC:1:4x4")):
        inferred = backend.probe(model, x, layers="blocks.1", reshape=layout)
        np.testing.assert_array_equal(inferred.activations["blocks.1"], result.activations["blocks.1"])
        np.testing.assert_array_equal(inferred.gradients["blocks.1"], result.gradients["blocks.1"])
        assert inferred.layouts == {"blocks.1": read_as}
    with pytest.raises(ValueError, match="do not form a square grid"):
        backend.probe(model, x, layers="blocks.1", reshape="NTC")
    # the last block's first norm: the final norm and norm2 reach the head through the class token only
    assert backend.default_layer(model, x) == "blocks.1.norm1"


# --- the model is left as found: grad mode, hooks, flags, buffers ------------------------------------


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
def test_model_left_as_found_in_either_grad_mode(call, grad_mode):
    model = nets.prepared(nets.seeded(nets.SmallResNet()))
    with torch.set_grad_enabled(grad_mode):
        before = nets.model_state(model)
        call(model, nets.images(2))
        assert torch.is_grad_enabled() is grad_mode
        assert nets.model_state(model) == before
    assert nets.hook_count(model) == 0


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
    assert nets.hook_count(model) == 0


# --- guided backprop and deconvnet through torch's ReLU calls ---------------------------------------------


def test_rule_lasts_one_call_only():
    model = nets.HandReluNet(nets.RELU_CALLS["F.relu"])
    backend.input_gradient(model, seeds.HAND_X, target=0, rule="guided")
    x = torch.from_numpy(seeds.HAND_X).requires_grad_()
    model(x).sum().backward()
    assert x.grad.ravel().tolist() == seeds.HAND_GRADIENTS["plain"]
    plain = backend.input_gradient(model, seeds.HAND_X, target=0)
    assert plain.gradient.ravel().tolist() == seeds.HAND_GRADIENTS["plain"]


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


# --- dtypes and copies -----------------------------------------------------------------------------


def test_dense_weight_is_a_copy():
    model = nets.seeded(nets.SmallResNet())
    W = backend.dense_weight(model, "fc")
    W[0, 0] += 1  # editing it leaves the model alone
    assert not np.array_equal(W, model.fc.weight.detach().numpy())


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
