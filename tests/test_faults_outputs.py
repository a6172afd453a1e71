"""The fault suite of ``gradcam explain`` and ``gradcam compare``, part one: outputs, resume and the inputs'
identity (issue 17, classes 1-5, 9 and 11).

Every test drives the command as a user does (``gradcam.cli.main`` in this process, or ``python -m gradcam``
in a subprocess where a run must hang, be killed or run beside another), so the same file runs against any
version of the command: ``PYTHONPATH=/old/checkout pytest tests/test_faults_outputs.py`` points it, and the
subprocesses it starts, at another ``gradcam``. Each test names the fault it guards against.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradcam
from gradcam.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = Path(gradcam.__file__).resolve().parents[1]  # the gradcam under test, for the subprocesses too
FACTORY = f"{Path(__file__).resolve()}:small_model"
SLOW_FACTORY = f"{Path(__file__).resolve()}:slow_model"
OTHER_FACTORY = f"{TESTS / 'cli_factory.py'}:make"
SLOW_FORWARD_S = 0.25


def small_model():
    """A small PyTorch classifier of 4 classes (loaded by ``--model FILE:small_model``)."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def slow_model():
    """``small_model``, slowed down so that a run is still going when the test acts on it."""
    model = small_model()
    model.register_forward_pre_hook(lambda *_: time.sleep(SLOW_FORWARD_S))
    return model


def nan_model():
    """``small_model`` with NaN in its head: every score and map is NaN."""
    import torch

    model = small_model()
    with torch.no_grad():
        model[6].weight[0, 0] = float("nan")
    return model


