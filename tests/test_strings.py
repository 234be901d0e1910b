"""Digit strings (`sample layout=strings`): determinism over processes, boxes, given texts,
refused layouts, and reading strings back (`evaluate samples=<strings>`)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from safetensors.torch import load as st_load

from conftest import accelerate_launch, run_job, train
from job.cli import main
from job.core import config
from job.data import loading, strings
from job.evaluation.evaluate_strings import cut_digits
from job.models import scoring
from job.shardsets import formats


def strings_args(generator: str, out, *extra: str) -> list[str]:
    return ["sample", f"generator={generator}", f"out={out}", "layout=strings", "progress=false", *extra]


def shard_tensors(folder, index: int = 0) -> dict[str, torch.Tensor]:
    return st_load((folder / f"shard-{index:06d}.safetensors").read_bytes())


def test_the_same_seed_gives_identical_string_shards_on_one_and_two_processes(generator_file, tmp_path):
    args = ["count=90", "shard_size=20", "strings.length=2-7", "seed=5"]
    one = run_job(*strings_args(generator_file, tmp_path / "one", *args))
    two = run_job(*strings_args(generator_file, tmp_path / "two", *args), launcher=accelerate_launch(2))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "(2 workers)" in two.stdout  # really two processes
    names = sorted(p.name for p in (tmp_path / "one").glob("shard-*"))
    assert len(names) == 5
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two")]
    assert manifests[0]["shards"] == manifests[1]["shards"] and manifests[0]["layout"] == "strings"


@pytest.mark.parametrize("extra", [[], ["strings.width=64", "strings.length=3-9"],
                                   ["strings.spacing=-4,-4", "strings.slant=0.6", "strings.jitter=6"]],
                         ids=["by-length", "fixed-width", "overlapping"])
def test_boxes_lie_inside_the_image_in_reading_order_around_the_ink(generator_file, tmp_path, extra):
    out = tmp_path / "out"
    assert main(strings_args(generator_file, out, "count=40", "shard_size=40", *extra)) == 0
    t = shard_tensors(out)
    n, _, height, width = t["images"].shape
    fixed = next((int(e.split("=")[1]) for e in extra if e.startswith("strings.width=")), 0)
    assert height == 28 and (width == fixed if fixed else width == int(t["widths"].max()))
    for i in range(n):
        length, own_width = int(t["lengths"][i]), int(t["widths"][i])
        boxes = t["boxes"][i, :length]
        assert (t["boxes"][i, length:] == -1).all() and (t["labels"][i, length:] == -1).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= own_width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        centres = (boxes[:, 0] + boxes[:, 2]).tolist()
        assert boxes[:, 0].tolist() == sorted(boxes[:, 0].tolist()) and centres == sorted(centres), boxes
        assert (t["images"][i, :, :, own_width:] == 0).all()  # padding is blank


def test_a_given_text_is_rendered_with_exactly_its_digits(generator_file, tmp_path):
    out = tmp_path / "out"
    assert main(strings_args(generator_file, out, "text=2026", "count=12", "shard_size=5")) == 0
    for index in range(3):
        t = shard_tensors(out, index)
        assert (t["lengths"] == 4).all()
        assert t["labels"].tolist() == [[2, 0, 2, 6]] * len(t["lengths"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 12 and manifest["strings"]["text"] == "2026"
    assert manifest["label_histogram"] == [12, 0, 24, 0, 0, 0, 12, 0, 0, 0]


def test_a_texts_file_is_used_in_order_and_written_as_webdataset_txt_and_json(generator_file, tmp_path):
    texts = tmp_path / "amounts.txt"
    texts.write_text("0042\n\n  1999 \n7\n")
    out = tmp_path / "out"
    assert main(strings_args(generator_file, out, f"texts={texts}", "count=7", "shard_size=4",
                             "format=webdataset")) == 0
    read = []
    for index in range(2):
        with tarfile.open(out / f"shard-{index:06d}.tar") as tar:
            names = sorted(m.name for m in tar.getmembers())
            assert {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
            for name in names:
                if name.endswith(".txt"):
                    text = tar.extractfile(name).read().decode()
                    meta = json.loads(tar.extractfile(name.replace(".txt", ".json")).read())
                    assert meta["text"] == text and len(meta["boxes"]) == len(text)
                    read.append(text)
    assert read == ["0042", "1999", "7", "0042", "1999", "7", "0042"]
    decoded = formats.decode_strings("webdataset", {"shard-000000.tar": (out / "shard-000000.tar").read_bytes()})
    assert [text for _, text, _ in decoded] == read[:4]


@pytest.mark.parametrize("extra, says", [
    (["strings.spacing=3,-2"], "strings.spacing='3,-2' is an empty range"),
    (["strings.spacing=-9,2"], "strings.spacing='-9,2' is outside"),
    (["text="], "text is empty"),
    (["text=12a4"], "holds 'a': strings are made of the digits 0-9 only"),
    (["text=١٢٣"], "strings are made of the digits 0-9 only"),  # Arabic-Indic digits are not 0-9
    (["strings.length=0"], "strings.length='0' must be between 1 and 64"),
    (["strings.length=8-4"], "low end first"),
    (["strings.digits=1,2,3"], "ten weights"),
    (["strings.scale=0.1,0.5"], "strings.scale='0.1,0.5' is outside"),
    (["format=idx"], "format=idx holds single digits only"),
    (["text=12", "texts=t.txt"], "not both"),
])
def test_bad_layout_values_exit_2_with_one_line_and_write_nothing(generator_file, tmp_path, capsys, extra, says):
    out = tmp_path / "out"
    assert main(strings_args(generator_file, out, "count=10", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_a_bad_line_in_a_texts_file_is_named(generator_file, tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("123\n45-6\n")
    assert main(strings_args(generator_file, tmp_path / "out", "count=10", f"texts={texts}")) == 2
    err = capsys.readouterr().err
    assert f"texts={texts} line 2='45-6' holds '-'" in err and not (tmp_path / "out").exists()


def test_strings_need_a_conditional_generator(tmp_path, capsys):
    run_dir = tmp_path / "uncond"
    assert train(run_dir, "train.steps=1", "model.conditional=false") == 0
    capsys.readouterr()
    assert main(strings_args(str(run_dir / "generator.safetensors"), tmp_path / "out", "count=10")) == 2
    assert "class-conditional generator" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_strings_of_real_mnist_digits_are_cut_at_their_boxes_and_read_back():
    """The layout and the cutting, without a generator: strings composed of real test digits
    must read back about as well as the digits themselves (the classifier's 99%)."""
    test = loading.load_split(config.DataConfig(), train=False)
    layout = strings.Layout.from_config(config.StringsConfig())
    gen = torch.Generator().manual_seed(0)
    texts = strings.draw_texts(150, layout, gen)
    labels = torch.tensor([int(c) for t in texts for c in t])
    # One real test image per character, of the right class.
    pools = {c: torch.nonzero(test.labels == c).flatten() for c in range(10)}
    picks = torch.stack([pools[int(c)][torch.randint(len(pools[int(c)]), (1,), generator=gen)][0] for c in labels])
    batch = strings.assemble(texts, test.images[picks], strings.GlyphDraws.draw(len(labels), layout, gen), layout)
    classifier, _, _ = scoring.load_classifier("builtin:mnist")
    cuts = torch.cat([torch.from_numpy(cut_digits(batch.images[i, :, :, : int(batch.widths[i])],
                                                  batch.boxes[i, : len(t)].tolist(), 28))
                      for i, t in enumerate(texts)])
    read = scoring.score(classifier, cuts[:, None]).predictions
    digit_accuracy = (read == labels).float().mean().item()
    assert digit_accuracy >= 0.97, digit_accuracy


def test_evaluate_reads_a_strings_shard_set_back_and_reports_both_accuracies(generator_file, tmp_path, capsys):
    out = tmp_path / "numbers"
    assert main(strings_args(generator_file, out, "count=30", "strings.length=3-5")) == 0
    assert main(["evaluate", f"samples={out}", "n=30"]) == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["format"] == "digit-job/strings-report" and report["strings"] == 30
    assert report["digits"] == sum(int(k) * v["strings"] for k, v in report["by_length"].items())
    assert 0 <= report["string_accuracy"] <= report["digit_accuracy"] <= 1
    assert (out / "eval" / "grid.png").exists() and "string accuracy" in (out / "eval" / "report.md").read_text()
    assert io.BytesIO((out / "eval" / "grid.png").read_bytes()).read(4) == b"\x89PNG"
