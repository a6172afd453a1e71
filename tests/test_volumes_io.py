"""Clips from files (``gradcam.volumes``: .npy volumes, animated GIFs, folders of frames), their slice overlays and
GIFs, files a hostile user would hand over, and the ``gradcam volume`` command on a 3-D PyTorch model."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from gradcam.cli import main
from gradcam.volumes import clip_overlays, read_clip, sample_frames, write_gif, write_slices

FACTORY = "tests/cli_factory.py:make_3d"


def gif_of(path, frames):
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=50, loop=0)
    return path


def solid_frames(depth, size=(8, 10)):
    # frame d is a flat colour (10 d, 0, 255 - 10 d): the palette of a GIF keeps flat colours exactly
    frames = np.zeros((depth, *size, 3), dtype=np.uint8)
    frames[..., 0] = (10 * np.arange(depth))[:, None, None]
    frames[..., 2] = (255 - 10 * np.arange(depth))[:, None, None]
    return frames


def test_sample_frames_spreads_evenly_from_first_to_last():
    assert sample_frames(10, None).tolist() == list(range(10))
    assert sample_frames(10, 4).tolist() == [0, 3, 6, 9]  # round(i * 9 / 3)
    assert sample_frames(5, 1).tolist() == [0]
    with pytest.raises(ValueError, match="cannot take 6 frames from a clip of 5"):
        sample_frames(5, 6)


def test_a_uint8_volume_is_scaled_and_shown_grey(tmp_path):
    volume = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    np.save(tmp_path / "ct.npy", volume)
    clip = read_clip(tmp_path / "ct.npy")
    assert clip.name == "ct" and clip.depth == 2
    np.testing.assert_array_equal(clip.values[..., 0], volume / np.float32(255))
    assert clip.values.shape == (2, 3, 4, 1) and clip.values.dtype == np.float32
    # display: min-max over the volume, grey in the three channels
    expected = np.round((volume - 0.0) / 230.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(clip.display[..., 1], expected)
    assert clip.display.shape == (2, 3, 4, 3)


def test_a_float_volume_is_given_as_stored(tmp_path):
    volume = np.linspace(-1000, 3000, 2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)  # Hounsfield-like
    np.save(tmp_path / "mr.npy", volume)
    clip = read_clip(tmp_path / "mr.npy")
    np.testing.assert_array_equal(clip.values, volume)
    assert clip.display.min() == 0 and clip.display.max() == 255


def test_gif_and_folder_give_the_same_frames(tmp_path):
    frames = solid_frames(6)
    gif = read_clip(gif_of(tmp_path / "walk.gif", frames))
    np.testing.assert_array_equal(gif.display, frames)
    folder = tmp_path / "walk"
    folder.mkdir()
    for i, frame in enumerate(frames[::-1]):  # written in reverse: the names, not the writing order, decide
        Image.fromarray(frame).save(folder / f"frame_{5 - i:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    np.testing.assert_array_equal(read_clip(folder).display, frames)
    sampled = read_clip(tmp_path / "walk.gif", frames=3, size=(4, 5))
    assert sampled.display.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(sampled.display[:, 0, 0, 0], [0, 20, 50])  # frames 0, 2 (round 2.5 -> 2), 5
    np.testing.assert_allclose(sampled.values, sampled.display / 255.0, atol=1e-7)


def test_slices_and_gif_are_written_and_read_back(tmp_path):
    clip = read_clip(gif_of(tmp_path / "c.gif", solid_frames(3)))
    maps = np.zeros((3, 8, 10))
    maps[1] = 1.0
    frames = clip_overlays(clip, maps, alpha=0.5)
    # jet(0) is (0, 0, 128) and jet(1) (128, 0, 0) in uint8; half of each over the frame's flat colour
    def blend(frame, heat):
        return np.round((0.5 * np.array(frame) / 255 + 0.5 * np.array(heat) / 255) * 255).astype(np.uint8)

    np.testing.assert_array_equal(frames[0, 0, 0], blend([0, 0, 255], [0, 0, 128]))  # (0, 0, 192)
    np.testing.assert_array_equal(frames[1, 0, 0], blend([10, 0, 245], [128, 0, 0]))  # (69, 0, 122 or 123)
    paths = write_slices(tmp_path / "out", frames)
    assert [p.name for p in paths] == ["slice_000.png", "slice_001.png", "slice_002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), frames[1])
    with Image.open(write_gif(tmp_path / "out.gif", frames)) as animated:
        assert animated.n_frames == 3 and animated.info["loop"] == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.save(p / "v.npy", np.zeros((2, 3, 4, 5))), r"\(D, H, W\) or \(D, H, W, C\)"),
        (lambda p: np.save(p / "v.npy", np.array(["a", "b"])), "holds numbers"),
        (lambda p: np.save(p / "v.npy", np.full((2, 2, 2), np.nan)), "NaN or infinite"),
        (lambda p: (p / "v.npy").write_bytes(pickle.dumps({"evil": 1})), "not a NumPy array file"),
        (lambda p: np.save(p / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a NumPy"),
    ],
)
def test_hostile_volumes_are_refused_with_the_reason(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_clip(tmp_path / "v.npy")


def test_hostile_folders_and_options_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        read_clip(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (4, 4)).save(mixed / "a.png")
    Image.new("RGB", (5, 4)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="differ in size"):
        read_clip(mixed)
    assert read_clip(mixed, size=(4, 4)).display.shape == (2, 4, 4, 3)
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="taken whole"):
        read_clip(tmp_path / "v.npy", frames=1)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a clip"):
        read_clip(tmp_path / "x.txt")


def test_the_volume_command_writes_maps_slices_gif_and_records(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    gif_of(tmp_path / "clip.gif", frames)
    np.save(tmp_path / "vol.npy", frames[..., 0])
    np.save(tmp_path / "bad.npy", np.zeros((2, 2)))
    out = tmp_path / "out"
    status = main(
        ["volume", str(tmp_path / "clip.gif"), str(tmp_path / "vol.npy"), str(tmp_path / "bad.npy"), "--model",
         FACTORY, "--method", "gradcam", "--frames", "4", "--output-dir", str(out)]
    )
    captured = capsys.readouterr()
    # the one-channel volume meets a model of 3 input channels: refused with the model's reason, the others go on
    assert status == 1 and "bad.npy" in captured.err and "vol.npy" in captured.err
    assert "explained 1 of 3 clips" in captured.out
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["clip"], r["method"], r["frames"], r["slices"]) for r in records] == [("clip", "gradcam", 4, 4)]
    heat = np.load(out / "clip" / "gradcam.npy")
    assert heat.shape == (4, 16, 16) and heat.min() == 0 and heat.max() == pytest.approx(1.0)
    # the map is the library's Grad-CAM of the same clip
    import gradcam
    from gradcam.batch.loading import load_model

    clip = read_clip(tmp_path / "clip.gif", frames=4)
    model = load_model(FACTORY).model
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(clip.values[None], -1, 1)))
    np.testing.assert_allclose(heat, gradcam.GradCAM(model)(x).maps[0], atol=1e-6)
    with Image.open(out / "clip" / "gradcam.gif") as animated:
        assert animated.n_frames == 4 and animated.size == (16, 16)
    assert sorted(p.name for p in (out / "clip" / "gradcam").iterdir())[-1] == "slice_003.png"


def test_the_volume_command_needs_a_model(tmp_path, capsys):
    assert main(["volume", str(tmp_path / "x.npy")]) == 2
    assert "needs --model" in capsys.readouterr().err
