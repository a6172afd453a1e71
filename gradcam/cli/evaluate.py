"""``gradcam evaluate``: run ``gradcam.evaluation`` and write evaluation.md, evaluation.json and evaluation.png."""
from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gradcam.batch.records import written_whole
from gradcam.evaluation import METRICS, VALIDATION_SEED_OFFSET, EvaluationConfig, EvaluationResult, Summary, evaluate

SPLIT_TITLES = {"single": "One object per image", "multi": "Several instances of one class (2-4)"}
# (title, split, metric key) of the chart's panels; the last panel is the biased-model experiment
CHART_PANELS = (
    ("pointing game, one object (higher is better)", "single", "pointing"),
    ("insertion AUC, one object (higher is better)", "single", "insertion"),
    ("instances lit, several instances (higher is better)", "multi", "coverage"),
)
BAR_COLOUR, SHORTCUT_COLOUR = (60, 110, 180), (120, 20, 20)
BIASED_COLOUR, DEFAULT_COLOUR = (215, 80, 60), (160, 160, 160)
CLEAN_COLOUR = (160, 160, 160)


def run_evaluate(config: EvaluationConfig, output_dir: Path, quiet: bool = False) -> int:
    """Evaluate, write the three files into ``output_dir``, print the Markdown report; returns 0."""
    progress = None if quiet else (lambda message: print(f"  {message}", file=sys.stderr, flush=True))
    result = evaluate(config, progress)
    output_dir.mkdir(parents=True, exist_ok=True)
    text = markdown_report(result)
    picture = io.BytesIO()
    chart(result).save(picture, format="PNG")
    files = {
        "evaluation.md": text.encode(),
        "evaluation.json": json.dumps(result.to_dict(), indent=1, default=_json_value).encode(),
        "evaluation.png": picture.getvalue(),
    }
    for name, data in files.items():
        with written_whole(output_dir / name) as file:
            file.write(data)
    print(text, end="")
    print(f"wrote {output_dir / 'evaluation.md'}, evaluation.json and evaluation.png", file=sys.stderr)
    return 0


