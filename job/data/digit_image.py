"""Single-digit images prepared the way MNIST was: the shared geometry of font templates
(autoencoder targets) and of user images fed to `job transform`; and `grid_png`, the
preview grid every command writes.

MNIST's recipe (LeCun et al.): white ink on black, the digit scaled so its longer side is
20 px (aspect ratio kept, anti-aliased), placed in a 28x28 field with its centre of mass
at the centre. At other sizes the 20/28 ratio is kept.

User images arrive as anything Pillow reads: a scan, a phone photo of a digit on white
paper, a grey PNG with white ink. `ink_from_image` turns them into "ink is bright": grey,
inverted when the background (the border) is light, background level subtracted.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

INK_THRESHOLD = 0.25  # of the brightest ink: fainter pixels (paper texture, shadows) are not the digit
RENDER_SIZE = 160  # font size digits are drawn at before being scaled down


class NoDigit(ValueError):
    """The image holds nothing that looks like ink."""


def ink_from_image(image: Image.Image) -> np.ndarray:
    """float32 [H, W] in [0, 1], 1 = the most ink. A light background is inverted away."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas count as paper: composite onto white before dropping alpha.
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if grey.shape[0] < 2 or grey.shape[1] < 2:
        raise NoDigit(f"image is only {grey.shape[1]}x{grey.shape[0]} pixels")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = background - grey if background > 0.5 else grey - background
    ink = np.clip(ink, 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:
        raise NoDigit("no ink found: the image is blank or has no contrast")
    ink /= peak
    ink[ink < INK_THRESHOLD] = 0.0
    return ink


def center_like_mnist(ink: np.ndarray, size: int = 28) -> np.ndarray:
    """uint8 [size, size]: the ink cropped to its bounding box, longer side scaled to
    20/28 of `size`, centred by mass."""
    rows, cols = np.nonzero(ink > 0)
    if len(rows) == 0:
        raise NoDigit("no ink found")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    h, w = crop.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    patch = Image.fromarray((crop * 255).astype(np.uint8)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    patch = np.asarray(patch, dtype=np.float32)
    total = patch.sum()
    if total <= 0:
        raise NoDigit("no ink left after scaling")
    ys, xs = np.indices(patch.shape)
    cy, cx = (ys * patch).sum() / total, (xs * patch).sum() / total
    # Place the patch so its centre of mass lands on the field's centre, clipped to the field.
    top = int(round(size / 2 - cy - 0.5))
    left = int(round(size / 2 - cx - 0.5))
    top = min(max(top, 0), size - new_h)
    left = min(max(left, 0), size - new_w)
    field = np.zeros((size, size), dtype=np.float32)
    field[top : top + new_h, left : left + new_w] = patch
    return np.clip(field, 0, 255).round().astype(np.uint8)


def prepare(image: Image.Image, size: int = 28) -> np.ndarray:
    """A user's digit image -> uint8 [size, size], MNIST-style (raises NoDigit)."""
    return center_like_mnist(ink_from_image(image), size)


# ----------------------------------------------------------------------------- fonts

# Looked for, in order, when model.font=auto: serif faces that ship with most distributions.
AUTO_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/TTF/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSerif-Regular.ttf",
    "/Library/Fonts/Times New Roman.ttf",
    "C:/Windows/Fonts/times.ttf",
)
BUILTIN_FONT = "builtin"  # Pillow's own scalable font: needs no file


def resolve_fonts(spec: str) -> list[str]:
    """model.font -> font paths (or BUILTIN_FONT). `auto` picks the first installed serif."""
    import os

    if spec.strip() == "auto":
        for path in AUTO_FONTS:
            if os.path.isfile(path):
                return [path]
        return [BUILTIN_FONT]
    fonts = [part.strip() for part in spec.split(",") if part.strip()]
    if not fonts:
        raise ValueError("model.font is empty: give a TTF path, several comma-separated, auto or builtin")
    return fonts


def load_font(path: str, size: int = RENDER_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A Pillow font at `size` (raises OSError when the file is not a readable font)."""
    if path == BUILTIN_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


def render_digit(font, digit: int, size: int = 28) -> np.ndarray:
    """uint8 [size, size]: `digit` drawn in `font`, white on black, placed like MNIST."""
    canvas = Image.new("L", (RENDER_SIZE * 2, RENDER_SIZE * 2), 0)
    ImageDraw.Draw(canvas).text((RENDER_SIZE // 2, RENDER_SIZE // 4), str(digit), fill=255, font=font)
    ink = np.asarray(canvas, dtype=np.float32) / 255.0
    return center_like_mnist(ink, size)


def templates(fonts: list[str], size: int = 28) -> np.ndarray:
    """uint8 [10, len(fonts), size, size]: every digit in every font."""
    loaded = [load_font(f) for f in fonts]
    return np.stack([np.stack([render_digit(font, d, size) for font in loaded]) for d in range(10)])


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """Images in [-1, 1], [N, C, H, W] -> PNG bytes of a grid with `nrow` images per row."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if images.shape[1] == 1:
        array = array[:, :, 0]  # make_grid repeats grey images to RGB; store them as grey
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
