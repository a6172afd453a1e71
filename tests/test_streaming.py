"""Whole data sets with the local engine: lazy inputs, the bounded reader, flat memory, kill-and-resume, shards."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from gradcam.batch.errors import JobError
from gradcam.batch.layout import output_stem
from gradcam.batch.reader import PrefetchReader, decode_batch
from gradcam.batch.records import RecordWriter, read_records
from gradcam.batch.sources import InputItem, Sources
from gradcam.cli import main
from gradcam.engines.local import Finisher

TESTS = Path(__file__).resolve().parent
FACTORY = f"{TESTS / 'cli_factory.py'}:make"
SLOW_FACTORY = f"{Path(__file__).resolve()}:slow_model"
SLOW_FORWARD_S = 0.15


def slow_model():
    """The CLI test model, slowed down so that a run can be killed part-way (loaded by --model FILE:slow_model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_factory", TESTS / "cli_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.make()
    model.register_forward_pre_hook(lambda *_: time.sleep(SLOW_FORWARD_S))
    return model


def save(path: Path, seed: int, size=(20, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def records_by_path(out_dir: Path) -> dict[str, dict]:
    records = read_records(out_dir / "records.jsonl")
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "an image was recorded twice"
    return by_path


def explain(args, capsys=None) -> int:
    status = main(["explain", *map(str, args)])
    if capsys is not None:
        capsys.readouterr()
    return status


# --- inputs --------------------------------------------------------------------------------------


def test_folders_are_searched_recursively_for_image_suffixes(tmp_path):
    for name in ("a.png", "sub/b.JPG", "sub/deeper/c.webp", "notes.txt", "sub/d.npy"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    items = list(Sources([tmp_path]))
    assert sorted(item.name for item in items) == ["a", "sub/b", "sub/deeper/c"]
    assert all(Path(item.path).is_file() and item.target is None for item in items)


def test_glob_patterns_name_matches_relative_to_their_fixed_folders(tmp_path):
    for name in ("x/1.png", "x/y/2.png", "x/y/3.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    items = list(Sources([f"{tmp_path}/x/**/*.png"]))
    assert sorted(item.name for item in items) == ["1", "y/2"]


def test_manifests_text_and_csv_with_targets(tmp_path):
    (tmp_path / "list.txt").write_text("# a comment\nimages/a.png\n\n/abs/b.png\n")
    assert [(i.path, i.name) for i in Sources([], tmp_path / "list.txt")] == [
        (str(tmp_path / "images/a.png"), "images/a"),
        ("/abs/b.png", "b"),
    ]
    (tmp_path / "table.csv").write_text("path,target\nimages/a.png,3\nimages/b.png,\nimages/c.png,cat\n")
    a, b, c = Sources([], tmp_path / "table.csv")
    assert (a.target, a.error, b.target, b.error, c.target) == (3, None, None, None, None)
    assert c.error == f"{tmp_path / 'table.csv'} line 4: target 'cat' is not a class index"
    (tmp_path / "nopath.csv").write_text("file,target\nx.png,1\n")
    with pytest.raises(JobError, match="needs a 'path' column"):
        Sources([], tmp_path / "nopath.csv")


@pytest.mark.parametrize(
    "relative, stem",
    [
        ("cat.png", "cat"), ("sub/cat.tar.png", "sub/cat.tar"), ("../../up/cat.png", "up/cat"), ("./a/./b.jpg", "a/b"),
        ("..", "image"),
    ],
)
def test_output_stems_never_leave_the_output_folder(relative, stem):
    assert output_stem(relative) == stem


def test_would_read_knows_files_folders_and_patterns(tmp_path):
    sources = Sources([tmp_path / "one.png", tmp_path, f"{tmp_path}/elsewhere/*.jpg"])
    (tmp_path / "one.png").write_bytes(b"")
    assert sources.would_read(tmp_path / "one.png")
    assert sources.would_read(tmp_path / "out" / "x_gradcam_heatmap.png")  # inside the searched folder
    assert not sources.would_read(tmp_path.parent / "out" / "x_gradcam_heatmap.png")
    assert not sources.would_read(tmp_path / "records.jsonl")


# --- the reader ----------------------------------------------------------------------------------


def test_reader_runs_at_most_depth_plus_one_batches_ahead():
    started = []

    def decode(batch):
        started.append(batch)
        return batch

    with PrefetchReader(range(50), decode, depth=2) as reader:
        for consumed, batch in enumerate(reader, start=1):
            time.sleep(0.01)  # a slow model: the reader would run far ahead if it could
            assert batch == consumed - 1
            assert len(started) <= consumed + 3
            if consumed == 10:
                break
    assert len(started) <= 13  # and it stopped when the consumer did


def test_reader_raises_a_failure_where_it_happened_and_stops():
    def decode(batch):
        if batch == 3:
            raise OSError("disk gone")
        return batch

    seen = []
    reader = PrefetchReader(range(10), decode, depth=2)
    with pytest.raises(OSError, match="disk gone"), reader:
        for batch in reader:
            seen.append(batch)
    assert seen == [0, 1, 2] and not reader._thread.is_alive()


def test_the_finisher_keeps_order_reports_its_failure_and_finishes_work_already_submitted():
    done = []
    with Finisher(done.append) as finisher:
        for i in range(20):
            finisher.submit(i)
    assert done == list(range(20))

    def fail_on_three(work):
        if work == 3:
            raise OSError("disk full")
        done.append(work)

    done.clear()
    with pytest.raises(OSError, match="disk full"), Finisher(fail_on_three) as finisher:
        for i in range(10):
            finisher.submit(i)
            time.sleep(0.01)
    assert done == [0, 1, 2]

    done.clear()
    with pytest.raises(KeyboardInterrupt), Finisher(lambda work: (time.sleep(0.01), done.append(work))) as finisher:
        for i in range(3):
            finisher.submit(i)
        raise KeyboardInterrupt
    assert done == [0, 1, 2]


def test_decode_batch_resizes_and_reports_unreadable_files(tmp_path):
    good = save(tmp_path / "good.png", 0, size=(10, 12))
    (tmp_path / "bad.png").write_text("no")
    items = [
        InputItem(str(good), "good"), InputItem(str(tmp_path / "bad.png"), "bad"), InputItem("x", "x", error="bad line")
    ]
    batch = decode_batch(items, (6, 8), keep_originals=True)
    assert batch.pixels.shape == (3, 6, 8, 3) and batch.pixels[1:].max() == 0
    expected = np.asarray(Image.open(good).convert("RGB").resize((8, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(batch.pixels[0], expected)
    assert batch.errors[0] is None and "not a readable image" in batch.errors[1] and batch.errors[2] == "bad line"
    assert batch.originals[0].shape == (10, 12, 3) and batch.originals[1].shape == (0, 0, 3)


# --- records -------------------------------------------------------------------------------------


def test_a_partial_last_line_is_cut_off_before_appending(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"path": "a"}\n{"path": "b"}\n{"path": "c", "sco')
    assert [r["path"] for r in read_records(path)] == ["a", "b"]
    writer = RecordWriter(tmp_path)
    writer.write([{"path": "c"}])
    writer.close()
    assert path.read_text() == '{"path": "a"}\n{"path": "b"}\n{"path": "c"}\n'


# --- whole runs ----------------------------------------------------------------------------------


def test_a_folder_run_records_every_image_with_errors_for_unreadable_files(tmp_path, capsys):
    paths = [save(tmp_path / "in" / f"{'sub/' if i % 2 else ''}img{i}.png", i) for i in range(7)]
    (tmp_path / "in" / "broken.png").write_text("not an image")
    out_dir = tmp_path / "out"
    status = main(["explain", str(tmp_path / "in"), "--model", FACTORY, "--image-size", "16", "--batch-size", "3",
                   "--no-save-maps", "--output-dir", str(out_dir)])
    _, err = capsys.readouterr()
    assert status == 1 and err.count("gradcam: error:") == 1 and "broken.png" in err
    records = records_by_path(out_dir)
    assert set(records) == {str(p) for p in paths} | {str(tmp_path / "in" / "broken.png")}
    assert "not a readable image" in records[str(tmp_path / "in" / "broken.png")]["error"]
    assert all("files" not in r for r in records.values()) and not list(out_dir.glob("**/*.png"))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["images"], summary["errors"]) == (8, 1)


def test_manifest_targets_override_the_class_per_image(tmp_path, capsys):
    from cli_factory import make

    import gradcam

    paths = [save(tmp_path / "data" / f"{i}.png", i, size=(16, 16)) for i in range(4)]
    (tmp_path / "data" / "list.csv").write_text("path,target\n0.png,2\n1.png,\n2.png,0\n3.png,7\n")
    out_dir = tmp_path / "out"
    status = explain(
        ["--manifest", tmp_path / "data" / "list.csv", "--model", FACTORY, "--class-id", "1", "--image-size", "16",
         "--batch-size", "4", "--no-save-maps", "--output-dir", out_dir],
        capsys,
    )
    assert status == 1
    records = records_by_path(out_dir)
    assert [records[str(p)].get("target") for p in paths] == [2, 1, 0, None]
    assert records[str(paths[3])]["error"].endswith("class index 7 is out of range: valid classes are 0..3")
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths[:3]])
    x = torch.from_numpy(pixels.transpose(0, 3, 1, 2) / np.float32(255))
    ex = gradcam.GradCAM(make(), layer="3")(x, target=[2, 1, 0])
    for i in range(3):
        assert records[str(paths[i])]["score"] == pytest.approx(float(ex.scores[i]), rel=1e-5)
        assert tuple(records[str(paths[i])]["boxes"]["gradcam"]) == ex.boxes()[i]


def test_a_resumed_run_never_reuses_an_earlier_runs_file_names(tmp_path, capsys):
    first, second = save(tmp_path / "a" / "x.png", 0), save(tmp_path / "b" / "x.png", 1)
    common = ["--model", FACTORY, "--image-size", "16", "--output-dir", tmp_path / "out"]
    assert explain([first, *common], capsys) == 0
    before = (tmp_path / "out" / "x_gradcam_overlay.png").read_bytes()
    assert explain([first, second, *common], capsys) == 0
    records = records_by_path(tmp_path / "out")
    assert records[str(second)]["files"]["gradcam"]["overlay"] == "x-2_gradcam_overlay.png"
    assert (tmp_path / "out" / "x_gradcam_overlay.png").read_bytes() == before


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path, capsys):
    save(tmp_path / "data" / "x.png", 0)
    status = main(
        ["explain", str(tmp_path / "data"), "--model", FACTORY, "--output-dir", str(tmp_path / "data" / "results")]
    )
    _, err = capsys.readouterr()
    assert status == 2 and "would overwrite an input image, or be read as one by the next run" in err
    assert not (tmp_path / "data" / "results" / "x_gradcam_heatmap.png").exists()


def test_npz_shards_hold_the_heat_maps_the_records_point_to(tmp_path, capsys):
    from cli_factory import make

    import gradcam

    paths = [save(tmp_path / "in" / f"{i}.png", i, size=(16, 16)) for i in range(5)]
    out_dir = tmp_path / "out"
    common = [
        "--model", FACTORY, "--image-size", "16", "--batch-size", "2", "--no-save-maps", "--npz-shards", "3",
        "--output-dir", out_dir,
    ]
    assert explain([*paths[:4], *common], capsys) == 0
    assert explain([*paths, *common], capsys) == 0  # the resumed run adds a shard
    assert sorted(p.name for p in out_dir.glob("*.npz")) == ["maps-00000.npz", "maps-00001.npz", "maps-00002.npz"]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths]).transpose(0, 3, 1, 2) / np.float32(255))
    expected = np.round(gradcam.GradCAM(make(), layer="3")(x).maps * 255)
    records = records_by_path(out_dir)
    for i, path in enumerate(paths):
        where = records[str(path)]["maps"]
        with np.load(out_dir / where["file"]) as shard:
            assert shard["paths"][where["index"]] == str(path)
            assert np.abs(shard["gradcam"][where["index"]].astype(int) - expected[i]).max() <= 1


def test_streaming_memory_stays_flat_over_thousands_of_images(tmp_path, capsys):
    """3000 images through the whole pipeline: nothing per image may stay behind (holding each decoded
    batch alone would add 10 MB; the sets of paths done, the only state that grows, take under 1 MB)."""
    pixels = (np.add.outer(np.arange(64), np.arange(64)) % 256).astype(np.uint8)
    encoded = tmp_path / "one.png"
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(encoded)
    data = encoded.read_bytes()
    for folder, count in (("warm", 200), ("many", 3000)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            (tmp_path / folder / f"{i:05d}.png").write_bytes(data)
    common = ["--model", FACTORY, "--image-size", "32", "--batch-size", "16", "--no-save-maps"]
    process = psutil.Process()
    assert explain([tmp_path / "warm", *common, "--output-dir", tmp_path / "out-warm"], capsys) == 0
    baseline = process.memory_info().rss
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert explain([tmp_path / "many", *common, "--output-dir", tmp_path / "out"], capsys) == 0
    finally:
        done.set()
        sampler.join()
    assert len(records_by_path(tmp_path / "out")) == 3000
    growth_mb = (peak[0] - baseline) / 2**20
    assert growth_mb < 6, f"memory grew by {growth_mb:.1f} MB over 3000 images"


def test_a_run_killed_with_sigkill_and_resumed_records_every_image_once(tmp_path, capsys):
    paths = [save(tmp_path / "in" / f"{i:03d}.png", i, size=(12, 12)) for i in range(60)]
    out_dir = tmp_path / "out"
    arguments = ["explain", str(tmp_path / "in"), "--model", SLOW_FACTORY, "--image-size", "12", "--batch-size", "4",
                 "--output-dir", str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gradcam", *arguments], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    records = out_dir / "records.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not records.exists() or records.read_bytes().count(b"\n") < 8):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = records.read_bytes().count(b"\n")
    assert 8 <= killed_at < 60, "the kill should land part-way through the run"
    assert main(arguments) == 0
    assert f"explained {60 - killed_at} of {60 - killed_at} images" in capsys.readouterr().out
    lines = records.read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(map(str, paths))
    assert all((out_dir / f"{p.stem}_gradcam_overlay.png").is_file() for p in paths)
