"""The Ray engine: what travels between its stages, how it sizes its actors, and one whole run in which an
actor dies part-way, checked against the local engine record by record."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.data")
torch = pytest.importorskip("torch")

from gradcam.batch.errors import JobError
from gradcam.batch.reader import DecodedBatch
from gradcam.batch.records import BatchOutput, read_records
from gradcam.batch.sources import InputItem
from gradcam.cli import main
from gradcam.engines import ray as engine

TESTS = Path(__file__).resolve().parent
FACTORY = f"{TESTS / 'cli_factory.py'}:make"
DYING_FACTORY = f"{Path(__file__).resolve()}:model_that_dies_once"
MARKER_VARIABLE = "GRADCAM_TEST_DEATH_MARKER"
# the automatic layer (two forwards: shapes, and whether the target depends on it), the blank check, the third batch
DEATH_AT_FORWARD = 6


def model_that_dies_once():
    """The CLI test model, whose process exits abruptly on its ``DEATH_AT_FORWARD``-th forward, once per test
    run: the first process to get there leaves a marker file, so the restarted actor lives on."""
    spec = importlib.util.spec_from_file_location("cli_factory", TESTS / "cli_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marker = Path(os.environ[MARKER_VARIABLE])
    calls = []

    def maybe_die(*_):
        calls.append(1)
        if len(calls) == DEATH_AT_FORWARD and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    model = module.make()
    model.register_forward_pre_hook(maybe_die)
    return model


# --- columns and resources (no Ray instance needed) -----------------------------------------------


def test_decoded_batches_cross_the_stage_boundary_unchanged():
    items = [InputItem("a.png", "a"), InputItem("b.png", "sub/b", target=3), InputItem("c", "c", error="bad line")]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    originals = [np.ones((7, 9, 3), np.uint8), np.zeros((7, 9, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)]
    batch = DecodedBatch(items, pixels, [None, "unreadable", "bad line"], originals)
    back = engine.decoded_from_columns(engine.decoded_columns(batch))
    assert back.items == items and back.errors == batch.errors
    np.testing.assert_array_equal(back.pixels, pixels)
    assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip(back.originals, originals, strict=True))


def test_batch_outputs_cross_the_stage_boundary_unchanged():
    output = BatchOutput(
        records=[{"path": "a", "score": 0.1 + 0.2, "boxes": {"gradcam": [0, 1, 2, 3]}}, {"path": "b", "error": "x"}],
        pictures={"gradcam/heatmap": [b"\x89PNG\x00", b""]},
        maps={"gradcam": np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)},
    )
    back = engine.output_from_columns(engine.output_columns(output))
    assert back.records == output.records and back.pictures == output.pictures
    np.testing.assert_array_equal(back.maps["gradcam"], output.maps["gradcam"])


@pytest.mark.parametrize(
    "actors, gpus, cpus, expected",
    [
        (1, 0, 2, ({"num_cpus": 1}, 1.0, 2)),
        (2, 0, 2, ({"num_cpus": 0.5}, 1.0, 1)),
        (2, 0, 16, ({"num_cpus": 7}, 1.0, 8)),
        (1, 0, 1, ({"num_cpus": 0.5}, 0.5, 1)),
        (4, 1, 32, ({"num_cpus": 1, "num_gpus": 1}, 1, None)),
    ],
)
def test_actor_resources_leave_room_for_decoding(actors, gpus, cpus, expected):
    assert engine.stage_resources(engine.RaySettings(actors=actors, num_gpus=gpus), cpus) == expected


def test_asking_for_more_gpus_than_the_cluster_has_is_one_clear_error():
    with pytest.raises(JobError, match=r"--actors 2 with --num-gpus 1.0 each need 2 GPUs; the Ray cluster has 0"):
        engine.check_cluster(engine.RaySettings(actors=2, num_gpus=1.0), {"CPU": 8.0})


# --- a whole run ----------------------------------------------------------------------------------


def test_two_actors_one_dying_resume_and_give_the_local_engines_records(tmp_path, capsys, monkeypatch):
    """One Ray run (they take seconds to start) that checks three promises: with two local actors the
    records equal the local engine's (same targets, boxes to the pixel, scores to 1e-5, same files); an
    actor process that dies mid-run costs no image and records none twice; and images already recorded
    (by an earlier run) are skipped."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(26):
        paths.append(tmp_path / "in" / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "in" / "broken.png").write_text("not an image")
    common = ["explain", str(tmp_path / "in"), "--image-size", "16", "--batch-size", "3"]
    marker = tmp_path / "died"
    monkeypatch.setenv(MARKER_VARIABLE, str(marker))

    assert main([*common, "--model", FACTORY, "--output-dir", str(tmp_path / "local")]) == 1
    earlier = [  # the same model as the Ray run (a folder resumes only with its settings); two forwards, no death
        "explain", f"{tmp_path}/in/img0[1-5].png", "--model", DYING_FACTORY, "--image-size", "16",
        "--output-dir", str(tmp_path / "ray"),
    ]
    assert main(earlier) == 0  # img01, 02, 03, 05 (img04 is in sub/); named as the folder run names them
    capsys.readouterr()
    ray_run = ["--model", DYING_FACTORY, "--engine", "ray", "--actors", "2", "--output-dir", str(tmp_path / "ray")]
    status = main([*common, *ray_run])
    out, err = capsys.readouterr()
    assert status == 1 and "explained 22 of 23 images" in out and err.count("gradcam: error:") == 1

    assert marker.exists(), "an actor should have died once"
    local, ray = (read_records(tmp_path / name / "records.jsonl") for name in ("local", "ray"))
    assert sorted(r["path"] for r in ray) == sorted(r["path"] for r in local)  # each image exactly once
    by_path = {r["path"]: r for r in ray}
    for expected in local:
        got = by_path[expected["path"]]
        assert got.keys() == expected.keys()
        if "error" in expected:
            assert got == expected
            continue
        assert got["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)
        assert got["probability"] == pytest.approx(expected["probability"], rel=1e-5)
        same = {k: v for k, v in expected.items() if k not in ("score", "probability")}
        assert {k: got[k] for k in same} == same  # targets, boxes, layer, top channels, file names
        for name in expected["files"]["gradcam"].values():
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert (summary["images"], summary["errors"]) == (27, 1)
