"""The PyTorch zoo: replicas of torchvision's and timm's architectures (``torch_replicas``), each with the
automatic layer and layout it must get, Grad-CAM against a Grad-CAM written here with a forward hook and
``torch.autograd.grad`` (to 1e-5), and every method run on it.

The real torchvision models run in the benchmark environment (``make zoo``), where torchvision imports.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_replicas as replicas
from zoo_common import Case, by_hand_nchw, check_grad_cam, grad_cam_by_hand, run_every_method

import gradcam


def first_box_class_1(out):
    """The detector's score of class 1 for each image's first proposal."""
    return out["scores"][:, 0, 1]


def region_class_2(out):
    """The segmenter's class-2 logits summed over the image's upper-left quarter."""
    h, w = out.shape[-2:]
    return out[:, 2, : h // 2, : w // 2].sum(dim=(1, 2))


CASES = {
    "resnet50": Case(replicas.ResNet, 64, "layer4", "NCHW", fc="fc"),
    "vgg16 at 96 px": Case(replicas.VGG, 96, "features", "NCHW"),
    "densenet121": Case(replicas.DenseNet, 32, "features", "NCHW", fc="classifier"),
    "mobilenet_v3_small": Case(replicas.MobileNetV3, 64, "features", "NCHW"),
    "efficientnet_b0": Case(replicas.EfficientNet, 64, "features", "NCHW"),
    "convnext_tiny": Case(replicas.ConvNeXt, 64, "features", "NCHW"),
    "swin_t": Case(replicas.Swin, 64, "permute", "NCHW"),
    "vit_b_16": Case(replicas.ViT, 32, "encoder.layers.encoder_layer_1.ln_1", "NTC:1", seed=1),
    "deit (timm, distilled)": Case(replicas.DeiT, 32, "blocks.1.norm1", "NTC:2", seed=1),
    "faster r-cnn": Case(replicas.FasterRCNN, 64, "backbone", "NCHW", target=first_box_class_1),
    "u-net": Case(replicas.UNet, 32, "dec1", "NCHW", target=region_class_2),
}


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(size).uniform(0, 1, (n, 3, size, size)).astype(np.float32))


def grad_cam_with_a_hook(model, x, layer: str, layout: str, target) -> np.ndarray:
    """Grad-CAM written out: a forward hook keeps the layer's output (and hands on a copy, so that an in-place op
    after the layer cannot change what was kept), ``torch.autograd.grad`` gives ``dy/dA``."""
    kept = {}

    def keep(module, inputs, output):
        kept["A"] = output
        return output.clone()

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = model(x)
            score = target(out) if target is not None else out.max(dim=1).values
            (G,) = torch.autograd.grad(score.sum(), kept["A"])
    finally:
        handle.remove()
    A, G = (by_hand_nchw(t.detach().numpy(), layout) for t in (kept["A"], G))
    return grad_cam_by_hand(A, G)


@pytest.fixture(scope="module", params=list(CASES))
def zoo(request):
    case = CASES[request.param]
    return request.param, case, replicas.seeded(case.build(), case.seed), images(case.size)


def test_automatic_layer_layout_and_grad_cam_equal_a_hand_written_grad_cam(zoo):
    name, case, model, x = zoo
    hand = grad_cam_with_a_hook(model, x, case.layer, case.layout, case.target)
    check_grad_cam(name, case, model, x, hand, "torch")


def test_every_method_runs_on_every_model(zoo):
    name, case, model, x = zoo
    outcome = run_every_method(name, case, model, x)
    assert len(outcome) == len(gradcam.METHODS)


def test_channels_last_and_token_layers_are_read_in_their_layout():
    # torchvision Swin's final norm is channels-last: read as NHWC it is the same map as the permuted one
    model, x = replicas.seeded(replicas.Swin()), images(64)
    by_norm = gradcam.GradCAM(model, "norm", quiet=True)(x)
    by_permute = gradcam.GradCAM(model, "permute", quiet=True)(x)
    assert by_norm.raw.shape == (2, 8, 8)
    np.testing.assert_allclose(by_norm.raw, by_permute.raw, rtol=1e-5, atol=1e-7)
    # a ConvNeXt block's LayerNorm runs on (N, h, w, C)
    convnext = replicas.seeded(replicas.ConvNeXt())
    layer = "features.3.0.block.2"
    probe = gradcam.GradCAM(convnext, quiet=True).backend.probe(convnext, images(64), layer)
    assert probe.layouts == {layer: "NHWC"} and probe.activations[layer].shape == (2, 16, 8, 8)
    # DeiT's two leading tokens are dropped without being told; a wrong count is refused
    deit = replicas.seeded(replicas.DeiT())
    with pytest.raises(ValueError, match="15 tokens after 3 special token"):
        gradcam.GradCAM(deit, "blocks.1.norm1", layout="NTC:3", quiet=True)(images(32))


def test_a_layer_whose_rows_are_boxes_is_refused_with_the_automatic_layer():
    model = replicas.seeded(replicas.FasterRCNN())
    with pytest.raises(ValueError, match=r"first dimension is not the batch.*the automatic layer of this model is "
                                         r"'backbone'"):
        gradcam.GradCAM(model, "roi_pool", quiet=True)(images(64), first_box_class_1)


def test_the_adaptive_pool_that_pools_up_is_passed_over_and_said():
    model = replicas.seeded(replicas.VGG())
    chosen = gradcam.GradCAM(model).backend.layer_choice(model, images(96))
    assert chosen.name == "features" and chosen.layouts["avgpool"] == "NCHW, resamples up"
    assert "avgpool" in chosen.why


def test_a_compiled_model_that_has_run_and_a_data_parallel_model_are_explained():
    model, x = replicas.seeded(replicas.ResNet()), images(64)
    expected = gradcam.GradCAM(model, quiet=True)(x)
    compiled = torch.compile(model, backend="eager")
    compiled(x)  # has run: its hooks would never fire again
    for wrapped in (compiled, torch.nn.DataParallel(model)):
        cam = gradcam.GradCAM(wrapped, quiet=True)
        ex = cam(x)
        assert ex.layers == ["layer4"] and cam.notes and "explaining" in cam.notes[0]
        np.testing.assert_allclose(ex.raw, expected.raw, rtol=1e-5, atol=1e-7)


def test_output_selects_one_entry_of_a_dict_output_and_an_unknown_one_lists_the_keys():
    model, x = replicas.seeded(replicas.FasterRCNN()), images(64)

    def first_box(scores):
        return scores[:, 0, 1]

    by_output = gradcam.GradCAM(model, output="scores", quiet=True)(x, first_box)
    by_callable = gradcam.GradCAM(model, quiet=True)(x, first_box_class_1)
    np.testing.assert_allclose(by_output.raw, by_callable.raw, rtol=1e-6)
    with pytest.raises(KeyError, match=r"no 'logits'; it has keys \['boxes', 'scores'\]"):
        gradcam.GradCAM(model, output="logits", quiet=True)(x, first_box)


def test_a_final_softmax_of_a_sequential_is_left_out_unless_the_probability_is_asked_for():
    body = replicas.seeded(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ))
    with_softmax = torch.nn.Sequential(*body, torch.nn.Softmax(dim=1))
    x = images(16)
    logit = gradcam.GradCAM(with_softmax, "1", quiet=True)
    probability = gradcam.GradCAM(with_softmax, "1", probability=True, quiet=True)
    assert "before the final softmax" in logit.notes[0]
    assert probability.notes[0].startswith("the explained score is a probability")
    np.testing.assert_allclose(logit(x).raw, gradcam.GradCAM(body, "1", quiet=True)(x).raw, rtol=1e-6)
    assert not np.allclose(probability(x).raw, logit(x).raw)


def test_guided_backprop_counts_the_relus_it_rewrote():
    from gradcam.backends import torch as backend

    assert backend.input_gradient(replicas.seeded(replicas.ResNet()), images(64), rule="guided").relu_count == 13
    assert backend.input_gradient(replicas.seeded(replicas.EfficientNet()), images(64), rule="guided").relu_count == 0


def test_gradcam_layers_marks_the_automatic_layer_reads_each_layer_and_says_why(capsys):
    from gradcam.cli import main

    factory = str(Path(__file__).with_name("torch_replicas.py")) + ":ViT"
    assert main(["layers", "--model", factory, "--image-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and "encoder.layers.encoder_layer_1.ln_1" in marked[0] and marked[0].endswith("NTC:1")
    assert any(line.split()[0] == "conv_proj" and line.endswith("NCHW") for line in lines)
    assert any(line.split()[0] == "heads" and line.endswith("the model's output") for line in lines)
    why = next(line for line in lines if line.startswith("automatic layer"))
    assert "transformer" in why and "encoder.ln" in why
