"""Handwritten digit strings (`sample layout=strings`): texts, layout draws and composition.

A string image is made of one generated digit per character, each with its own noise. Each
digit is placed in a cell `height` pixels high: scaled (strings.scale), slanted
(strings.slant: x shifts by slant x the height above the middle), moved up or down
(strings.jitter), cut to its inked columns, and set after the previous one with a gap of
strings.spacing pixels (negative: the digits overlap, by at most a quarter of the narrower
one). Ink is combined with max, as pen
strokes on paper would. Every draw comes from the shard's random stream, so a shard's bytes
depend only on the generator, the seed, the shard index and the layout config.

Boxes are the ink bounds of each digit, [x0, y0, x1, y1) in image pixels, in reading order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from job.core.errors import BadInput

MARGIN = 2  # empty columns left and right of the first and last digit
INK = 48  # grey level (of 255) from which a pixel counts as ink for columns and boxes
MAX_LENGTH = 64
MAX_OVERLAP = 4  # px: more and neighbouring digits stop being readable (and boxes cross)


# ----------------------------------------------------------------------------- config values


def parse_range(text: str, key: str, low: float, high: float) -> tuple[float, float]:
    """'a,b' (or one number a) -> (a, b), checked to lie in [low, high] with a <= b."""
    try:
        parts = [float(p) for p in str(text).split(",")]
    except ValueError:
        raise BadInput(f"strings.{key}={text!r} is not a range: write low,high (e.g. {low},{high})") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts):
        raise BadInput(f"strings.{key}={text!r} is not a range: write low,high (e.g. {low},{high})")
    lo, hi = parts
    if lo > hi:
        raise BadInput(f"strings.{key}={text!r} is an empty range: the low end comes first ({hi},{lo})")
    if lo < low or hi > high:
        raise BadInput(f"strings.{key}={text!r} is outside {low},{high}")
    return lo, hi


def parse_length(text: str) -> tuple[int, int]:
    """'6' or '4-8' -> (min, max) digits per drawn string."""
    parts = str(text).split("-")
    if not 1 <= len(parts) <= 2 or not all(p.strip().isdigit() for p in parts):
        raise BadInput(f"strings.length={text!r} is not a length: write 6 or a range like 4-8")
    lo, hi = int(parts[0]), int(parts[-1])
    if not 1 <= lo <= hi <= MAX_LENGTH:
        raise BadInput(f"strings.length={text!r} must be between 1 and {MAX_LENGTH}, low end first")
    return lo, hi


def parse_digit_weights(text: str) -> list[float]:
    """'uniform' or ten non-negative weights for 0..9 (e.g. Benford-like house numbers)."""
    if text == "uniform":
        return [1.0] * 10
    try:
        weights = [float(p) for p in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 10 or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise BadInput(f"strings.digits={text!r} must be uniform or ten weights >= 0 for 0..9, "
                       "e.g. 1,1,1,1,1,1,1,1,1,2")
    return weights


def check_text(text: str, where: str) -> str:
    if not text:
        raise BadInput(f"{where} is empty: a string needs at least one digit")
    if not text.isascii() or not text.isdigit():
        bad = next(c for c in text if not (c.isascii() and c.isdigit()))
        raise BadInput(f"{where}={text!r} holds {bad!r}: strings are made of the digits 0-9 only")
    if len(text) > MAX_LENGTH:
        raise BadInput(f"{where} has {len(text)} digits, more than {MAX_LENGTH}")
    return text


def parse_texts_file(data: bytes, uri: str) -> list[str]:
    """One string per line (blank lines and surrounding spaces ignored)."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInput(f"texts={uri} is not UTF-8 text") from None
    texts = [check_text(line.strip(), f"texts={uri} line {n}") for n, line in enumerate(lines, 1)
             if line.strip()]
    if not texts:
        raise BadInput(f"texts={uri} holds no strings")
    return texts


