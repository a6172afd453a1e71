"""``gradcam evaluate`` end to end on a few images, its summaries worked by hand, and its usage errors."""
import json

import numpy as np
import pytest
from PIL import Image

from gradcam.cli import main
from gradcam.cli.evaluate import cell
from gradcam.evaluation import (
    EPSILON,
    REJECTION_THRESHOLDS,
    SEGMENTATION_THRESHOLDS,
    EvaluationConfig,
    Summary,
    evaluate,
)


def test_summary_is_the_mean_with_a_student_t_interval():
    # values 1, 2, 3: mean 2, standard deviation 1, standard error 1 / sqrt(3); t(0.975, 2 dof) = 4.3027
    summary = Summary.of([1.0, 2.0, 3.0])
    assert summary.mean == 2.0 and summary.n == 3
    np.testing.assert_allclose(summary.half_width, 4.302653 / np.sqrt(3), rtol=1e-6)
    assert cell(summary) == "2.00 ± 2.48"
    assert cell(Summary.of([])) == "-"


def test_evaluate_end_to_end_on_two_images(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["evaluate", "--images", "2", "--method", "gradcam", "gradcam++", "--steps", "2", "--quiet"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    text = (out / "evaluation.md").read_text()
    assert text == capsys.readouterr().out
    command = "gradcam evaluate --images 2 --backend torch --steps 2 --seed 0 --batch-size 64"
    assert f"`{command} --method gradcam gradcam++`" in text
    table_rows = [line for line in text.splitlines() if line.startswith(("| gradcam |", "| gradcam++ |"))]
    assert len(table_rows) == 12  # one row per method in each of the six tables
    for heading in ("pointing game with recall", "Adversarial images", "Weakly-supervised segmentation"):
        assert heading in text
    report = json.loads((out / "evaluation.json").read_text())
    for split in ("single", "multi"):
        assert set(report["scores"][split]) == {"gradcam", "gradcam++"}
        for summaries in report["scores"][split].values():
            for summary in summaries.values():
                assert summary["n"] == 2 and -1.0 <= summary["mean"] <= 1.0
    assert set(report["seconds_per_image"]) == {"gradcam", "gradcam++", "occlusion"}  # occlusion: the reference
    marked = report["bias"]["marked_images"]
    assert all(s["n"] == marked for s in report["bias"]["energy_on_mark"]["biased"].values())
    pointing = report["pointing"]
    assert pointing["threshold"] in REJECTION_THRESHOLDS and pointing["top"] == 5
    for summaries in pointing["scores"].values():
        assert summaries["recall"]["n"] == 2  # one class per image
        assert 0.0 <= summaries["precision"]["mean"] <= 1.0
    attack = report["adversarial"]
    assert attack["attacked"] == 2 and attack["epsilon"] == EPSILON
    for summaries in attack["scores"].values():
        assert all(s["n"] == attack["reached"] for s in summaries.values())
    segmentation = report["segmentation"]
    assert segmentation["validation_images"] == 2
    for method, best in segmentation["best"].items():
        # the reported IoU is the test IoU at the threshold chosen on the validation split
        column = SEGMENTATION_THRESHOLDS.index(best)
        assert segmentation["iou"][method]["mean"] == pytest.approx(segmentation["iou_by_threshold"][method][column])
    with Image.open(out / "evaluation.png") as chart:
        assert chart.mode == "RGB" and chart.width == 1200


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "1"], "at least 2 images per split"),
        (["--backend", "mxnet"], "unknown backend 'mxnet'"),
        (["--method", "nope"], "unknown method 'nope'"),
        (["--steps", "0"], "steps and batch_size must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["evaluate", "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_resolves_method_names():
    assert EvaluationConfig(methods=("Grad-CAM++", "score_cam")).methods == ("gradcam++", "scorecam")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_three_new_evaluations_run_in_every_framework(backend):
    result = evaluate(EvaluationConfig(images=2, backend=backend, methods=("gradcam",), steps=1))
    assert result.pointing.threshold in REJECTION_THRESHOLDS
    assert result.pointing.scores["gradcam"]["recall"].n == 2
    assert result.adversarial.attacked == 2 and 0 <= result.adversarial.reached <= 2
    assert result.segmentation.best["gradcam"] in SEGMENTATION_THRESHOLDS
    assert 0.0 < result.segmentation.iou["gradcam"].mean <= 1.0
