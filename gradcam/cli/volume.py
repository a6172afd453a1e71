"""``gradcam volume``: maps of 3-D models for volumes and clips, shown slice by slice and as a GIF.

Each clip (``gradcam.volumes.read_clip``: a ``.npy`` volume, an animated GIF or a folder of frames) is one input
of the model, laid out as the model takes it (``(1, C, D, H, W)`` or ``(1, D, H, W, C)``). For each clip and
method the command writes, under ``OUTPUT/<clip>/``: ``<method>.npy`` (the map ``(D, H, W)``, float32 in
[0, 1]), ``<method>/slice_NNN.png`` (each slice's overlay) and ``<method>.gif`` (the overlays animated); and one
line per clip and method in ``OUTPUT/records.jsonl``. A clip that cannot be read or explained is named on the
terminal with its reason and the others go on (exit status 1).

Clips are few and large, so this command runs them one at a time in this process: no streaming, no resume.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gradcam.backends import get_backend
from gradcam.batch.errors import JobError
from gradcam.batch.job import build_methods, method_names, one_line, run_methods
from gradcam.batch.loading import LoadedModel
from gradcam.explanation import Explanation
from gradcam.volumes import Clip, clip_overlays, read_clip, write_gif, write_slices


def model_input(model: Any, clip: Clip) -> np.ndarray:
    """The clip as a batch of one in the model's layout: ``(1, C, D, H, W)`` for a channels-first model,
    ``(1, D, H, W, C)`` for a channels-last one (``Backend.input_channel_axis``)."""
    values = clip.values[None]
    if get_backend(model).input_channel_axis(model) == 1:
        return np.ascontiguousarray(np.moveaxis(values, -1, 1))
    return values


def run_volume(
    loaded: LoadedModel,
    clips: list[Path],
    output_dir: Path,
    methods: list[str],
    layer: str | None,
    class_id: int | None,
    frames: int | None,
    size: tuple[int, int] | None,
    options: dict[str, Any],
) -> int:
    """Explain each clip with each method; 0 when every clip was explained, 1 when some failed."""
    names = method_names(methods, loaded)
    built = build_methods(names, loaded, layer, options)
    output_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    with (output_dir / "records.jsonl").open("a", encoding="utf-8") as records:
        for path in clips:
            try:
                # a .npy volume is taken whole, at its stored size: --frames and --image-size are for pictures
                clip = read_clip(path) if path.suffix.lower() == ".npy" else read_clip(path, frames, size)
                explanations = run_methods(built, model_input(loaded.model, clip), class_id, f"clip {path}")
                for name, ex in explanations.items():
                    records.write(json.dumps(_written(output_dir, clip, name, ex)) + "\n")
            except (ValueError, JobError) as error:
                failed += 1
                print(f"gradcam: {path}: {one_line(error)}", file=sys.stderr)
    done = len(clips) - failed
    print(f"explained {done} of {len(clips)} clips with {', '.join(names)}; results in {output_dir}")
    return 1 if failed else 0


def _written(output_dir: Path, clip: Clip, method: str, ex: Explanation) -> dict[str, Any]:
    """Write one clip's map, slice overlays and GIF for ``method``; its record."""
    heat = ex.heatmaps()[0]
    if heat.shape != clip.display.shape[:3]:
        raise JobError(
            f"{method} gave a map of shape {heat.shape} for a clip of {clip.display.shape[:3]}: the model is not a "
            "3-D model of (depth, height, width) clips"
        )
    folder = output_dir / clip.name
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{method}.npy", heat.astype(np.float32))
    frames = clip_overlays(clip, heat)
    slices = write_slices(folder / method, frames)
    gif = write_gif(folder / f"{method}.gif", frames)
    return {
        "clip": clip.name,
        "method": method,
        "frames": clip.depth,
        "target": int(ex.targets[0]),
        "score": float(ex.scores[0]),
        "map": str((folder / f"{method}.npy").relative_to(output_dir)),
        "gif": str(gif.relative_to(output_dir)),
        "slices": len(slices),
        "warnings": [str(w) for w in ex.warnings],
    }
