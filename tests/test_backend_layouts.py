"""Layouts and the automatic-layer rule without any framework (``gradcam.backends.layouts`` and ``.choice``):
how an output shape reads for an input size, what is refused and why, and the rule on listings shaped like the
real models' (torchvision, timm, Hugging Face). docs/layers.md states both rules."""
from __future__ import annotations

import numpy as np
import pytest

from gradcam.backends import choice, layouts
from gradcam.backends.choice import LayerInfo
from gradcam.backends.layouts import Layout


@pytest.mark.parametrize(
    "shape, native, size, expected",
    [
        ((1, 2048, 7, 7), "NCHW", (224, 224), "NCHW"),  # resnet50 layer4
        ((1, 7, 7, 768), "NCHW", (224, 224), "NHWC"),  # torchvision swin_t norm: as NCHW its grid is 7x768
        ((1, 7, 7, 768), "NHWC", (224, 224), "NHWC"),  # Keras
        ((1, 8, 8, 8), "NHWC", (16, 16), "NHWC"),  # both readings fit: the framework's own
        ((1, 64, 32, 48), "NCHW", (128, 192), "NCHW"),  # a non-square input
        ((1, 4, 5, 512), "NCHW", (100, 150), "NHWC"),  # rounded grid sides: within one cell
        ((1, 197, 768), "NCHW", (224, 224), "NTC:1"),  # ViT-B/16
        ((1, 198, 384), "NCHW", (224, 224), "NTC:2"),  # DeiT with its distillation token
        ((1, 201, 384), "NCHW", (224, 224), "NTC:5"),  # a class token and four registers
        ((1, 49, 768), "NCHW", (224, 224), "NTC"),  # Hugging Face Swin's last stage
        ((1, 281, 768), "NCHW", (224, 320), "NTC:1:14x20"),  # ViT-B/16 on a 224x320 image
    ],
)
def test_inferred_layouts(shape, native, size, expected):
    assert str(layouts.infer(shape, native, size)) == expected


@pytest.mark.parametrize(
    "shape, size, words",
    [
        ((1, 17, 8), (12, 12), "could be 'NTC:1' or 'NTC:8'"),  # 4x4 + 1 and 3x3 + 8 both divide 12
        ((1, 50, 64), (100, 100), "no patch grid fits"),  # 7x7 + 1 tokens, but 7 does not divide 100
        ((1, 3, 50, 64), (32, 32), "pass layout='NCHW' or layout='NHWC'"),  # (N, heads, T, head_dim)
        ((1, 10), (32, 32), "not a spatial map"),
    ],
)
def test_unclear_layouts_are_refused_with_what_to_pass(shape, size, words):
    with pytest.raises(layouts.LayoutError, match=words.replace("(", r"\(").replace(")", r"\)")):
        layouts.infer(shape, "NCHW", size)


def test_names_parse_and_print_back():
    assert layouts.parse("nhwc") == Layout("NHWC")
    assert layouts.parse("NTC:2") == Layout("NTC", 2) and str(Layout("NTC", 2)) == layouts.DEIT
    assert layouts.parse("NTC:1:14x20") == Layout("NTC", 1, (14, 20))
    with pytest.raises(ValueError, match="unknown layout 'CHW'"):
        layouts.parse("CHW")


def test_reading_moves_channels_first_and_drops_special_tokens():
    grid = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)  # NCHW
    nhwc = grid.transpose(0, 2, 3, 1)
    tokens = np.concatenate([np.full((2, 1, 3), -1.0), nhwc.reshape(2, 8, 3)], axis=1)  # class token first
    for array, layout in ((grid, "NCHW"), (nhwc, "NHWC"), (tokens, "NTC:1:2x4")):
        out, read = layouts.read("l", array, layout, "NCHW", (4, 8), 2)
        np.testing.assert_array_equal(out, grid)
        assert out.dtype == np.float32 and str(read) == layout


def test_a_layer_whose_rows_are_boxes_is_not_batch_first():
    with pytest.raises(layouts.NotBatchFirstError, match="first dimension is not the batch of 2 image"):
        layouts.read("roi_heads.box_roi_pool", np.zeros((1820, 256, 7, 7)), None, "NCHW", (224, 224), 2)


def info(name, shape, **flags):
    return LayerInfo(name, shape, "NCHW", **flags)


def choose(infos, size=(224, 224), depends=lambda name: True, output_shape=None):
    return choice.choose(infos, size, 1, depends, output_shape)


def test_an_adaptive_pool_that_pools_up_is_passed_over():
    infos = [info("features.28", (1, 512, 3, 3)), info("features", (1, 512, 3, 3)),
             info("avgpool", (1, 512, 7, 7), weighted=False, resamples=True), info("classifier", (1, 10))]
    chosen = choose(infos, (112, 112))
    assert chosen.name == "features" and "avgpool" in chosen.why
    assert chosen.layouts["avgpool"] == "NCHW, resamples up" and chosen.layouts["classifier"] == "-"


def test_a_vit_takes_the_last_norm_whose_patch_tokens_matter():
    infos = [info("conv_proj", (1, 768, 14, 14)), info("encoder.layers.11.ln_1", (1, 197, 768), normalization=True),
             info("encoder.layers.11.mlp", (1, 197, 768)), info("encoder.layers.11.ln_2", (1, 197, 768),
             normalization=True), info("encoder.ln", (1, 197, 768), normalization=True), info("heads", (1, 1000))]
    asked = []

    def depends(name):
        asked.append(name)
        return name == "encoder.layers.11.ln_1"

    chosen = choose(infos, depends=depends)
    assert (chosen.name, chosen.layout) == ("encoder.layers.11.ln_1", "NTC:1")
    assert asked == ["encoder.ln", "encoder.layers.11.ln_2", "encoder.layers.11.ln_1"]
    assert "transformer" in chosen.why and "encoder.ln" in chosen.why


def test_a_detector_passes_over_its_proposal_head_and_its_roi_rows():
    infos = [info("backbone", (1, 16, 8, 8)), info("rpn.head.conv", (1, 16, 8, 8)),
             info("roi_pool", (3, 16, 2, 2)), info("box_head", (3, 32))]
    chosen = choose(infos, (64, 64), depends=lambda name: name == "backbone")
    assert chosen.name == "backbone" and chosen.layouts["roi_pool"] == "not batch-first"


def test_the_layer_that_returns_a_segmentation_output_is_not_chosen():
    infos = [info("dec1", (1, 8, 32, 32)), info("head", (1, 3, 32, 32))]
    chosen = choose(infos, (32, 32), output_shape=(1, 3, 32, 32))
    assert chosen.name == "dec1" and chosen.layouts["head"] == "the model's output"


def test_no_candidate_asks_for_a_layer_and_a_layout():
    with pytest.raises(ValueError, match="pass layer= explicitly, with layout="):
        choose([info("fc", (1, 10))])