def _json_value(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def cell(summary: Summary) -> str:
    """``mean ± half-width``, or the mean alone when there is no interval."""
    if math.isnan(summary.mean):
        return "-"
    if math.isnan(summary.half_width):
        return f"{summary.mean:.2f}"
    return f"{summary.mean:.2f} ± {summary.half_width:.2f}"


def command_line(config: EvaluationConfig) -> str:
    """The command that reproduces ``config``."""
    line = (
        f"gradcam evaluate --images {config.images} --backend {config.backend} --steps {config.steps} "
        f"--seed {config.seed} --batch-size {config.batch_size}"
    )
    if config.methods != EvaluationConfig().methods:
        line += " --method " + " ".join(config.methods)
    return line


def markdown_report(result: EvaluationResult) -> str:
    """The report: a table per split (methods x metrics), the biased-model experiment, and what each metric is."""
    config = result.config
    lines = [
        "# How good is each explanation? The default model on held-out synthetic images",
        "",
        f"Made by `{command_line(config)}` in {result.seconds:.0f} s ({os.cpu_count()} CPUs, backend "
        f"{config.backend}).",
        f"Default model accuracy: one object {_number(result.accuracy['single'])}, several instances "
        f"{_number(result.accuracy['multi'])}. Each cell: mean ± half-width of the 95% interval over images "
        "(Student's t). Arrows: which way is better. The ground-truth class is explained.",
    ]
    for split, title in SPLIT_TITLES.items():
        columns = METRICS[split]
        first = next(iter(result.scores[split].values()))
        n = next(iter(first.values())).n
        lines += ["", f"## {title} ({n} images)", ""]
        heading = ["method"] + [f"{m.heading} {'↑' if m.higher_is_better else '↓'}" for m in columns]
        if split == "single":
            heading.append("ms / image")
        lines += ["| " + " | ".join(heading) + " |", "|---|" + "---:|" * (len(heading) - 1)]
        for method, summaries in result.scores[split].items():
            row = [method] + [cell(summaries[m.key]) for m in columns]
            if split == "single":
                row.append(f"{1000 * result.seconds_per_image[method]:.1f}")
            lines.append("| " + " | ".join(row) + " |")
    lines += _bias_section(result)
    lines += _pointing_section(result)
    lines += _adversarial_section(result)
    lines += _segmentation_section(result)
    lines += ["", "Metrics:", ""]
    for split, columns in METRICS.items():
        lines += [f"- {m.heading} ({split}): {m.meaning}" for m in columns]
    lines += [
        "- precision (pointing with recall): share of the classes declared present whose map's maximum lies within "
        "the pointing tolerance of an object of that class; recall: share of the classes present that were declared "
        "and pointed at (Grad-CAM 4.3)",
        "- energy on object (adversarial): share of the map's sum inside the object's mask; drop: clean minus "
        "adversarial, per image",
        "- IoU (segmentation): |segment and mask| / |segment or mask|, the segment being the pixels >= threshold "
        "times the map's maximum (Grad-CAM 4.2)",
    ]
    lines.append(
        "- Time per image: wall-clock of the method alone on the one-object split, batches of "
        f"{config.batch_size} images."
    )
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _bias_section(result: EvaluationResult) -> list[str]:
    bias = result.bias
    methods = list(bias.energy_on_mark["biased"])
    shortcut_images = bias.energy_on_mark["shortcut"][methods[0]].n
    lines = [
        "",
        "## The doctor/nurse experiment: share of the map's energy on the spurious mark "
        f"({bias.marked_images} marked images)",
        "",
        "The biased model was trained where a corner mark always came with \"circle\"; on these test images the "
        "mark is on a random half, whatever the class. Each model's own top-1 decision is explained. The mark "
        f"covers {bias.mark_share:.1%} of the image: a map that ignores it puts about that share "
        "of its energy there, or less.",
        "",
        f"Accuracy on unmarked images: biased model {_number(bias.accuracy_unmarked['biased'])}, default model "
        f"{_number(bias.accuracy_unmarked['default'])}. Marked images of other classes called \"circle\": biased "
        f"model {_number(bias.circle_share_marked_others['biased'])}, default model "
        f"{_number(bias.circle_share_marked_others['default'])}. The last column keeps those shortcut decisions "
        f"of the biased model ({shortcut_images} images).",
        "",
        "| method | biased model | default model | biased model, shortcut decisions |",
        "|---|---:|---:|---:|",
    ]
    for method in methods:
        row = [cell(bias.energy_on_mark[kind][method]) for kind in ("biased", "default", "shortcut")]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _pointing_section(result: EvaluationResult) -> list[str]:
    pointing, config = result.pointing, result.config
    n = next(iter(pointing.scores.values()))["recall"].n
    lines = [
        "",
        f"## The pointing game with recall: top-{pointing.top} predictions and a rejection threshold "
        f"(Grad-CAM 4.3; several instances, {n} images)",
        "",
        f"The candidates are the model's top-{pointing.top} classes; a class whose probability is under "
        f"{pointing.threshold:g} is declared absent and not explained. That threshold is the one of "
        f"{', '.join(f'{t:g}' for t in pointing.thresholds)} whose present/absent decisions had the best F1 on "
        f"{pointing.validation_images} validation images of the same split (seed "
        f"{config.seed + VALIDATION_SEED_OFFSET}). Declared present: {pointing.declared_per_image:.2f} classes per "
        "image. The generator draws one class per image, so a declared class other than the true one is a miss "
        "(no object of it to point at): precision counts every declared class, recall each image's one class.",
        "",
        "| method | precision ↑ | recall ↑ |",
        "|---|---:|---:|",
    ]
    for method, summaries in pointing.scores.items():
        lines.append(f"| {method} | {cell(summaries['precision'])} | {cell(summaries['recall'])} |")
    return lines


def _adversarial_section(result: EvaluationResult) -> list[str]:
    attack = result.adversarial
    lines = [
        "",
        "## Adversarial images: the true class's map once the model is certain the class is absent (Grad-CAM 6.2)",
        "",
        f"Projected gradient descent on the log-probability of the true class, within {attack.epsilon * 255:g}/255 "
        f"of each pixel, steps of {attack.step_size * 255:g}/255, at most {attack.steps} steps, until the "
        f"probability is under {attack.stop_probability:g}: reached on {attack.reached} of the {attack.attacked} "
        f"one-object images (in {_number(attack.mean_steps)} steps on average); the model's accuracy on all the "
        f"perturbed images: {_number(attack.accuracy)}. The columns are over the {attack.reached} images where it "
        "was reached, the clean maps being those of the same images.",
        "",
        "| method | pointing, clean ↑ | pointing, adversarial ↑ | energy on object, clean ↑ | "
        "energy on object, adversarial ↑ | energy drop ↓ |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    keys = ("pointing_clean", "pointing_adversarial", "energy_clean", "energy_adversarial", "energy_drop")
    for method, summaries in attack.scores.items():
        lines.append(f"| {method} | " + " | ".join(cell(summaries[key]) for key in keys) + " |")
    return lines


def _segmentation_section(result: EvaluationResult) -> list[str]:
    segmentation = result.segmentation
    n = next(iter(segmentation.iou.values())).n
    thresholds = [f"{t:g}" for t in segmentation.thresholds]
    lines = [
        "",
        f"## Weakly-supervised segmentation: each map thresholded into a mask (Grad-CAM 4.2; one object, {n} images)",
        "",
        "The segment: the pixels at or above the threshold times the map's maximum, against the object's mask. Each "
        f"method's threshold is chosen on {segmentation.validation_images} validation images of another seed "
        f"({result.config.seed + VALIDATION_SEED_OFFSET}); the IoU is on the test images at that threshold. On the "
        "right, the mean test IoU at every threshold.",
        "",
        "| method | threshold | IoU ↑ | " + " | ".join(thresholds) + " |",
        "|---|---:|---:|" + "---:|" * len(thresholds),
    ]
    for method, summary in segmentation.iou.items():
        grid = " | ".join(f"{v:.2f}" for v in segmentation.iou_by_threshold[method])
        lines.append(f"| {method} | {segmentation.best[method]:g} | {cell(summary)} | {grid} |")
    return lines


def chart(result: EvaluationResult, width: int = 1200, row_height: int = 18) -> Image.Image:
    """Seven panels of horizontal bars with their 95% intervals, one bar per method (two or three where the
    panel compares): the two splits' tables, the biased model, pointing recall, the adversarial images, and
    segmentation."""
    methods = list(result.scores["single"])
    panels = [
        (title, [[(result.scores[split][m][key], BAR_COLOUR)] for m in methods]) for title, split, key in CHART_PANELS
    ]
    energy, attack = result.bias.energy_on_mark, result.adversarial.scores
    kinds = (("shortcut", SHORTCUT_COLOUR), ("biased", BIASED_COLOUR), ("default", DEFAULT_COLOUR))
    attacked = (("pointing_clean", CLEAN_COLOUR), ("pointing_adversarial", BAR_COLOUR))
    panels += [
        (
            "energy on the mark: biased model's shortcuts (dark), all marked (red); default (grey)",
            [[(energy[kind][m], colour) for kind, colour in kinds] for m in methods],
        ),
        (
            "pointing recall, top-5 with rejection (higher is better)",
            [[(result.pointing.scores[m]["recall"], BAR_COLOUR)] for m in methods],
        ),
        (
            "pointing after the attack: clean (grey), adversarial (blue)",
            [[(attack[m][key], colour) for key, colour in attacked] for m in methods],
        ),
        (
            "segmentation IoU at the validation threshold (higher is better)",
            [[(result.segmentation.iou[m], BAR_COLOUR)] for m in methods],
        ),
    ]
    font = ImageFont.load_default(size=13)
    panel_height = 60 + len(methods) * row_height * 2
    image = Image.new("RGB", (width, (len(panels) + 1) // 2 * panel_height + 20), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    half = width // 2
    for index, (title, bars) in enumerate(panels):
        _panel(draw, font, (index % 2) * half, (index // 2) * panel_height, half, title, methods, bars, row_height)
    return image


def _panel(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont,
    left: int,
    top: int,
    width: int,
    title: str,
    methods: list[str],
    bars: list[list[tuple[Summary, tuple[int, int, int]]]],
    row_height: int,
) -> None:
    """One panel: the title, a 0..1 axis, and per method its bars (mean) with whiskers (95% interval)."""
    label_width, margin = 145, 20
    x0, x1 = left + label_width, left + width - margin
    draw.text((left + 10, top + 8), title, fill=(0, 0, 0), font=font)
    axis_top = top + 30
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + tick * (x1 - x0)
        draw.line([(x, axis_top), (x, axis_top + len(methods) * 2 * row_height)], fill=(225, 225, 225))
        draw.text((x - 8, axis_top + len(methods) * 2 * row_height + 1), f"{tick:g}", fill=(90, 90, 90), font=font)
    for row, (method, method_bars) in enumerate(zip(methods, bars, strict=True)):
        y = axis_top + row * 2 * row_height
        draw.text((left + 10, y + 4), method, fill=(0, 0, 0), font=font)
        bar_height = (2 * row_height - 6) // len(method_bars)
        for j, (summary, colour) in enumerate(method_bars):
            if math.isnan(summary.mean):
                continue
            top_y = y + 3 + j * bar_height
            end = x0 + min(max(summary.mean, 0.0), 1.0) * (x1 - x0)
            draw.rectangle([x0, top_y, end, top_y + bar_height - 2], fill=colour)
            if not math.isnan(summary.half_width):
                low = x0 + min(max(summary.mean - summary.half_width, 0.0), 1.0) * (x1 - x0)
                high = x0 + min(max(summary.mean + summary.half_width, 0.0), 1.0) * (x1 - x0)
                middle = top_y + (bar_height - 2) // 2
                draw.line([(low, middle), (high, middle)], fill=(0, 0, 0), width=1)
