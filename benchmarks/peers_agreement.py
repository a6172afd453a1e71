"""How far our maps are from the peers' on random-initialized torchvision networks, and how far once the one-line
recipe of the README's table ("Coming from pytorch-grad-cam, captum, torchcam or tf-keras-vis") is applied.

Not a test: the peers need torchvision, which does not import beside the project's torch, so this runs in
``.venv-bench`` (``make .venv-bench/.installed``)::

    .venv-bench/bin/python benchmarks/peers_agreement.py            # about 3 minutes on 2 cores

Every row compares normalized maps upsampled to the input (each library's own ``maps``), as the largest absolute
difference over the images and pixels, for the top-1 class of each image; the models are seeded, the images
uniform noise. ``--quick`` runs fewer models.
"""
from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import torch
import torchvision
from torch import nn

import gradcam

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=gradcam.explanation.GradcamWarning)


def model_and_input(name: str, size: int = 224, n: int = 2) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    return model, torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def top1(model: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(x).argmax(1).tolist()


def pgc(cls_name: str, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int], **options) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, cls_name)
    with cls(model=model, target_layers=[module(model, layer)], **options) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def ours(method: type, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int], **options) -> np.ndarray:
    return method(model, layer, **options)(x, target=classes).maps


def gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


ROWS: list[tuple[str, str, str, str, float, str, float]] = []


def row(model: str, method: str, peer: str, default: float, recipe: str = "", with_recipe: float = float("nan")):
    ROWS.append((model, method, peer, "", default, recipe, with_recipe))
    print(f"{model:20s} {method:18s} {peer:18s} {default:9.2e}  {recipe:40s} {with_recipe:9.2e}", flush=True)


def same_method_rows(name: str, layer: str) -> None:
    """Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM and Eigen-CAM beside pytorch-grad-cam's."""
    model, x = model_and_input(name)
    classes = top1(model, x)
    for ours_cls, peer_cls in (("GradCAM", "GradCAM"), ("LayerCAM", "LayerCAM"), ("HiResCAM", "HiResCAM")):
        row(name, ours_cls, "pytorch-grad-cam", gap(ours(getattr(gradcam, ours_cls), model, layer, x, classes),
                                                    pgc(peer_cls, model, layer, x, classes)))
    peer = pgc("GradCAMPlusPlus", model, layer, x, classes)
    row(name, "GradCAMPlusPlus", "pytorch-grad-cam", gap(ours(gradcam.GradCAMPlusPlus, model, layer, x, classes), peer),
        "GradCAMPlusPlus(eps=1e-6)", gap(ours(gradcam.GradCAMPlusPlus, model, layer, x, classes, eps=1e-6), peer))
    peer = pgc("XGradCAM", model, layer, x, classes)
    row(name, "XGradCAM", "pytorch-grad-cam", gap(ours(gradcam.XGradCAM, model, layer, x, classes), peer),
        "XGradCAM(eps=1e-7)", gap(ours(gradcam.XGradCAM, model, layer, x, classes, eps=1e-7), peer))
    eigen_rows(name, model, layer, x, classes)


