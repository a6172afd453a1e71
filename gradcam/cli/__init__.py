"""The ``gradcam`` command: explain images, compare methods in one figure, list a model's layers.

With no image it explains the bundled sample images with the embedded default model, so a first run needs
no download and no argument: ``gradcam explain`` writes heat maps, overlays and ``summary.json`` to results/.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from gradcam.batch.errors import JobError
from gradcam.batch.job import one_line
from gradcam.batch.loading import LoadedModel, ModelSpec, load_model
from gradcam.methods import METHODS

# The largest --image-size side: every image of a batch, and the blank image that checks the settings, is
# built at this size, so a typo such as 100000 must not ask for tens of GB before any work starts.
MAX_IMAGE_SIDE = 4096
MAX_CELL_SIZE = 1024

MODEL_HELP = (
    "the model: 'default' (the embedded model, trained on synthetic shapes), 'biased' (its twin trained with a "
    "spurious corner mark), torchvision:NAME, timm:NAME, keras:NAME (when those packages are installed), a .keras "
    "file, or a factory path/to/file.py:function or package.module:function returning a model (default: default)"
)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (status 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or H,W, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(1 <= v <= MAX_IMAGE_SIDE for v in values):
        raise argparse.ArgumentTypeError(
            f"image size must be N or H,W with each side from 1 to {MAX_IMAGE_SIDE} pixels, got {text!r}"
        )
    return values[0], values[1]


def _counted(largest: int | None = None) -> Callable[[str], int]:
    """An argparse type for a whole number from 1 to ``largest``."""

    def counted(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 or (largest is not None and value > largest):
            upper = f" from 1 to {largest}" if largest is not None else " of at least 1"
            raise argparse.ArgumentTypeError(f"expected a whole number{upper}, got {text!r}")
        return value

    return counted


def _share(text: str) -> float:
    """An argparse type for a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def check_output_dir(folder: Path) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be written (nothing is created).

    The nearest part of ``folder`` that exists must be a folder in which a file can be made: the check makes
    and removes a temporary file there, which is what the run will do, whatever the permission bits say.

    Raises
    ------
    JobError
        Naming the folder and why.
    """
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"is inside {existing}, which is not a folder"
        raise JobError(f"--output-dir {folder} {what}; give a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise JobError(f"--output-dir {folder} cannot be written ({error.strerror or error})") from None


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument(
        "--weights", default=None, help="a PyTorch state_dict (loaded with weights_only=True) or Keras weights file"
    )
    parser.add_argument(
        "--backend", default=None, help="framework of the embedded model: torch (default), tensorflow or jax"
    )
    parser.add_argument("--device", default=None, help="PyTorch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--image-size", type=_size, default=None, help="resize inputs to N or H,W (default: the model's size)"
    )


def _add_method_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--method", nargs="+", default=[default], metavar="METHOD",
        help=f"one or more of: {', '.join(METHODS)}, or all (default: {default})",
    )
    parser.add_argument("--layer", default=None, help="layer to explain (default: the model's last spatial layer)")
    parser.add_argument("--class-id", type=int, default=None, help="class to explain (default: the top-1 class)")
    parser.add_argument("--fc-layer", default=None, help="for --method cam: the dense layer after global pooling")
    parser.add_argument(
        "--n-samples", type=_counted(), default=8, help="noisy copies for smoothgradcam++ (default 8)"
    )
    parser.add_argument(
        "--noise-level", type=_share, default=0.15,
        help="noise for smoothgradcam++, a share of the value range (default 0.15)",
    )
    parser.add_argument("--batch-size", type=_counted(), default=16, help="images per batch (default 16)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradcam",
        description="Explain image models with the Grad-CAM family (PyTorch, TensorFlow/Keras, JAX).",
        epilog="Run 'gradcam COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain", help="write heat maps, overlays and summary.json for images",
        description="Explain images: for each image and method a heat map PNG, an overlay PNG (and for guided "
        "methods the guided picture), one line per image in records.jsonl and a summary.json. With no IMAGES, the "
        "bundled samples with the embedded model. Running again into the same folder skips images already recorded.",
    )
    explain.add_argument(
        "images", nargs="*", type=Path, metavar="IMAGES",
        help="image files, folders (searched recursively) or quoted glob patterns such as 'data/**/*.jpg' "
        "(default: the bundled samples)",
    )
    _add_model_arguments(explain)
    _add_method_arguments(explain, "gradcam")
    explain.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where results go (default: results/)"
    )
    explain.add_argument(
        "--overwrite", action="store_true", help="start over instead of skipping images already recorded"
    )
    explain.add_argument(
        "--max-pixels", type=_counted(), default=None,
        help="refuse larger images (default: Pillow's decompression-bomb limit)",
    )
    explain.add_argument(
        "--manifest", type=Path, default=None,
        help="more inputs: a text file of image paths, one a line, or a .csv with a 'path' column and an optional "
        "'target' column that overrides --class-id per image (relative paths are relative to the manifest's folder)",
    )
    explain.add_argument(
        "--save-maps", action=argparse.BooleanOptionalAction, default=True,
        help="write a heat map and an overlay PNG per image and method (default); --no-save-maps writes records only",
    )
    explain.add_argument(
        "--npz-shards", type=int, default=0, metavar="N",
        help="also store the heat maps as uint8 arrays in maps-NNNNN.npz files of N images each",
    )
    explain.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local (this process, default) or ray (a Ray Data pipeline; needs gradcam[ray])",
    )
    explain.add_argument(
        "--actors", type=int, default=1, help="--engine ray: explainer actors, each loading the model once (default 1)"
    )
    explain.add_argument("--num-gpus", type=float, default=0.0, help="--engine ray: GPUs per actor (default 0: CPU)")
    explain.add_argument(
        "--ray-address", default=None, help="--engine ray: join this Ray cluster (default: start a local Ray instance)"
    )

    volume = commands.add_parser(
        "volume", help="maps of a 3-D model for volumes and clips: slice overlays, a GIF and the map as .npy",
        description="Explain volumes and video clips with a 3-D model (Conv3d, Keras Conv3D, a Flax 3-D conv): for "
        "each clip and method the map as .npy (D, H, W), one overlay PNG per slice or frame and an animated GIF, and "
        "one line per clip and method in records.jsonl.",
    )
    volume.add_argument(
        "clips", nargs="+", type=Path, metavar="CLIP",
        help="a .npy volume (D, H, W) or (D, H, W, C) with C 1 or 3, given to the model as stored (uint8 scaled to "
        "[0, 1]); an animated .gif; or a folder of frame images taken in the order of their names",
    )
    _add_model_arguments(volume)
    _add_method_arguments(volume, "gradcam")
    volume.add_argument(
        "--frames", type=_counted(), default=None,
        help="for a GIF or a folder: take this many frames spread evenly over the clip (default: all)",
    )
    volume.add_argument(
        "--output-dir", type=Path, default=Path("results/volumes"), help="where results go (default: results/volumes)"
    )

    compare = commands.add_parser(
        "compare", help="one figure: methods as columns, images (and models) as rows",
        description="Draw one PNG comparing methods side by side: a column per method, a row per image and model.",
    )
    compare.add_argument(
        "images", nargs="*", type=Path, metavar="IMAGES", help="image files (default: the bundled samples)"
    )
    compare.add_argument("--model", action="append", default=None, help=MODEL_HELP + "; repeat to compare models")
    compare.add_argument("--weights", default=None, help="weights for the (single) model")
    compare.add_argument("--backend", default=None, help="framework of the embedded model: torch, tensorflow or jax")
    compare.add_argument("--device", default=None, help="PyTorch device")
    compare.add_argument("--image-size", type=_size, default=None, help="resize inputs to N or H,W")
    _add_method_arguments(compare, "all")
    compare.add_argument(
        "--output", type=Path, default=Path("results/compare.png"), help="the figure (default: results/compare.png)"
    )
    compare.add_argument(
        "--cell-size", type=_counted(MAX_CELL_SIZE), default=160, help="pixels per picture in the figure (default 160)"
    )

    layers = commands.add_parser(
        "layers", help="list the model's layers with their output shapes",
        description="List the model's layers in execution order with output shapes and layouts; * marks the "
        "automatic layer, and the line below the list says why it was chosen.",
    )
    _add_model_arguments(layers)

    evaluate = commands.add_parser(
        "evaluate", help="score every method with the papers' metrics on held-out synthetic images",
        description="Run every method on the embedded default model over held-out synthetic splits (one object, "
        "several instances, biased) and score it: localization, pointing game, energy, faithfulness, average drop, "
        "increase in confidence, deletion and insertion; the biased model's attention to its spurious mark; the "
        "pointing game's precision and recall over the top-5 predictions, the maps on adversarial images, and the "
        "maps as segments of the object (IoU with its mask). Writes evaluation.md (the tables), evaluation.json "
        "and evaluation.png.",
    )
    evaluate.add_argument(
        "--images", type=int, default=100, help="images per split (default 100: under 10 minutes on 2 cores)"
    )
    evaluate.add_argument(
        "--backend", default="torch", help="framework of the default model: torch (default), tensorflow or jax"
    )
    evaluate.add_argument(
        "--method", nargs="+", default=None, metavar="METHOD",
        help=f"methods to evaluate, any of {', '.join(METHODS)} (default: the 14 of the README's tables, "
        "gradcam.evaluation.EVALUATED_METHODS)",
    )
    evaluate.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out splits (default 0)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    evaluate.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where the report goes (default: results/)"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _images(paths: list[Path]) -> list[Path]:
    if paths:
        return paths
    from gradcam.datasets import sample_paths

    return sample_paths()


def _options(args: argparse.Namespace) -> dict:
    return {
        "fc_layer": args.fc_layer,
        "n_samples": args.n_samples,
        "noise_level": args.noise_level,
        "max_pixels": getattr(args, "max_pixels", None),
    }


def _run_explain(args: argparse.Namespace) -> int:
    from gradcam.cli.explain import EngineOptions, run_explain

    check_output_dir(args.output_dir)
    loaded = load_model(args.model, args.weights, args.backend, args.device)
    return run_explain(
        loaded, _images(args.images) if args.manifest is None else args.images, args.output_dir, args.method,
        args.layer, args.class_id, args.image_size, args.batch_size, _options(args), overwrite=args.overwrite,
        manifest=args.manifest, save_maps=args.save_maps, npz_shards=args.npz_shards,
        model_spec=ModelSpec.from_arguments(args.model, args.weights, args.backend, args.device),
        engine=EngineOptions(args.engine, args.actors, args.num_gpus, args.ray_address),
    )


def _run_volume(args: argparse.Namespace) -> int:
    from gradcam.cli.volume import run_volume

    if args.model is None:
        raise JobError("gradcam volume needs --model: a 3-D model given as a factory, file.py:function")
    check_output_dir(args.output_dir)
    loaded = load_model(args.model, args.weights, args.backend, args.device)
    return run_volume(
        loaded, args.clips, args.output_dir, args.method, args.layer, args.class_id, args.frames, args.image_size,
        _options(args),
    )


def _run_compare(args: argparse.Namespace) -> int:
    from gradcam.cli.compare import run_compare

    specs = args.model or [None]
    if args.weights and len(specs) > 1:
        raise JobError("--weights applies to a single --model")
    models = [load_model(spec, args.weights, args.backend, args.device) for spec in specs]
    return run_compare(
        models, _images(args.images), args.output, args.method, args.layer, args.class_id, args.image_size,
        args.cell_size, _options(args),
    )


def _run_layers(args: argparse.Namespace) -> int:
    from gradcam.cli.layers import run_layers

    loaded: LoadedModel = load_model(args.model, args.weights, args.backend, args.device)
    return run_layers(loaded, args.image_size or loaded.image_size)


def _run_evaluate(args: argparse.Namespace) -> int:
    from gradcam.cli.evaluate import run_evaluate
    from gradcam.evaluation import EvaluationConfig

    try:
        config = EvaluationConfig(
            images=args.images, backend=args.backend, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
            **({"methods": tuple(args.method)} if args.method else {}),
        )
    except ValueError as error:
        raise JobError(str(error)) from None
    return run_evaluate(config, args.output_dir, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 some images failed, 2 a usage error)."""
    args = build_parser().parse_args(argv)
    commands = {
        "explain": _run_explain, "volume": _run_volume, "compare": _run_compare, "layers": _run_layers,
        "evaluate": _run_evaluate,
    }
    run = commands[args.command]
    try:
        return run(args)
    except JobError as error:
        print(f"gradcam: error: {one_line(error)}", file=sys.stderr)
        return 2
