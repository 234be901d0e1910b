"""Errors from the file system while writing, made for real: a full disk and a read-only
disk (a small tmpfs, remounted), a name too long, a file where a folder is needed. Each
command answers with one line that names the path and the cause and a documented exit code
(6; 2 where it is found before anything is written), and the same command completes once
the cause is fixed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_job

FREE_KB = 4  # what the filler leaves: one page, less than any command writes in all


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs, filled but for FREE_KB; yields (its path, the filler to delete)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    filler = mount / "filler"
    try:
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - FREE_KB * 1024))
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def digit_images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = np.full((28, 28), 255, np.uint8)
        pixels[6:22, 12 + i : 15 + i] = rng.integers(0, 60, (16, 3))  # a dark stroke on paper
        Image.fromarray(pixels).save(folder / f"digit-{i}.png")
    return folder


def commands(generator_file: str, disk: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", "--config", "debug", f"run.dir={disk / 'run'}", "train.steps=2"],
        "sample": ["sample", f"generator={generator_file}", f"out={disk / 'digits'}", "count=200",
                   "shard_size=100", "progress=false"],
        "evaluate": ["evaluate", f"generator={generator_file}", f"out={disk / 'eval'}", "n=300", "tstr.n=300",
                     "tstr.epochs=1", "baseline=none"],
        "transform": ["transform", f"inputs={digit_images(tmp_path / 'photos')}", f"out={disk / 'printed'}"],
        "data": ["data", "push", "mnist", str(disk / "mnist")],
    }


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "transform", "data"])
def test_a_full_disk_is_one_line_exit_6_and_the_same_command_completes_once_space_is_freed(
        generator_file, small_disk, tmp_path, command):
    disk, filler = small_disk
    args = commands(generator_file, disk, tmp_path)[command]
    proc = run_job(*args)
    assert proc.returncode == 6, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert f"cannot write {disk}" in line and "No space left on device" in line, line
    assert not list(disk.rglob(".tmp-*")), "no half-written file is left behind"
    filler.unlink()
    again = run_job(*args)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_name_too_long_is_one_line_naming_the_path(tmp_path):
    run_dir = tmp_path / ("r" * 300)
    proc = run_job("train", "--config", "debug", f"run.dir={run_dir}", "train.steps=1")
    assert proc.returncode == 6
    line = one_error_line(proc)
    assert "File name too long" in line and "use a shorter name" in line and "r" * 50 in line


def test_a_file_where_a_folder_is_needed_is_refused_before_anything_is_written(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    proc = run_job("train", "--config", "debug", f"run.dir={blocker / 'run'}", "train.steps=1")
    assert proc.returncode == 2
    assert "is a file, not a folder" in one_error_line(proc)
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "transform", "data"])
def test_a_read_only_disk_is_one_line_naming_the_path_and_the_command_completes_once_writable(
        generator_file, small_disk, tmp_path, command):
    disk, filler = small_disk
    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    args = commands(generator_file, disk, tmp_path)[command]
    proc = run_job(*args)
    assert proc.returncode in (2, 6), proc.stderr[-3000:]  # 2: found before anything was written
    line = one_error_line(proc)
    assert str(disk) in line and ("read-only" in line.lower() or "no write permission" in line), line
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    again = run_job(*args)
    assert again.returncode == 0, again.stderr[-3000:]