def eigen_rows(name: str, model: nn.Module, layer: str, x: torch.Tensor, classes: list[int]) -> None:
    """pytorch-grad-cam centres, and keeps the sign LAPACK returns, where ours picks the pole with more energy:
    our centred map is compared with the peer's map of the same pole (its map, or that of its projection
    negated), and the images where the peer's pole is the other one are counted."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    peer = pgc("EigenCAM", model, layer, x, classes)
    captured = {}
    handle = module(model, layer).register_forward_hook(lambda m, i, o: captured.setdefault("A", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    projection = get_2d_projection(captured["A"].numpy())
    poles = [gradcam.reference.normalize(gradcam.reference.upsample(np.maximum(sign * projection, 0), x.shape[2:]))
             for sign in (1, -1)]
    centred = ours(gradcam.EigenCAM, model, layer, x, classes, centred=True)
    other = [gap(centred[n], poles[0][n]) > gap(centred[n], poles[1][n]) for n in range(len(x))]
    same_pole = np.stack([poles[1][n] if flip else poles[0][n] for n, flip in enumerate(other)])
    zeros = lambda maps: int((maps.reshape(len(maps), -1).max(axis=1) == 0).sum())  # noqa: E731
    default = ours(gradcam.EigenCAM, model, layer, x, classes)
    row(name, f"EigenCAM (zero maps: peer {zeros(peer)}, ours {zeros(default)} of {len(x)})", "pytorch-grad-cam",
        gap(default, peer),
        f"centred=True, same pole ({sum(other)} flipped)", gap(centred, same_pole))


def eigen_sign_rows(name: str, layer: str) -> None:
    """Eigen-CAM on 4 images of a network whose channel mean at the layer is about 0."""
    model, x = model_and_input(name, n=4)
    eigen_rows(name, model, layer, x, top1(model, x))


def score_cam_rows() -> None:
    model, x = model_and_input("resnet18", size=112, n=1)
    classes = top1(model, x)
    peer = pgc("ScoreCAM", model, "layer4", x, classes)
    default = ours(gradcam.ScoreCAM, model, "layer4", x, classes)
    recipe = ours(gradcam.ScoreCAM, model, "layer4", x, classes, weighting="channels")
    row("resnet18 112px", "ScoreCAM", "pytorch-grad-cam", gap(default, peer), 'ScoreCAM(weighting="channels")',
        gap(recipe, peer))


def captum_rows(name: str, layer: str) -> None:
    from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

    model, x = model_and_input(name)
    classes = top1(model, x)
    target = torch.tensor(classes)
    raw = LayerGradCam(model, module(model, layer)).attribute(x, target=target, relu_attributions=True)
    up = LayerAttribution.interpolate(raw, x.shape[2:], interpolate_mode="bilinear").detach()[:, 0].numpy()
    flat = up.reshape(len(up), -1)
    normalized = ((flat - flat.min(1, keepdims=True)) / (flat.max(1, keepdims=True) - flat.min(1, keepdims=True)))
    row(name, "GradCAM", "captum LayerGradCam", gap(ours(gradcam.GradCAM, model, layer, x, classes),
                                                   normalized.reshape(up.shape)))
    # captum multiplies the guided gradient by the raw Grad-CAM map upsampled with nearest neighbours; ours by
    # the map upsampled bilinearly and normalized. Compared after dividing each by its largest |value|.
    guided = GuidedGradCam(model, module(model, layer))
    scale = lambda g: g / np.abs(g).reshape(len(g), -1).max(axis=1)[:, None, None, None]  # noqa: E731
    mine = scale(ours(gradcam.GuidedGradCAM, model, layer, x, classes))
    nearest = scale(guided.attribute(x, target=target).detach().numpy())
    bilinear = scale(guided.attribute(x, target=target, interpolate_mode="bilinear").detach().numpy())
    raw_map = gradcam.reference.upsample(gradcam.GradCAM(model, layer)(x, target=classes).raw, x.shape[2:])
    recipe = scale(gradcam.GuidedBackprop(model)(x, target=classes).maps * raw_map[:, None])
    row(name, "GuidedGradCAM (/max)", "captum GuidedGradCam", gap(mine, nearest),
        "GuidedBackprop maps x upsample(GradCAM raw)", gap(recipe, bilinear))
    row(name, "  of which: nearest", "captum GuidedGradCam", gap(nearest, bilinear), 'interpolate_mode="bilinear"', 0.0)


def torchcam_rows(name: str, layer: str) -> None:
    from torchcam.methods import GradCAM

    model, x = model_and_input(name)
    classes = top1(model, x)
    with GradCAM(model, layer) as extractor:
        out = model(x)
        (raw,) = extractor(classes, out)
    maps = torch.nn.functional.interpolate(raw[:, None], x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = maps.detach().numpy().reshape(len(maps), -1)
    normalized = (flat - flat.min(1, keepdims=True)) / (flat.max(1, keepdims=True) - flat.min(1, keepdims=True))
    row(name, "GradCAM", "torchcam", gap(ours(gradcam.GradCAM, model, layer, x, classes),
                                        normalized.reshape(maps.shape)))


def inplace_relu_rows() -> None:
    """DenseNet: ``features`` (ending in norm5) is followed by ``F.relu(inplace=True)``, which overwrites the
    output a peer's forward hook stored: the peer weighs ``ReLU(A)`` with the gradient of ``A``, a mix of two
    layers. A forward hook that returns a copy (``o.clone()``) leaves the stored output alone, and the peers
    then agree with ours, which reads the layer's own output."""
    from captum.attr import LayerAttribution, LayerGradCam

    model, x = model_and_input("densenet121")
    classes = top1(model, x)
    mine = ours(gradcam.GradCAM, model, "features", x, classes)

    def captum_maps() -> np.ndarray:
        raw = LayerGradCam(model, model.features).attribute(x, target=torch.tensor(classes), relu_attributions=True)
        up = LayerAttribution.interpolate(raw, x.shape[2:], interpolate_mode="bilinear").detach()[:, 0].numpy()
        return gradcam.reference.normalize(up)

    def pgc_maps(protect: bool) -> np.ndarray:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.features]) as cam:
            # registered after the peer's own hook, so the peer stores the output and the ReLU gets a copy
            handle = model.features.register_forward_hook(lambda m, i, o: o.clone()) if protect else None
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
            if handle is not None:
                handle.remove()
        return maps

    def torchcam_maps(protect: bool) -> np.ndarray:
        from torchcam.methods import GradCAM

        with GradCAM(model, "features") as extractor:
            handle = model.features.register_forward_hook(lambda m, i, o: o.clone()) if protect else None
            (raw,) = extractor(classes, model(x))
            if handle is not None:
                handle.remove()
        up = torch.nn.functional.interpolate(raw[:, None], x.shape[2:], mode="bilinear", align_corners=False)
        return gradcam.reference.normalize(up[:, 0].detach().numpy())

    before = {"pytorch-grad-cam": pgc_maps(False), "torchcam": torchcam_maps(False), "captum": captum_maps()}
    after = {"pytorch-grad-cam": pgc_maps(True), "torchcam": torchcam_maps(True), "captum": captum_maps()}
    for peer in before:
        row("densenet121", "GradCAM", peer, gap(mine, before[peer]), "peer, then a hook returning o.clone()",
            gap(mine, after[peer]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet50 only, no Score-CAM")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"{'model':20s} {'method':18s} {'peer':18s} {'default':>9s}  {'recipe':40s} {'after':>9s}")
    same_method_rows("resnet50", "layer4")
    captum_rows("resnet50", "layer4")
    torchcam_rows("resnet50", "layer4")
    if args.quick:
        return
    same_method_rows("mobilenet_v3_small", "features")
    same_method_rows("vgg16", "features.29")
    eigen_sign_rows("mobilenet_v3_small", "features")
    eigen_sign_rows("convnext_tiny", "features")
    inplace_relu_rows()
    score_cam_rows()


if __name__ == "__main__":
    main()
