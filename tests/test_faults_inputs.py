"""Fault suite (issue 17), inputs and arguments: what the command refuses, scales or reduces, never a traceback.

Classes of the issue covered here: 6 (non-finite model outputs become error records), 7 (16-bit, 32-bit and
float images are scaled by their range), 8 (large images are reduced while they are decoded; overlays of
large images are capped), 10 (argument and model errors are one line and status 2 before any work) and 11's
FIFO given as an image (the reader never blocks).

Every test goes through what both the old and the new code offer (``gradcam.cli.main`` and
``gradcam.images.read_image``), or imports the newer API inside the test, so that the suite can be pointed at
another checkout to see each test fail there: ``GRADCAM_FAULTS_ROOT=/path/to/checkout pytest
tests/test_faults_inputs.py`` imports ``gradcam`` from that checkout.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = os.environ.get("GRADCAM_FAULTS_ROOT")
if ROOT:  # before gradcam is first imported: the other checkout's package wins
    sys.path.insert(0, ROOT)

torch = pytest.importorskip("torch")
from torch import nn

from gradcam.cli import main
from gradcam.images import read_image

HERE = Path(__file__).resolve()
TESTS = HERE.parent
F32_MAX = float(np.finfo(np.float32).max)


# --- models, loaded by the command as --model THIS_FILE:function -------------------------------------------------


def small_cnn() -> nn.Sequential:
    """The CLI tests' model (tests/cli_factory.py): 4 classes, layer "2" is the last spatial one."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def nan_weights() -> nn.Module:
    model = small_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    return model


def inf_in_head() -> nn.Module:
    model = small_cnn()
    with torch.no_grad():
        model[6].bias[1] = float("inf")
    return model


class Scaled(nn.Module):
    """The small CNN on its input times ``factor`` (float32's largest value: the input at float32's max)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.net = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.factor)


def input_at_float32_max() -> nn.Module:
    return Scaled(F32_MAX).eval()


class WhiteIsBad(nn.Module):
    """The small CNN, but NaN scores (``nan``) or an exception (``raise``) for images brighter than 0.9."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.net = small_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = x.mean(dim=(1, 2, 3)) > 0.9
        if self.how == "raise" and bool(white.any()):
            raise RuntimeError("this model cannot take white images")
        return self.net(x) + torch.where(white, float("nan"), 0.0)[:, None]


def nan_for_white() -> nn.Module:
    return WhiteIsBad("nan").eval()


def raises_for_white() -> nn.Module:
    return WhiteIsBad("raise").eval()


