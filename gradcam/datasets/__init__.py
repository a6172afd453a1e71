"""Data that ships with gradcam: the synthetic shapes generator and a few bundled sample images.

``make_split`` draws seeded images with exact boxes and masks (see ``gradcam.datasets.shapes``);
``sample_paths`` lists the PNGs bundled in the package (one per class from the one-object test
split, and one with several instances), which the ``gradcam`` command explains when given no image.
Their labels and boxes are in ``samples/samples.json`` (``sample_annotations``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradcam.datasets.shapes import BIASED_CLASS, CLASSES, KINDS, ShapesSplit, make_split, mark_box_for, shape_mask

__all__ = [
    "BIASED_CLASS",
    "CLASSES",
    "KINDS",
    "ShapesSplit",
    "make_split",
    "mark_box_for",
    "shape_mask",
    "sample_paths",
    "sample_annotations",
]

SAMPLES_DIR = Path(__file__).parent / "samples"


def sample_paths() -> list[Path]:
    """The bundled sample PNGs, sorted by name (``circle_0.png``, ..., ``triangle_0.png``)."""
    return sorted(SAMPLES_DIR.glob("*.png"))


def sample_annotations() -> dict[str, dict[str, Any]]:
    """File name -> ``{"label": int, "class": str, "boxes": [[x0, y0, x1, y1], ...]}`` of the bundled samples.

    Boxes are in pixels, end exclusive, one per object.
    """
    return json.loads((SAMPLES_DIR / "samples.json").read_text())