@dataclass(frozen=True)
class Layout:
    """The checked layout of one job (from config.StringsConfig)."""

    height: int
    width: int  # 0: each image as wide as its string (a shard pads to its widest)
    spacing: tuple[float, float]
    jitter: float
    scale: tuple[float, float]
    slant: tuple[float, float]
    length: tuple[int, int]
    digit_weights: tuple[float, ...]

    @classmethod
    def from_config(cls, s) -> Layout:
        return cls(
            height=s.height, width=s.width,
            spacing=parse_range(s.spacing, "spacing", -MAX_OVERLAP, 64),
            jitter=s.jitter,
            scale=parse_range(s.scale, "scale", 0.3, 1.25),
            slant=parse_range(s.slant, "slant", -0.6, 0.6),
            length=parse_length(s.length),
            digit_weights=tuple(parse_digit_weights(s.digits)),
        )


# ----------------------------------------------------------------------------- draws


def draw_texts(n: int, layout: Layout, gen: torch.Generator) -> list[str]:
    lo, hi = layout.length
    lengths = torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    weights = torch.tensor(layout.digit_weights, dtype=torch.float64)
    digits = torch.multinomial(weights, sum(lengths), replacement=True, generator=gen).tolist()
    texts, at = [], 0
    for length in lengths:
        texts.append("".join(str(d) for d in digits[at : at + length]))
        at += length
    return texts


@dataclass
class GlyphDraws:
    """Per digit: size, slant, vertical shift and the gap to the next digit."""

    scale: torch.Tensor
    slant: torch.Tensor
    shift: torch.Tensor  # px, + is down
    gap: torch.Tensor  # px

    @classmethod
    def draw(cls, n: int, layout: Layout, gen: torch.Generator) -> GlyphDraws:
        def uniform(lo_hi: tuple[float, float]) -> torch.Tensor:
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

        return cls(scale=uniform(layout.scale), slant=uniform(layout.slant),
                   shift=uniform((-layout.jitter, layout.jitter)), gap=uniform(layout.spacing).round())


# ----------------------------------------------------------------------------- composition


def glyph_cells(digits: torch.Tensor, draws: GlyphDraws, height: int) -> torch.Tensor:
    """uint8 [n, C, height, height]: each digit scaled, slanted and shifted in a square cell."""
    x = digits.float()
    n = x.shape[0]
    s = draws.scale.float()
    k = draws.slant.float()
    dy = (2 * draws.shift / height).float()  # normalized: the cell spans [-1, 1]
    # theta maps a cell point to the source digit point: source = (cell - shift) / scale,
    # with x moved by k * y first (y grows downwards: k > 0 leans the tops to the right).
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / s
    theta[:, 0, 1] = k / s
    theta[:, 0, 2] = -k * dy / s
    theta[:, 1, 1] = 1 / s
    theta[:, 1, 2] = -dy / s
    grid = F.affine_grid(theta, [n, x.shape[1], height, height], align_corners=False)
    cells = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return cells.round().clamp(0, 255).to(torch.uint8)


def _ink_span(profile: torch.Tensor) -> tuple[int, int] | None:
    """(first, last + 1) index of the True entries of a 1-d mask, or None."""
    idx = torch.nonzero(profile).flatten()
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