def mean_intensity() -> nn.Module:
    """One class whose score is the input's mean, in [0, 1] (factory models get pixels / 255): what the
    decoder made of an image, read from its record."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1 / 3)
        conv.bias.zero_()
    return nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


class WithSpares(nn.Module):
    """The small CNN beside a layer that never runs (``spare``) and one whose output is thrown away (``side``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()
        self.spare = nn.Conv2d(3, 3, 1)
        self.side = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.side(x)
        return self.net(x)


def with_spares() -> nn.Module:
    return WithSpares().eval()


def raises() -> nn.Module:
    raise RuntimeError("the factory itself fails")


def needs_argument(depth: int) -> nn.Module:
    return small_cnn()


def model(name: str) -> str:
    return f"{HERE}:{name}"


# --- helpers ----------------------------------------------------------------------------------------------------


def run(args: list, capsys) -> tuple[int, str, str]:
    """The command in this process: status, stdout, stderr (argparse's exit included)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_records(out_dir: Path) -> dict[str, dict]:
    """records.jsonl parsed strictly (a bare NaN or Infinity fails), by file name."""
    lines = (out_dir / "records.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=_no_constant) for line in lines]
    return {Path(record["path"]).name: record for record in records}


def save_rgb(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def picture(tmp_path) -> Path:
    return save_rgb(tmp_path / "picture.png", np.random.default_rng(0).integers(0, 256, (40, 50, 3)))


# --- class 6: non-finite model outputs --------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["nan_weights", "inf_in_head", "input_at_float32_max"])
def test_non_finite_outputs_become_error_records(tmp_path, picture, capsys, factory):
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", picture, "--model", model(factory), "--image-size", "32", "--output-dir", out_dir,
         "--method", "gradcam", "guided-backprop"],
        capsys,
    )
    assert status == 1 and "Traceback" not in err
    record = strict_records(out_dir)["picture.png"]
    assert set(record) == {"path", "error"}
    assert "the model's output for this image is not finite" in record["error"]
    assert not list(out_dir.glob("picture_*.png"))  # no blank map, no whole-image box
    assert "RuntimeWarning" not in err


def test_a_non_finite_image_does_not_take_its_batch_with_it(tmp_path, picture, capsys):
    white = save_rgb(tmp_path / "white.png", np.full((40, 50, 3), 255))
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", white, picture, "--model", model("nan_for_white"), "--image-size", "32", "--output-dir", out_dir],
        capsys,
    )
    records = strict_records(out_dir)
    assert status == 1 and "Traceback" not in err
    assert "not finite (NaN or infinity in its score" in records["white.png"]["error"]
    assert "error" not in records["picture.png"] and np.isfinite(records["picture.png"]["score"])
    assert (out_dir / "picture_gradcam_overlay.png").is_file()


def test_an_image_the_model_fails_on_is_an_error_record_and_the_batch_goes_on(tmp_path, picture, capsys):
    white = save_rgb(tmp_path / "white.png", np.full((40, 50, 3), 255))
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", white, picture, "--model", model("raises_for_white"), "--image-size", "32",
         "--output-dir", out_dir],
        capsys,
    )
    records = strict_records(out_dir)
    assert status == 1 and "Traceback" not in err
    assert "RuntimeError: this model cannot take white images" in records["white.png"]["error"]
    assert "error" not in records["picture.png"]


# --- class 7: 16-bit, 32-bit and float images -------------------------------------------------------------------


def ramp(dtype, low: float, high: float) -> np.ndarray:
    return np.tile(np.linspace(low, high, 256), (64, 1)).astype(dtype)


def test_high_bit_depth_images_are_scaled_by_their_range(tmp_path, capsys):
    images = {
        "ramp16.png": Image.fromarray(ramp(np.uint16, 0, 65535)),  # opened as I;16
        "ramp16.tif": Image.fromarray(ramp(np.uint16, 0, 65535)),
        "ramp16be.tif": Image.fromarray(ramp(np.uint16, 0, 65535).astype(">u2")),
        "ramp32.tif": Image.fromarray(ramp(np.int32, -1e6, 3e6)),
        "ramp_float_unit.tif": Image.fromarray(ramp(np.float32, 0, 1)),
        "ramp_float_wide.tif": Image.fromarray(ramp(np.float32, -5, 20)),
        "quarter_float.tif": Image.fromarray(np.full((64, 256), 0.25, np.float32)),
        "grey8.png": Image.fromarray(ramp(np.uint8, 0, 255)),  # 8-bit, as before
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", *(tmp_path / name for name in images), "--model", model("mean_intensity"), "--class-id", "0",
         "--no-save-maps", "--output-dir", out_dir],
        capsys,
    )
    assert status == 0, err
    records = strict_records(out_dir)
    expected = {name: 0.5 for name in images} | {"quarter_float.tif": 0.25}
    means = {name: records[name]["score"] for name in images}
    assert means == {name: pytest.approx(value, abs=0.01) for name, value in expected.items()}


def test_float_images_holding_nan_are_refused(tmp_path, capsys):
    pixels = ramp(np.float32, 0, 1)
    pixels[3, 7] = np.nan
    Image.fromarray(pixels).save(tmp_path / "hole.tif")
    out_dir = tmp_path / "out"
    status, _, err = run(
        ["explain", tmp_path / "hole.tif", "--model", model("mean_intensity"), "--no-save-maps",
         "--output-dir", out_dir],
        capsys,
    )
    assert status == 1 and "Traceback" not in err
    assert "holds NaN or infinite values" in strict_records(out_dir)["hole.tif"]["error"]


def test_the_scaling_rule_in_numbers(tmp_path):
    Image.fromarray(np.array([[0, 257, 65535]], np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[-10, 0, 30]], np.int32)).save(tmp_path / "b.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "c.tif")
    assert read_image(tmp_path / "a.png")[0, :, 0].tolist() == [0, 1, 255]
    assert read_image(tmp_path / "b.tif")[0, :, 0].tolist() == [0, 64, 255]
    assert read_image(tmp_path / "c.tif")[0, :, 0].tolist() == [0, 128, 255]
    assert read_image(tmp_path / "c.tif").shape == (1, 3, 3)


# --- class 8: decoding builds no more than it needs ---------------------------------------------------------------


def test_overlays_of_large_images_are_drawn_at_a_capped_size(tmp_path, capsys):
    large = tmp_path / "large.png"
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(large)
    out_dir = tmp_path / "out"
    status, _, err = run(["explain", large, "--output-dir", out_dir], capsys)
    assert status == 0, err
    with Image.open(out_dir / "large_gradcam_overlay.png") as overlay:
        assert overlay.size == (1024, 683)  # the long side cut to 1024, the aspect ratio kept
    with Image.open(out_dir / "large_gradcam_heatmap.png") as heat:
        assert heat.size == (64, 64)


def test_jpeg_is_reduced_while_it_is_decoded(tmp_path):
    from gradcam.images import decode, open_image

    path = tmp_path / "large.jpg"
    Image.new("RGB", (4000, 3000), (20, 120, 220)).save(path)
    with open_image(path) as image:
        (small,) = decode(image, [(64, 64)])
        assert image.size == (500, 375)  # DCT scaling by 8: never decoded at 4000x3000
    assert small.shape == (64, 64, 3) and np.abs(small.astype(int) - (20, 120, 220)).max() <= 2


def test_reduced_decoding_looks_like_resizing_the_full_image(tmp_path):
    from gradcam.images import decode, fit_within, open_image, resize

    rng = np.random.default_rng(1)
    smooth = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((4000, 3000))
    smooth.save(tmp_path / "photo.png")
    full = np.asarray(smooth)
    with open_image(tmp_path / "photo.png") as image:
        model_input, original = decode(image, [(224, 224), fit_within((3000, 4000), 1024)])
    assert original.shape == (768, 1024, 3)
    for got in (model_input, original):
        want = resize(full, got.shape[:2]).astype(int)
        assert np.abs(got.astype(int) - want).mean() < 1.0
    small = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # smaller than 3x the target: exact as before
    save_rgb(tmp_path / "small.png", small)
    assert np.array_equal(read_image(tmp_path / "small.png", size=(32, 32)), resize(small, (32, 32)))


def test_an_image_already_at_the_model_size_is_its_decoded_pixels(tmp_path):
    """The short path for RGB images stored at the model's size gives the same pixels as the general one would
    (decoding, then a resize to the same size, which copies), one array per size."""
    from gradcam.images import decode, open_image

    pixels = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for name in ("same.png", "same.jpg"):
        Image.fromarray(pixels).save(tmp_path / name)
        with Image.open(tmp_path / name) as image:
            want = np.asarray(image.convert("RGB").resize((32, 24), Image.Resampling.BILINEAR))
        with open_image(tmp_path / name) as image:
            model_input, original = decode(image, [(24, 32), (24, 32)])
        assert np.array_equal(model_input, want) and np.array_equal(original, want), name
        assert model_input is not original
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "grey.png")  # another mode: the general path, as before
    with open_image(tmp_path / "grey.png") as image:
        (grey,) = decode(image, [(24, 32)])
    assert np.array_equal(grey, np.repeat(pixels[:, :, :1], 3, axis=2))


# --- class 10: argument and model errors: one line, status 2, before any work -------------------------------------


def write_syntax_error(tmp_path: Path) -> str:
    (tmp_path / "broken.py").write_text("def make(:\n    pass\n")
    return f"{tmp_path / 'broken.py'}:make"


ARGUMENT_ERRORS = [
    ("image size 1", ["--image-size", "1"], "explaining a blank 1x1 image failed"),
    ("image size 3000,1", ["--image-size", "3000,1"], "explaining a blank 3000x1 image failed"),
    ("image size 100000", ["--image-size", "100000"], "each side from 1 to 4096"),
    ("no samples", ["--method", "smoothgradcam++", "--n-samples", "0"], "--n-samples"),
    ("negative noise", ["--method", "smoothgradcam++", "--noise-level", "-1"], "--noise-level"),
    ("no such device", ["--device", "nosuch"], "--device nosuch: not a PyTorch device"),
    ("layer never runs", ["--model", model("with_spares"), "--layer", "spare"], "'spare' did not run"),
    ("layer output unused", ["--model", model("with_spares"), "--layer", "side"], "does not depend on"),
    ("factory raises", ["--model", model("raises")], "calling raises() failed (RuntimeError"),
    ("factory needs an argument", ["--model", model("needs_argument")], "calling needs_argument() failed (TypeError"),
    ("factory syntax error", ["--model", write_syntax_error], "SyntaxError: invalid syntax at"),
]


@pytest.mark.parametrize("extra, message", [case[1:] for case in ARGUMENT_ERRORS], ids=[c[0] for c in ARGUMENT_ERRORS])
def test_argument_and_model_errors_are_one_line_before_any_work(tmp_path, picture, capsys, extra, message):
    extra = [value(tmp_path) if callable(value) else value for value in extra]
    out_dir = tmp_path / "out"
    status, _, err = run(["explain", picture, "--output-dir", out_dir, *extra], capsys)
    assert status == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out_dir / "records.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_cuda_device_without_a_gpu(tmp_path, picture, capsys):
    status, _, err = run(["explain", picture, "--output-dir", tmp_path / "out", "--device", "cuda"], capsys)
    assert status == 2 and "--device cuda: no CUDA GPU is available here" in err and len(err.splitlines()) == 1


def test_an_output_dir_that_is_a_file(tmp_path, picture, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for out_dir, message in ((taken, "is a file"), (taken / "sub", "which is not a folder")):
        status, _, err = run(["explain", picture, "--output-dir", out_dir], capsys)
        assert status == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert taken.read_text() == "a file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in read-only folders")
def test_an_output_dir_that_cannot_be_written(tmp_path, picture, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, _, err = run(["explain", picture, "--output-dir", locked / "out"], capsys)
    finally:
        locked.chmod(0o700)
    assert status == 2 and "cannot be written" in err and len(err.splitlines()) == 1


def test_compare_cell_size_zero(tmp_path, picture, capsys):
    status, _, err = run(["compare", picture, "--cell-size", "0", "--output", tmp_path / "figure.png"], capsys)
    assert status == 2 and "--cell-size" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "figure.png").exists()


# --- class 11: nothing blocks on opening an input ---------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_given_as_an_image_never_blocks_the_reader(tmp_path, picture):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def read() -> None:
        try:
            read_image(fifo)
            outcome.append("read")
        except ValueError as error:
            outcome.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked in open(): a writer end lets it go, so that the test process is not stuck
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("reading a FIFO blocked")
    assert outcome == [f"{fifo}: a FIFO, not an image file"]

    from gradcam.batch.reader import decode_batch
    from gradcam.batch.sources import InputItem

    batch = decode_batch([InputItem(str(picture), "picture"), InputItem(str(fifo), "pipe")], (8, 8))
    assert batch.errors[0] is None and "a FIFO" in batch.errors[1] and batch.pixels[0].any()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_devices_and_folders_are_refused_with_one_line_naming_them(tmp_path):
    for path in ("/dev/zero", tmp_path):
        with pytest.raises(ValueError, match=re.escape(str(path))) as refused:
            read_image(path)
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", model("nan_weights"), "--image-size", "32"], "not finite"),
        (["--image-size", "1"], "failed"),
    ],
)
def test_compare_refuses_non_finite_models_and_failing_inputs_with_one_line(tmp_path, picture, capsys, extra, message):
    figure = tmp_path / "figure.png"
    status, _, err = run(["compare", picture, "--method", "gradcam", "--output", figure, *extra], capsys)
    assert status == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not figure.exists()
