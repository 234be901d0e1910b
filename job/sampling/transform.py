"""`job transform`: turn images of handwritten digits into printed digits.

    python -m job transform inputs=photo.jpg out=printed/     # the shipped autoencoder (builtin:mnist)
    python -m job transform generator=runs/autoencoder/autoencoder.safetensors inputs=photo.jpg out=printed/
    python -m job transform generator=s3://bucket/ae/autoencoder.safetensors inputs=s3://bucket/scans/ out=s3://bucket/printed/

Data flow: the autoencoder file -> the input list (a file, a folder searched recursively,
or an S3 object/prefix) -> each image read and prepared like MNIST (digit_image.prepare:
grey, inverted when the paper is light, cropped to the ink, 20 px in 28, centred by mass)
-> the autoencoder in batches -> per input `<name>.png` (one printed digit per font, side
by side), `side-by-side.png` (original | prepared | printed) and `report.json` (the digit
each output reads as: its nearest font template).

An input that cannot be read (not an image, truncated, blank) is listed on stderr and in
report.json with the reason; the others still run. If none can be read, nothing is
written and the exit code is 2.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from job import storage
from job.core import config, console, runtime
from job.core.errors import BadInput
from job.data import digit_image, loading
from job.data.digit_image import grid_png
from job.models import load_model, resolve_builtin
from job.models.autoencoder import nearest_template

REPORT_FORMAT = "digit-job/transform"
PREVIEW_SCALE = 2  # side-by-side.png shows 28x28 digits at 56x56 pixels


def list_inputs(inputs: str) -> list[tuple[str, str]]:
    """[(name shown to the user, URI)] of the images to transform, in name order."""
    if storage.is_remote(inputs):
        storage.check_readable(inputs)
        if not inputs.endswith("/") and storage.exists(inputs):
            return [(inputs.rsplit("/", 1)[-1], inputs)]
        found = [(rel, storage.join(inputs, rel)) for rel in storage.walk_files(inputs)]
    elif os.path.isfile(inputs):
        return [(os.path.basename(inputs), inputs)]
    elif os.path.isdir(inputs):
        found = []
        for folder, dirs, names in os.walk(inputs):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                if not name.startswith("."):
                    path = os.path.join(folder, name)
                    found.append((os.path.relpath(path, inputs).replace(os.sep, "/"), path))
    else:
        raise BadInput(f"inputs={inputs} is neither an image file nor a folder")
    if not found:
        raise BadInput(f"inputs={inputs} holds no files")
    return sorted(found)


def read_image(uri: str) -> Image.Image:
    """The decoded image at `uri` (raises ValueError with a readable reason)."""
    blob = storage.read_bytes(uri)
    try:
        image = Image.open(io.BytesIO(blob))
        image.load()
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot be decoded ({e})") from None
    return image


def output_names(names: list[str]) -> list[str]:
    """`<name without extension>.png` per input, flattened into one folder, made unique."""
    out, used = [], set()
    for name in names:
        flat = name.replace("/", "__")
        stem = flat.rsplit(".", 1)[0] if "." in flat else flat
        candidate = stem + ".png"
        if candidate in used:
            candidate = flat + ".png"
        used.add(candidate)
        out.append(candidate)
    return out


def thumbnail(image: Image.Image, size: int) -> torch.Tensor:
    """The original as grey, fitted into size x size: uint8 [1, S, S] (for the preview)."""
    grey = ImageOps.pad(image.convert("L"), (size, size), color=255)
    return torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).view(1, size, size)


def png(pixels: torch.Tensor) -> bytes:
    """uint8 [fonts, S, S] -> one grey PNG, the fonts side by side."""
    strip = torch.cat(list(pixels), dim=1).numpy()
    buf = io.BytesIO()
    Image.fromarray(strip, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Prepared:
    """The inputs that could be read, prepared like MNIST, and those that could not."""

    digits: list[torch.Tensor] = field(default_factory=list)  # uint8 [S, S] each
    previews: list[torch.Tensor] = field(default_factory=list)  # thumbnails of the first inputs
    names: list[str] = field(default_factory=list)  # the inputs behind `digits`
    skipped: list[dict] = field(default_factory=list)  # {"input", "reason"}


def _prepare(cfg: config.TransformJob, inputs: list[tuple[str, str]], size: int) -> _Prepared:
    """Phase 2: read and prepare every input; unreadable ones are listed, not fatal, unless
    none can be read."""
    out = _Prepared()
    for name, uri in inputs:
        try:
            image = read_image(uri)
            digit = digit_image.prepare(image, size)
        except (ValueError, digit_image.NoDigit) as e:
            out.skipped.append({"input": name, "reason": str(e)})
            continue
        out.digits.append(torch.from_numpy(digit))
        if len(out.previews) < cfg.preview:
            out.previews.append(thumbnail(image, size))
        out.names.append(name)
    if not out.names:  # one error line, not a warning per input before it
        raise BadInput(f"none of the {len(inputs)} input(s) in {cfg.inputs} could be read "
                       f"(first: {out.skipped[0]['input']}: {out.skipped[0]['reason']})")
    for skipped in out.skipped:
        console.warn(f"skipped {skipped['input']}: {skipped['reason']}")
    return out


def _print_digits(model, handwritten: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Phase 3: the autoencoder over uint8 [N, C, S, S] in batches: [N, fonts, S, S] in [-1, 1]."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(handwritten), batch_size):
            x = loading.to_model_input(handwritten[start : start + batch_size].to(device), model.image_size, False)
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs)


def _side_by_side(previews: list[torch.Tensor], handwritten: torch.Tensor, printed: torch.Tensor, size: int) -> bytes:
    """side-by-side.png: per row the original, the prepared input and each font's output."""
    rows = len(previews)
    columns = [loading.to_model_input(torch.stack(previews), size, False),
               loading.to_model_input(handwritten[:rows, :1], size, False)]
    columns += [printed[:rows, f : f + 1] for f in range(printed.shape[1])]
    preview = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: input, then column
    preview = torch.nn.functional.interpolate(preview, scale_factor=PREVIEW_SCALE, mode="nearest")
    return grid_png(preview, nrow=len(columns))


