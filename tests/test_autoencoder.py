"""Handwritten -> printed digits: the autoencoder's training and `job transform`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from conftest import read_metrics, run_job, train
from job.cli import main
from job.data import digit_image
from job.models import load_model

SANS_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@pytest.fixture(scope="session")
def autoencoder_file(tmp_path_factory) -> str:
    """An autoencoder trained for 300 steps (about 40 s on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("autoencoder") / "run"
    assert train(run_dir, "train.steps=300", "train.checkpoint_every=300", "train.sample_every=300",
                 "train.progress=false", preset="autoencoder-mnist") == 0
    return str(run_dir / "autoencoder.safetensors")


def draw_digit(digit: int, height: int, ink=(30, 30, 30), paper=(235, 235, 235), mode="L") -> Image.Image:
    """A printed digit in dark ink on light paper, off-centre, like a photo of a page."""
    size = int(height * 0.7)
    font = ImageFont.truetype(SANS_BOLD, size) if os.path.isfile(SANS_BOLD) else ImageFont.load_default(size=size)
    img = Image.new("RGB", (int(height * 0.9), height), paper)
    ImageDraw.Draw(img).text((height * 0.15, height * 0.1), str(digit), fill=ink, font=font,
                             stroke_width=max(1, height // 30), stroke_fill=ink)
    return img.convert(mode)


def test_training_prints_mnist_test_digits_in_the_font(autoencoder_file):
    model, info, _ = load_model(autoencoder_file, "autoencoder")
    assert info["extra"]["nearest_template_accuracy"] > 0.9
    assert info["extra"]["fonts"] and model.templates.shape == (10, 1, 28, 28)
    metrics = read_metrics(Path(autoencoder_file).parent)
    assert metrics[-1]["step"] == 300 and metrics[-1]["nearest_template_accuracy"] > 0.9


def test_transform_prints_made_up_images_and_lists_the_corrupt_one(autoencoder_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    drawn = {"zero-small.png": 0, "three-large.png": 3, "five.png": 5, "seven-tiny.png": 7, "eight.jpg": 8,
             "colour-two.png": 2}
    draw_digit(0, 60).save(inputs / "zero-small.png")
    draw_digit(3, 400).save(inputs / "three-large.png")
    draw_digit(5, 120).save(inputs / "five.png")
    draw_digit(7, 28).save(inputs / "seven-tiny.png")
    draw_digit(8, 150).save(inputs / "eight.jpg", quality=85)
    draw_digit(2, 140, ink=(20, 40, 160), paper=(250, 240, 200), mode="RGB").save(inputs / "colour-two.png")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    out = tmp_path / "out"
    proc = run_job("transform", f"generator={autoencoder_file}", f"inputs={inputs}", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "corrupt.png" in line] == \
        [line for line in proc.stderr.splitlines() if line.startswith("digit-job transform: skipped")]
    assert "skipped corrupt.png" in proc.stderr

    report = json.loads((out / "report.json").read_text())
    assert [s["input"] for s in report["skipped"]] == ["corrupt.png"]
    read = {o["input"]: o["digit"] for o in report["outputs"]}
    assert set(read) == set(drawn)
    correct = sum(read[name] == digit for name, digit in drawn.items())
    assert correct >= len(drawn) - 1, read  # printed digits from a 300-step model: at most one misread
    model, _, _ = load_model(autoencoder_file, "autoencoder")
    for o in report["outputs"]:
        printed = np.asarray(Image.open(out / o["output"]))
        assert printed.shape == (28, 28)
        # Each output is a clean printed digit: close to one of the font templates.
        template = model.templates[o["digit"], 0].add(1).mul(127.5).numpy()
        assert np.abs(printed.astype(np.float64) - template).mean() < 25
    preview = Image.open(out / "side-by-side.png")
    assert preview.size[1] > 6 * 28 and preview.size[0] > 3 * 28  # six rows: original | prepared | printed


def test_transform_with_no_readable_input_exits_2_and_writes_nothing(autoencoder_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(b"nothing")
    Image.new("L", (40, 40), 255).save(inputs / "blank.png")
    out = tmp_path / "out"
    proc = run_job("transform", f"generator={autoencoder_file}", f"inputs={inputs}", f"out={out}")
    assert proc.returncode == 2
    # One line (no per-input warnings before it), naming the count and the first reason.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: none of the 2 input(s)"), proc.stderr
    assert "(first: a.png: not an image Pillow can read)" in lines[0]
    assert not out.exists()


def test_transform_refuses_a_generator_that_is_not_an_autoencoder(tmp_path):
    assert train(tmp_path / "gan", "train.steps=1") == 0
    image = tmp_path / "one.png"
    draw_digit(1, 50).save(image)
    proc = run_job("transform", f"generator={tmp_path / 'gan' / 'generator.safetensors'}", f"inputs={image}",
                   f"out={tmp_path / 'out'}")
    assert proc.returncode == 2 and "holds a dcgan model, but a autoencoder model is needed" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_several_fonts_give_one_output_per_font(tmp_path):
    fonts = f"builtin,{digit_image.resolve_fonts('auto')[0]}"
    assert train(tmp_path / "run", f"model.font={fonts}", "train.steps=2", "train.batch_size=16",
                 preset="autoencoder-mnist") == 0
    model, info, _ = load_model(str(tmp_path / "run" / "autoencoder.safetensors"), "autoencoder")
    assert model.templates.shape == (10, 2, 28, 28) and len(info["extra"]["fonts"]) == 2
    draw_digit(4, 80).save(tmp_path / "four.png")
    assert main(["transform", f"generator={tmp_path / 'run' / 'autoencoder.safetensors'}",
                 f"inputs={tmp_path / 'four.png'}", f"out={tmp_path / 'out'}"]) == 0
    assert Image.open(tmp_path / "out" / "four.png").size == (56, 28)


def test_a_font_that_cannot_be_read_is_bad_input(tmp_path, capsys):
    bad = tmp_path / "font.ttf"
    bad.write_bytes(b"not a font")
    assert train(tmp_path / "run", f"model.font={bad}", "train.steps=1", preset="autoencoder-mnist") == 2
    assert "model.font=" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_digit_is_prepared_like_mnist_whatever_its_paper_and_size():
    dark_on_light = digit_image.prepare(draw_digit(6, 300))
    light_on_dark = digit_image.prepare(Image.fromarray(255 - np.asarray(draw_digit(6, 90))))
    for prepared in (dark_on_light, light_on_dark):
        assert prepared.shape == (28, 28) and prepared.dtype == np.uint8
        rows, cols = np.nonzero(prepared > 0)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (20, 21)  # 20 px box (+ resampling halo)
        ys, xs = np.indices(prepared.shape)
        mass = prepared.astype(np.float64)
        assert abs((ys * mass).sum() / mass.sum() - 13.5) < 1 and abs((xs * mass).sum() / mass.sum() - 13.5) < 1
    assert np.abs(dark_on_light.astype(int) - light_on_dark.astype(int)).mean() < 20


def test_templates_are_the_ten_digits_in_the_font():
    templates = digit_image.templates([digit_image.BUILTIN_FONT])
    assert templates.shape == (10, 1, 28, 28)
    flat = torch.from_numpy(templates).flatten(1).float()
    assert torch.cdist(flat, flat).add(torch.eye(10) * 1e9).min() > 500  # ten different images


def photo_of(digit: np.ndarray, side: int, seed: int) -> Image.Image:
    """An MNIST digit as a phone photo of ink on paper: enlarged, off-centre, dark on a
    tinted, unevenly lit, noisy background."""
    rng = np.random.default_rng(seed)
    ink = np.asarray(Image.fromarray(digit).resize((side // 2, side // 2), Image.Resampling.BICUBIC), np.float64) / 255
    canvas = np.zeros((side, side))
    top, left = rng.integers(side // 8, side // 3, size=2)
    canvas[top : top + side // 2, left : left + side // 2] = ink
    light = np.linspace(0.85, 1.0, side)[None, :] * rng.uniform(0.9, 1.0)
    grey = 230 * light * (1 - 0.8 * canvas) + rng.normal(0, 6, (side, side))
    rgb = np.clip(np.stack([grey, grey * 0.97, grey * 0.9], axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def test_the_shipped_autoencoder_reads_photos_of_handwritten_digits_out_of_the_box(tmp_path):
    from job.core.config import DataConfig
    from job.data import loading
    from job.models import resolve_builtin

    model, info, _ = load_model(resolve_builtin("builtin:mnist", "autoencoder"), "autoencoder")
    assert info["extra"]["nearest_template_accuracy"] >= 0.98  # the benchmark's target
    test = loading.load_split(DataConfig(), train=False)
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for digit in range(10):
        index = int(torch.nonzero(test.labels == digit)[0])
        photo_of(test.images[index, 0].numpy(), side=160 + 20 * digit, seed=digit).save(inputs / f"{digit}.jpg")
    assert main(["transform", f"inputs={inputs}", f"out={tmp_path / 'out'}"]) == 0  # generator=builtin:mnist
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    read = {o["input"]: o["digit"] for o in report["outputs"]}
    assert sum(read[f"{d}.jpg"] == d for d in range(10)) >= 9, read
