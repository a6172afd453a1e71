"""The real torchvision models, randomly initialized, in the benchmark environment (``make zoo``): torchvision does
not import beside the project's pinned torch, so this is a script for ``.venv-bench`` rather than a test of
``make test`` (whose replicas in ``torch_replicas.py`` mirror these models).

For each model: the automatic layer and its layout, and Grad-CAM against a Grad-CAM written here with a forward
hook and ``torch.autograd.grad``; prints the zoo table and exits 1 if a layer or a map is not the expected one.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch
import torchvision
from zoo_common import by_hand_nchw, grad_cam_by_hand, relative_difference

import gradcam

TOLERANCE = 1e-5


def detection_scores(out):
    """Each image's detection scores summed (every box kept: the score threshold is set to 0)."""
    return torch.stack([o["scores"].sum() for o in out])


def vit_b_16(weights=None):
    """torchvision's ViT-B/16 with a random head: torchvision initializes the head to zeros, so every score is 0
    and no layer has a gradient."""
    model = torchvision.models.vit_b_16(weights=weights)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def detector():
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0
    )
    return model


MODELS = {
    # name: (builder, input size, expected layer (None: any layer of the backbone), layout, target)
    "resnet50": (torchvision.models.resnet50, 224, "layer4", "NCHW", None),
    "vgg16 at 112 px": (torchvision.models.vgg16, 112, "features", "NCHW", None),
    "densenet121": (torchvision.models.densenet121, 224, "features", "NCHW", None),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, 224, "features", "NCHW", None),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, 224, "features", "NCHW", None),
    "convnext_tiny": (torchvision.models.convnext_tiny, 224, "features", "NCHW", None),
    "vit_b_16": (vit_b_16, 224, "encoder.layers.encoder_layer_11.ln_1", "NTC:1", None),
    "swin_t": (torchvision.models.swin_t, 224, "permute", "NCHW", None),
    "fasterrcnn_mobilenet_v3_large_fpn": (detector, 224, None, "NCHW", detection_scores),
}


def grad_cam_with_a_hook(model, x, layer, layout, target):
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
    return grad_cam_by_hand(*(by_hand_nchw(t.detach().numpy(), layout) for t in (kept["A"], G)))


def main() -> int:
    torch.manual_seed(0)
    failures = 0
    print("| model | automatic layer | layout | Grad-CAM vs hand-written (max rel. diff) | why |")
    print("|---|---|---|---|---|")
    for name, (build, size, expected, layout, target) in MODELS.items():
        model = build(weights=None).eval() if build is not detector else build().eval()
        x = torch.rand(2, 3, size, size)
        cam = gradcam.GradCAM(model, quiet=True)
        ex = cam(x, target)
        chosen = cam.backend.layer_choice(cam.model, x)
        difference = relative_difference(ex.raw, grad_cam_with_a_hook(model, x, chosen.name, chosen.layout, target))
        right = (chosen.name == expected if expected else chosen.name.startswith("backbone."))
        right = right and chosen.layout == layout and difference <= TOLERANCE and np.isfinite(ex.maps).all()
        failures += not right
        print(f"| {name} | `{chosen.name}` | {chosen.layout} | {difference:.1e} | {chosen.why} |"
              + ("" if right else " **not as expected**"), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
