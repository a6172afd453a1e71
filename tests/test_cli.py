"""The gradcam command end to end on temporary folders: files, JSON contents, exit codes, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam.cli import main

FACTORY = str(Path(__file__).with_name("cli_factory.py")) + ":make"


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / "in" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def run(args, capsys):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_explain_writes_maps_overlays_and_summary(tmp_path, images, capsys):
    out_dir = tmp_path / "out"
    status, out, err = run(
        ["explain", *images, "--model", FACTORY, "--image-size", "32", "--method", "gradcam", "guided-gradcam",
         "--output-dir", out_dir],
        capsys,
    )
    assert status == 0, err
    assert f"results in {out_dir}" in out
    for i in range(3):
        for name in ("img{}_gradcam_heatmap.png", "img{}_gradcam_overlay.png", "img{}_guided-gradcam_guided.png"):
            assert (out_dir / name.format(i)).is_file()
    with Image.open(out_dir / "img0_gradcam_overlay.png") as overlay:
        assert overlay.size == (50, 40)  # drawn at the input image's own size
    with Image.open(out_dir / "img0_gradcam_heatmap.png") as heat:
        assert heat.size == (32, 32)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["images"] == 3 and summary["errors"] == 0 and summary["methods"] == ["gradcam", "guided-gradcam"]
    record = summary["records"][0]
    assert record["layer"] == "3" and record["path"].endswith("img0.png")
    x0, y0, x1, y1 = record["boxes"]["gradcam"]
    assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert 0.0 < record["probability"] <= 1.0 and set(record["top_channels"]) == {"method", "most", "least"}
    lines = (out_dir / "records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == summary["records"]


def test_record_scores_and_targets_match_the_library(tmp_path, images, capsys):
    from cli_factory import make

    import gradcam

    out_dir = tmp_path / "out"
    arguments = ["explain", images[0], "--model", FACTORY, "--image-size", "32", "--output-dir", out_dir]
    assert run(arguments, capsys)[0] == 0
    record = json.loads((out_dir / "records.jsonl").read_text())
    pixels = np.asarray(Image.open(images[0]).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    x = torch.from_numpy(pixels.astype(np.float32).transpose(2, 0, 1)[None] / 255)
    ex = gradcam.GradCAM(make(), layer="3")(x)
    assert record["target"] == int(ex.targets[0])
    assert record["score"] == pytest.approx(float(ex.scores[0]), rel=1e-5)
    assert tuple(record["boxes"]["gradcam"]) == ex.boxes()[0]


def test_unreadable_files_are_reported_and_the_rest_processed(tmp_path, images, capsys):
    bad = tmp_path / "in" / "notes.png"
    bad.write_text("not an image")
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", images[0], bad, images[1], "--model", FACTORY, "--image-size", "32", "--output-dir", out_dir],
        capsys,
    )
    assert status == 1
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert len(error_lines) == 1 and "notes.png" in error_lines[0] and "Traceback" not in err
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["errors"] == 1 and summary["images"] == 3
    assert (out_dir / "img1_gradcam_overlay.png").is_file()


def test_images_over_the_pixel_limit_are_refused(tmp_path, images, capsys):
    status, _, err = run(
        ["explain", images[0], "--model", FACTORY, "--image-size", "32", "--max-pixels", "1000",
         "--output-dir", tmp_path / "o"],
        capsys,
    )
    assert status == 1 and "decompression-bomb limit of 1000 pixels" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", FACTORY, "--weights", "missing.pt"], "--weights missing.pt: no such file"),
        (["--model", FACTORY, "--class-id", "9"], "class index 9 is out of range: valid classes are 0..3"),
        (["--model", FACTORY, "--layer", "9"], "no layer named '9'"),
        (["--model", FACTORY, "--method", "gradcam+++"], "unknown method"),
        (["--model", "torchvision:resnet18"], "torchvision"),
    ],
)
def test_bad_arguments_get_one_line_and_status_2(tmp_path, images, capsys, extra, message):
    status, _, err = run(["explain", images[0], "--image-size", "32", "--output-dir", tmp_path / "o", *extra], capsys)
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_weights_that_do_not_fit_the_model(tmp_path, images, capsys):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), wrong)
    status, _, err = run(
        ["explain", images[0], "--model", FACTORY, "--weights", wrong, "--output-dir", tmp_path / "o"], capsys
    )
    assert status == 2 and "do not fit the model" in err and len(err.strip().splitlines()) == 1


def test_weights_that_fit_are_loaded(tmp_path, images, capsys):
    from cli_factory import make

    model = make()
    with torch.no_grad():
        model[6].bias += 100 * torch.arange(4.0)  # makes class 3 the top class for every image
    path = tmp_path / "fit.pt"
    torch.save(model.state_dict(), path)
    out_dir = tmp_path / "o"
    arguments = [
        "explain", images[0], "--model", FACTORY, "--weights", path, "--output-dir", out_dir, "--image-size", "32"
    ]
    assert run(arguments, capsys)[0] == 0
    assert json.loads((out_dir / "records.jsonl").read_text())["target"] == 3


def test_outputs_never_overwrite_inputs(tmp_path, capsys):
    folder = tmp_path / "both"
    folder.mkdir()
    trap = folder / "x_gradcam_overlay.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(trap)
    victim = folder / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(victim)
    before = trap.read_bytes()
    status, _, err = run(["explain", victim, trap, "--model", FACTORY, "--output-dir", folder], capsys)
    assert status == 2 and "would overwrite an input image" in err
    assert trap.read_bytes() == before


def test_a_second_run_skips_recorded_images_and_overwrite_starts_over(tmp_path, images, capsys):
    out_dir = tmp_path / "o"
    common = ["--model", FACTORY, "--image-size", "32", "--output-dir", out_dir]
    assert run(["explain", images[0], *common], capsys)[0] == 0
    _, out, _ = run(["explain", *images, *common], capsys)
    assert "explained 2 of 2 images" in out
    records = (out_dir / "records.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["path"] for r in records) == sorted(str(p) for p in images)
    run(["explain", *images, *common, "--overwrite"], capsys)
    assert len((out_dir / "records.jsonl").read_text().splitlines()) == 3


def test_compare_writes_one_figure(tmp_path, images, capsys):
    output = tmp_path / "cmp.png"
    status, out, _ = run(
        ["compare", *images[:2], "--model", FACTORY, "--image-size", "32", "--method", "gradcam", "layercam",
         "guided-backprop", "--output", output, "--cell-size", "64"],
        capsys,
    )
    assert status == 0 and "3 methods on 2 rows" in out
    with Image.open(output) as figure:
        assert figure.size == (4 + 4 * 68, 22 + 2 * (22 + 64 + 4))


def test_layers_lists_shapes_and_marks_the_default(capsys):
    status, out, _ = run(["layers", "--model", FACTORY, "--image-size", "32"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert any(line.startswith("* 3") and "(1, 8, 16, 16)" in line for line in lines)
    assert sum(line.startswith("*") for line in lines) == 1


@pytest.mark.parametrize("command", [[], ["explain"], ["compare"], ["layers"]])
def test_help_of_every_command(command):
    result = subprocess.run([sys.executable, "-m", "gradcam", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: gradcam" in result.stdout
    if command == ["explain"]:
        flags = (
            "--model", "--weights", "--backend", "--layer", "--class-id", "--method", "--output-dir", "--image-size",
            "--device",
        )
        for flag in flags:
            assert flag in result.stdout