def save(path: Path, seed: int = 0, size=(12, 14)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def run(args, capsys) -> tuple[int, str, str]:
    """``gradcam ARGS`` in this process: status, stdout, stderr."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def command(args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m gradcam ARGS`` in a subprocess running the gradcam under test."""
    return subprocess.run(
        [sys.executable, "-m", "gradcam", *map(str, args)], env=environment(), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, **kwargs,
    )


def environment() -> dict[str, str]:
    """The subprocesses' environment; they also run in ``ROOT`` (``python -m`` puts its folder first)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def one_line(err: str) -> str:
    """The single error line of ``err`` (asserts there is exactly one and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


EXPLAIN = ["explain", "--model", FACTORY, "--image-size", "12"]


# --- 1. compare --output over its own input ----------------------------------------------------------------------


@pytest.mark.parametrize("through_link", [False, True])
def test_compare_never_writes_its_figure_over_an_input(tmp_path, capsys, through_link):
    """Fault: ``gradcam compare v.png --output v.png`` exited 0 and ``v.png`` was the figure."""
    image = save(tmp_path / "data" / "v.png")
    before = image.read_bytes()
    output = image
    if through_link:
        (tmp_path / "alias").symlink_to(tmp_path / "data")
        output = tmp_path / "alias" / "v.png"
    status, _, err = run(["compare", image, "--output", output, "--model", FACTORY, "--method", "gradcam"], capsys)
    assert status == 2 and "--output" in one_line(err)
    assert image.read_bytes() == before


# --- 2. outputs compared with inputs as real paths, for every input source --------------------------------------


def test_an_output_folder_that_links_to_the_input_folder_is_refused(tmp_path, capsys):
    """Fault: ``ln -s data alias; gradcam explain data --output-dir alias`` wrote its pictures into data/."""
    save(tmp_path / "data" / "a.png")
    before = snapshot(tmp_path / "data")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    status, _, err = run([*EXPLAIN, tmp_path / "data", "--output-dir", tmp_path / "alias"], capsys)
    assert status == 2 and "would overwrite an input image" in one_line(err)
    assert snapshot(tmp_path / "data") == before


def test_a_glob_through_a_link_into_the_output_folder_is_refused(tmp_path, capsys):
    """Fault: a pattern through a link was compared as a string, so pictures landed where it reads."""
    save(tmp_path / "data" / "a.png")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    status, _, err = run([*EXPLAIN, f"{tmp_path}/alias/*.png", "--output-dir", tmp_path / "data"], capsys)
    assert status == 2 and "would overwrite an input image" in one_line(err)
    assert sorted(p.name for p in (tmp_path / "data").glob("*.png")) == ["a.png"]


def test_inputs_listed_by_a_manifest_inside_the_output_folder_are_never_overwritten(tmp_path, capsys):
    """Fault: manifest entries were not checked at all; ``x_gradcam_heatmap.png``, an input, was overwritten
    by the heat map of ``x.png``."""
    out = tmp_path / "out"
    save(out / "x.png", 0)
    victim = save(out / "x_gradcam_heatmap.png", 1)
    before = victim.read_bytes()
    (out / "list.txt").write_text("x_gradcam_heatmap.png\nx.png\n")
    status, _, err = run([*EXPLAIN, "--manifest", out / "list.txt", "--output-dir", out], capsys)
    assert status == 2 and "x_gradcam_heatmap.png" in one_line(err)
    assert victim.read_bytes() == before


# --- 3. resume with other settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, second, named",
    [
        ([], ["--method", "layercam"], "--method"),
        ([], ["--class-id", "2"], "--class-id"),
        ([], ["--layer", "0"], "--layer"),
        ([], ["--image-size", "16"], "--image-size"),
        (["--no-save-maps"], [], "--save-maps"),
        ([], ["--npz-shards", "4"], "--npz-shards"),
        ([], ["--model", OTHER_FACTORY], "--model"),
        (["--weights", "w0.pt"], ["--weights", "w1.pt"], "--weights"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path, capsys, first, second, named):
    """Fault: a second run with another method, model, class, layer, size, weights or with maps after
    ``--no-save-maps`` skipped every image, exited 0, and summary.json named settings that made no record."""
    import torch

    for i in range(2):
        model = small_model()
        with torch.no_grad():
            model[6].bias += i
        torch.save(model.state_dict(), tmp_path / f"w{i}.pt")
    image = save(tmp_path / "data" / "a.png")
    out = tmp_path / "out"
    resolve = {"w0.pt": tmp_path / "w0.pt", "w1.pt": tmp_path / "w1.pt"}
    first, second = ([resolve.get(a, a) for a in args] for args in (first, second))
    assert run([*EXPLAIN, image, "--output-dir", out, *first], capsys)[0] == 0
    before = snapshot(out)
    status, _, err = run([*EXPLAIN, image, "--output-dir", out, *second], capsys)
    assert status == 2 and named in one_line(err)
    assert snapshot(out) == before
    status, out_text, _ = run([*EXPLAIN, image, "--output-dir", out, *second, "--overwrite"], capsys)
    assert status == 0 and "explained 1 of 1" in out_text and len(records(out)) == 1


def test_the_same_settings_resume_and_overwrite_removes_the_earlier_pictures(tmp_path, capsys):
    """What must keep holding: the same settings resume (the order of methods aside), and ``--overwrite``
    starts over without leaving the earlier run's pictures behind."""
    images = [save(tmp_path / "data" / f"{name}.png", i) for i, name in enumerate("ab")]
    out = tmp_path / "out"
    assert run([*EXPLAIN, *images, "--method", "gradcam", "layercam", "--output-dir", out], capsys)[0] == 0
    status, text, _ = run([*EXPLAIN, *images, "--method", "layercam", "gradcam", "--output-dir", out], capsys)
    assert status == 0 and "explained 0 of 0" in text
    assert run([*EXPLAIN, images[0], "--method", "gradcam", "--output-dir", out, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a_gradcam_heatmap.png", "a_gradcam_overlay.png"]


def test_pictures_a_killed_run_wrote_without_records_are_written_again_on_resume(tmp_path, capsys):
    """What must keep holding: a run killed after an image's pictures but before its record resumes, and the
    image keeps its name (the folder as such a kill leaves it: the record cut off, the pictures listed as
    pending)."""
    images = [save(tmp_path / "data" / f"{name}.png", i) for i, name in enumerate("ab")]
    out = tmp_path / "out"
    assert run([*EXPLAIN, *images, "--output-dir", out], capsys)[0] == 0
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text(lines[0] + lines[1][:20])
    names = ["b_gradcam_heatmap.png", "b_gradcam_overlay.png"]
    if (out / "pictures.pending").exists():  # only a version that keeps the list knows it
        (out / "pictures.pending").write_text("".join(json.dumps(name) + "\n" for name in names))
    status, text, err = run([*EXPLAIN, *images, "--output-dir", out], capsys)
    assert status == 0 and "explained 1 of 1" in text, err
    assert [r["files"]["gradcam"]["heatmap"] for r in records(out)] == ["a_gradcam_heatmap.png", names[0]]


# --- 4. folder-walk errors and files that are not regular files ---------------------------------------------------


def folder_with_traps(root: Path) -> dict[str, Path]:
    """A folder with two good images, a link loop and a FIFO with image names, and a link to itself."""
    good = [save(root / "a.png", 0), save(root / "sub" / "b.png", 1)]
    (root / "loop.png").symlink_to("loop.png")
    (root / "self").symlink_to(".")
    os.mkfifo(root / "pipe.png")
    return {"good": good, "loop": root / "loop.png", "pipe": root / "pipe.png"}


def test_a_link_loop_and_a_fifo_in_a_folder_are_error_records_and_the_run_goes_on(tmp_path):
    """Fault: one symbolic-link loop aborted the whole run with a traceback and no record (every rerun alike);
    a FIFO with an image name was skipped without a word."""
    traps = folder_with_traps(tmp_path / "data")
    out = tmp_path / "out"
    result = command([*EXPLAIN, tmp_path / "data", "--output-dir", out], timeout=180)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    by_path = {r["path"]: r for r in records(out)}
    assert all("error" not in by_path[str(p)] for p in traps["good"])
    assert "symbolic links" in by_path[str(traps["loop"])]["error"]
    assert "FIFO" in by_path[str(traps["pipe"])]["error"]
    assert len(by_path) == 4 and result.stderr.count("gradcam: error:") == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_a_folder_that_cannot_be_listed_is_an_error_record(tmp_path, capsys):
    save(tmp_path / "data" / "a.png")
    locked = tmp_path / "data" / "locked"
    save(locked / "b.png")
    locked.chmod(0)
    try:
        status, _, err = run([*EXPLAIN, tmp_path / "data", "--output-dir", tmp_path / "out"], capsys)
    finally:
        locked.chmod(0o755)
    assert status == 1 and "cannot list the folder" in err
    assert len(records(tmp_path / "out")) == 2


def test_a_fifo_or_a_device_given_as_an_image_never_blocks_the_run(tmp_path):
    """Fault: a FIFO given as an image hung the run, and the good image in its batch was never recorded."""
    good = save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'pipe.png'}\n/dev/null\n")
    out = tmp_path / "out"
    args = [*EXPLAIN, good, tmp_path / "pipe.png", "--manifest", tmp_path / "list.txt", "--output-dir", out]
    try:
        result = command(args, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the run blocked on opening the FIFO")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    by_path = {r["path"]: r for r in records(out)}
    assert "error" not in by_path[str(good)]
    assert "FIFO" in by_path[str(tmp_path / "pipe.png")]["error"]
    assert "character device" in by_path["/dev/null"]["error"]


@pytest.mark.skipif(sys.platform != "linux", reason="Ray engine run: Linux only here")
def test_the_ray_engine_records_a_link_loop_and_a_fifo_as_errors(tmp_path, capsys):
    """Fault: the Ray engine failed the same way as the local one on a link loop in a folder."""
    pytest.importorskip("ray.data")
    traps = folder_with_traps(tmp_path / "data")
    out = tmp_path / "out"
    status, _, err = run([*EXPLAIN, tmp_path / "data", "--engine", "ray", "--output-dir", out], capsys)
    assert status == 1 and "Traceback" not in err and err.count("gradcam: error:") == 2
    by_path = {r["path"]: r for r in records(out)}
    assert len(by_path) == 4 and "error" in by_path[str(traps["loop"])] and "error" in by_path[str(traps["pipe"])]


# --- 5. two runs into one folder ---------------------------------------------------------------------------------


def start_slow_run(data: Path, out: Path) -> subprocess.Popen:
    """A slow run of ``data`` into ``out`` in a subprocess, returned once it has written its first record."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gradcam", "explain", str(data), "--model", SLOW_FACTORY, "--image-size", "12",
         "--batch-size", "2", "--output-dir", str(out)],
        env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if (out / "records.jsonl").exists() and (out / "records.jsonl").read_bytes().count(b"\n") >= 1:
            return process
        time.sleep(0.05)
    process.kill()
    pytest.fail("the slow run wrote no record in 90 s")


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, capsys, engine):
    """Fault: nothing stopped two runs into one folder; with same-named images, records pointed at another
    image's heat map, and the same images twice were recorded twice."""
    if engine == "ray":
        pytest.importorskip("ray.data")
    first = [save(tmp_path / "one" / f"{i:02d}.png", i) for i in range(30)]
    second = [save(tmp_path / "two" / f"{i:02d}.png", 100 + i) for i in range(30)]
    out = tmp_path / "out"
    process = start_slow_run(tmp_path / "one", out)
    try:
        status, _, err = run([*EXPLAIN, tmp_path / "two", "--engine", engine, "--output-dir", out], capsys)
        assert status == 2 and "another gradcam run" in one_line(err)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # the lock died with the killed run: the same command resumes, then the other folder joins
    slow = ["explain", "--model", SLOW_FACTORY, "--image-size", "12", "--output-dir", out]
    assert run([*slow, tmp_path / "one"], capsys)[0] == 0
    assert run([*slow, tmp_path / "two"], capsys)[0] == 0
    done = records(out)
    assert sorted(r["path"] for r in done) == sorted(map(str, first + second))
    for record in done:  # each record's heat map is its own image's
        name = record["files"]["gradcam"]["heatmap"]
        assert Path(record["path"]).parent.name == ("one" if "-2_" not in name else "two")


# --- 9. the inputs' identity --------------------------------------------------------------------------------------


def test_a_run_from_another_working_folder_skips_the_images_already_recorded(tmp_path, capsys, monkeypatch):
    """Fault: relative paths were recorded as given, so the same images run from another folder were
    explained and recorded again."""
    save(tmp_path / "data" / "a.png")
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert run([*EXPLAIN, "data/a.png", "--output-dir", out], capsys)[0] == 0
    monkeypatch.chdir(tmp_path / "data")
    status, text, _ = run([*EXPLAIN, "a.png", "--output-dir", out], capsys)
    assert status == 0 and "explained 0 of 0" in text
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    status, text, _ = run([*EXPLAIN, tmp_path / "alias", "--output-dir", out], capsys)
    assert status == 0 and "explained 0 of 0" in text and len(records(out)) == 1


def test_unicode_and_non_utf8_file_names_are_explained_once(tmp_path, capsys):
    """What must keep holding: odd and non-UTF-8 names are explained, recorded, and skipped by a resumed run."""
    data = tmp_path / "data"
    save(data / "ünï cödé ☃.png", 0)
    save(Path(os.fsdecode(bytes(data) + b"/caf\xe9.png")), 1)
    out = tmp_path / "out"
    assert run([*EXPLAIN, data, "--output-dir", out], capsys)[0] == 0
    status, text, _ = run([*EXPLAIN, data, "--output-dir", out], capsys)
    assert status == 0 and "explained 0 of 0" in text and len(records(out)) == 2


# --- 11. manifests, records.jsonl, summary.json -----------------------------------------------------------------


def test_a_manifest_line_that_is_not_utf8_is_an_error_record_naming_its_line(tmp_path, capsys):
    """Fault: a Latin-1 manifest gave a traceback and recorded nothing."""
    save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_bytes(b"a.png\ncaf\xe9.png\n")
    out = tmp_path / "out"
    status, _, err = run([*EXPLAIN, "--manifest", tmp_path / "list.txt", "--output-dir", out], capsys)
    assert status == 1 and "Traceback" not in err
    errors = [r["error"] for r in records(out) if "error" in r]
    assert len(records(out)) == 2 and len(errors) == 1 and "line 2" in errors[0]


@pytest.mark.parametrize("suffix", ["csv", "txt"])
def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path, capsys, suffix):
    """Fault: a CSV manifest saved with a byte-order mark (as Excel saves it) was refused."""
    image = save(tmp_path / "a.png")
    text = "path,target\na.png,2\n" if suffix == "csv" else "a.png\n"
    (tmp_path / f"list.{suffix}").write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = tmp_path / "out"
    status, _, err = run([*EXPLAIN, "--manifest", tmp_path / f"list.{suffix}", "--output-dir", out], capsys)
    assert status == 0, err
    (record,) = records(out)
    assert record["path"] == str(image) and (suffix == "txt" or record["target"] == 2)


@pytest.mark.parametrize(
    "content",
    [b'["not", "a", "record"]\n', b'{"path": 7}\n', b'{"path": "caf\xe9.png", "error": "x"}\n', None],
    ids=["json-list", "path-not-a-string", "latin1-byte", "a-folder"],
)
def test_a_records_file_that_is_not_records_gets_one_line(tmp_path, capsys, content):
    """Fault: a records.jsonl line that is JSON but not a record, a Latin-1 byte in it, or records.jsonl being a
    folder gave tracebacks."""
    image = save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run([*EXPLAIN, image, "--output-dir", out], capsys)[0] == 0
    if content is None:
        (out / "records.jsonl").unlink()
        (out / "records.jsonl").mkdir()
    else:
        with (out / "records.jsonl").open("ab") as file:
            file.write(content)
    status, _, err = run([*EXPLAIN, image, "--output-dir", out], capsys)
    assert status == 2 and "records.jsonl" in one_line(err)


def test_summary_json_is_replaced_whole_never_written_in_place(tmp_path, capsys):
    """Fault: summary.json was rewritten in place, and 3 of 5 kills during that write left it unparsable.
    A file written in place writes through a hard link to it; one written whole and renamed does not."""
    image = save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run([*EXPLAIN, image, "--output-dir", out], capsys)[0] == 0
    keep = tmp_path / "kept.json"
    os.link(out / "summary.json", keep)
    before = keep.read_bytes()
    assert run([*EXPLAIN, image, save(tmp_path / "b.png", 1), "--output-dir", out], capsys)[0] == 0
    assert keep.read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["images"] == 2


def refuse_constant(constant: str):
    raise ValueError(f"{constant} is not strict JSON")


def test_a_model_that_outputs_nan_leaves_strict_json_records(tmp_path, capsys):
    """Fault: NaN scores were written as a bare ``NaN``, which strict JSON parsers reject."""
    image = save(tmp_path / "a.png")
    out = tmp_path / "out"
    run(["explain", "--model", f"{Path(__file__).resolve()}:nan_model", "--image-size", "12", image,
         "--output-dir", out], capsys)
    lines = (out / "records.jsonl").read_text().splitlines()
    (record,) = [json.loads(line, parse_constant=refuse_constant) for line in lines]
    assert "error" in record
    json.loads((out / "summary.json").read_text(), parse_constant=refuse_constant)


def test_the_record_writer_turns_a_non_finite_record_into_an_error_record(tmp_path):
    """A unit test of the writer's safety net (under the explainer's own check): a record holding NaN
    becomes an error record, never a bare ``NaN`` line."""
    from gradcam.batch.records import RecordWriter

    writer = RecordWriter(tmp_path)
    writer.write([{"path": "/x.png", "score": float("nan")}, {"path": "/y.png", "score": 1.0}])
    writer.close()

    text = (tmp_path / "records.jsonl").read_text()
    lines = [json.loads(line, parse_constant=refuse_constant) for line in text.splitlines()]
    assert "non-finite" in lines[0]["error"] and lines[1]["score"] == 1.0