def main(cfg: config.TransformJob) -> int:
    started = time.perf_counter()
    # Phase 1: everything that can reject the input happens before anything is written.
    model, info, raw = load_model(resolve_builtin(cfg.generator, "autoencoder"), "autoencoder")
    size, channels = model.image_size, model.channels
    inputs = list_inputs(cfg.inputs)
    storage.check_writable(cfg.out)
    prepared = _prepare(cfg, inputs, size)

    acc, _ = runtime.make_accelerator("no")
    if not acc.is_main_process:  # one process does the whole (small) job
        acc.wait_for_everyone()
        return 0
    handwritten = torch.stack(prepared.digits)[:, None].expand(-1, channels, -1, -1)  # uint8 [N, C, S, S]
    printed = _print_digits(model.to(acc.device), handwritten, cfg.batch_size, acc.device)
    digits, distances = nearest_template(printed, model.templates.cpu())

    # Phase 4: one PNG per input, the side-by-side preview, then report.json.
    names = output_names(prepared.names)
    for name, image in zip(names, loading.to_pixels(printed)):
        storage.write_bytes(storage.join(cfg.out, name), png(image))
    storage.write_bytes(storage.join(cfg.out, "side-by-side.png"),
                        _side_by_side(prepared.previews, handwritten, printed, size))
    report = {
        "format": REPORT_FORMAT,
        "version": 1,
        "generator": {"uri": cfg.generator, "sha256": storage.sha256(raw), "fonts": info["extra"].get("fonts")},
        "inputs": cfg.inputs,
        "outputs": [{"input": n, "output": o, "digit": int(d), "distance": round(float(e), 5)}
                    for n, o, d, e in zip(prepared.names, names, digits, distances)],
        "skipped": prepared.skipped,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    storage.write_bytes(storage.join(cfg.out, "report.json"), json.dumps(report, indent=1).encode())
    console.say(f"{len(prepared.names)} printed, {len(prepared.skipped)} skipped -> {cfg.out} "
                f"(side-by-side.png: original | prepared | printed; report.json)")
    acc.wait_for_everyone()
    return 0
