"""Hugging Face transformers' ViT, DeiT (class and distillation tokens), Swin and ConvNeXt, randomly initialized
from tiny configs (no download): their ``ModelOutput`` is read through its ``logits``, the class targets are
recorded, the automatic layer is the last block's normalized tokens (Swin: the final norm, it has no class token),
and Grad-CAM equals a Grad-CAM written here with a forward hook.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from zoo_common import Case, by_hand_nchw, check_grad_cam, grad_cam_by_hand, run_every_method

import gradcam

TINY = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=5)


def vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(**TINY))


def deit():
    return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**TINY))


def swin():
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                     window_size=2, num_labels=5)
    return transformers.SwinForImageClassification(config)


def convnext():
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=5)
    return transformers.ConvNextForImageClassification(config)


CASES = {
    "hf ViT": Case(vit, 32, "vit.layers.1.layernorm_before", "NTC:1"),
    "hf DeiT (with teacher)": Case(deit, 32, "deit.layers.1.layernorm_before", "NTC:2"),
    "hf Swin": Case(swin, 32, "swin.layernorm", "NTC"),
    "hf ConvNeXt": Case(convnext, 32, "convnext.encoder.stages.1", "NCHW"),
}


@pytest.fixture(scope="module", params=list(CASES))
def zoo(request):
    case = CASES[request.param]
    torch.manual_seed(case.seed)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (2, 3, case.size, case.size)).astype(np.float32))
    return request.param, case, case.build().eval(), x


def grad_cam_with_a_hook(model, x, layer: str, layout: str) -> np.ndarray:
    kept = {}

    def keep(module, inputs, output):
        kept["A"] = output
        return output.clone()

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(pixel_values=x).logits
            (G,) = torch.autograd.grad(logits.max(dim=1).values.sum(), kept["A"])
    finally:
        handle.remove()
    A, G = (by_hand_nchw(t.detach().numpy(), layout) for t in (kept["A"], G))
    return grad_cam_by_hand(A, G)


def test_automatic_layer_layout_and_grad_cam_equal_a_hand_written_grad_cam(zoo):
    name, case, model, x = zoo
    ex = check_grad_cam(name, case, model, x, grad_cam_with_a_hook(model, x, case.layer, case.layout), "torch")
    logits = model(pixel_values=x).logits.detach().numpy()
    np.testing.assert_array_equal(ex.targets, logits.argmax(axis=1))  # class targets recorded, not -1
    np.testing.assert_allclose(ex.scores, logits.max(axis=1), rtol=1e-5)


def test_every_method_runs_on_every_model(zoo):
    name, case, model, x = zoo
    assert len(run_every_method(name, case, model, x)) == len(gradcam.METHODS)


def test_the_logits_are_noted_and_another_output_can_be_chosen():
    model = vit().eval()
    cam = gradcam.GradCAM(model, quiet=True)
    assert "returns a ModelOutput dataclass; explaining its 'logits'" in cam.notes[0]
    x = torch.rand(1, 3, 32, 32)
    by_field = gradcam.GradCAM(model, output="logits", quiet=True)(x, 2)
    np.testing.assert_allclose(by_field.raw, cam(x, 2).raw, rtol=1e-6)