def compose(cells: torch.Tensor, gaps: list[int]) -> tuple[torch.Tensor, list[list[int]]]:
    """One string image (uint8 [C, H, W]) and its boxes from its digits' cells, in order."""
    c, h, side = cells.shape[1], cells.shape[2], cells.shape[3]
    ink = cells.amax(dim=1) >= INK  # [L, H, side]
    spans = []
    for cell_ink in ink:
        cols = _ink_span(cell_ink.any(dim=0))
        # A digit with no ink (a faint generation) still takes a narrow slot of its own.
        spans.append(cols or (side // 2 - side // 8, side // 2 + side // 8))
    xs, x = [], MARGIN
    widths = [c1 - c0 for c0, c1 in spans]
    for i, width in enumerate(widths):
        xs.append(x)
        if i + 1 < len(spans):
            # Overlap at most a quarter of the narrower neighbour: two narrow 1s overlapping
            # by half would read as one thick stroke. Boxes stay in reading order.
            gap = max(gaps[i], -(min(width, widths[i + 1]) // 4))
            x += max(width + gap, 1)
    total = xs[-1] + (spans[-1][1] - spans[-1][0]) + MARGIN
    image = torch.zeros(c, h, total, dtype=torch.uint8)
    boxes = []
    for (c0, c1), x0, cell, cell_ink in zip(spans, xs, cells, ink):
        region = image[:, :, x0 : x0 + (c1 - c0)]
        torch.maximum(region, cell[:, :, c0:c1], out=region)
        rows = _ink_span(cell_ink[:, c0:c1].any(dim=1)) or (0, h)
        boxes.append([x0, rows[0], x0 + (c1 - c0), rows[1]])
    return image, boxes


def fit_width(image: torch.Tensor, boxes: list[list[int]], width: int) -> tuple[torch.Tensor, list[list[int]]]:
    """The image in exactly `width` columns: padded on the right, or scaled down (both axes,
    centred vertically) when the string is wider."""
    c, h, w = image.shape
    if w <= width:
        return F.pad(image, (0, width - w)), boxes
    factor = width / w
    new_h = max(1, round(h * factor))
    small = F.interpolate(image[None].float(), size=(new_h, width), mode="bilinear", antialias=True,
                          align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    top = (h - new_h) // 2
    out = torch.zeros(c, h, width, dtype=torch.uint8)
    out[:, top : top + new_h] = small
    scaled = [[min(width - 1, math.floor(x0 * factor)), top + math.floor(y0 * factor),
               max(math.floor(x0 * factor) + 1, min(width, math.ceil(x1 * factor))),
               top + max(math.floor(y0 * factor) + 1, math.ceil(y1 * factor))] for x0, y0, x1, y1 in boxes]
    return out, scaled


@dataclass
class StringBatch:
    """A shard of strings, padded to its widest image (or to the fixed width)."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    widths: torch.Tensor  # int64 [N]: each image's own width (W when the width is fixed)
    labels: torch.Tensor  # int64 [N, L]: digits, -1 past each string's end
    lengths: torch.Tensor  # int64 [N]
    boxes: torch.Tensor  # int64 [N, L, 4]: [x0, y0, x1, y1), -1 past each string's end
    texts: list[str]


def assemble(texts: list[str], digits: torch.Tensor, draws: GlyphDraws, layout: Layout) -> StringBatch:
    """Compose every string of a shard from its digits (in text order, concatenated)."""
    cells = glyph_cells(digits, draws, layout.height)
    gaps = draws.gap.to(torch.int64).tolist()
    images, all_boxes, at = [], [], 0
    for text in texts:
        n = len(text)
        image, boxes = compose(cells[at : at + n], gaps[at : at + n])
        if layout.width:
            image, boxes = fit_width(image, boxes, layout.width)
        images.append(image)
        all_boxes.append(boxes)
        at += n
    widths = torch.tensor([im.shape[-1] for im in images], dtype=torch.int64)
    width = layout.width or int(widths.max())
    longest = max(len(t) for t in texts)
    labels = torch.full((len(texts), longest), -1, dtype=torch.int64)
    boxes_t = torch.full((len(texts), longest, 4), -1, dtype=torch.int64)
    for i, (text, boxes) in enumerate(zip(texts, all_boxes)):
        labels[i, : len(text)] = torch.tensor([int(ch) for ch in text])
        boxes_t[i, : len(text)] = torch.tensor(boxes, dtype=torch.int64)
    padded = torch.stack([F.pad(im, (0, width - im.shape[-1])) for im in images])
    return StringBatch(padded, widths, labels, torch.tensor([len(t) for t in texts]), boxes_t, texts)


# ----------------------------------------------------------------------------- layout=strings


def check_sample_config(cfg) -> None:
    """`job sample layout=strings`: every strings.* value, text= or texts=, and a format
    that holds strings (job/shardsets/layouts.py calls this)."""
    from job.shardsets.formats import strings_format

    Layout.from_config(cfg.strings)
    if cfg.text is not None and cfg.texts:
        raise BadInput("pass text=<digits> or texts=<file>, not both")
    if cfg.text is not None:
        cfg.text = check_text(str(cfg.text), "text")
    strings_format(cfg.format)
    if cfg.labels != "balanced":
        raise BadInput("labels= chooses single digits; for strings use strings.digits= (or text=/texts=)")


def check_generator(G, uri: str) -> None:
    """A generator strings can be drawn from: class-conditional over the ten digits."""
    if G.num_classes != 10 or G.output_shape[0] not in (1, 3):
        raise BadInput(f"layout=strings needs a class-conditional generator of the ten digits; {uri} "
                       f"has {G.num_classes or 'no'} classes")
