"""What one item of a shard set is: the layouts `job sample layout=...` writes. One
registration per layout, like the model kinds (job/core/kinds.py) and the shard formats
(job/shardsets/formats.py).

- digits: one generated digit per item, (image [C, H, W], label).
- strings: an image of a number, several generated digits side by side, (image, text,
  per-digit boxes); composed by job/data/strings.py.

A registration holds what the shard sets themselves need (how a shard's content is
encoded, counted and described in the manifest, whether items are strings), and names the
code above this package that differs per layout as "module:function", imported only when
used (so the read API imports nothing above storage):
- `check_config(SampleJob)`: the settings that only this layout takes, refused otherwise;
- `check_generator(G, uri)`: a generator this layout cannot draw from, refused before writing;
- `draw(G, plan, index, batch, device, keep, texts)`: a shard's content and the digits drawn;
- `evaluate(cfg, manifest, out, classifier, classifier_info)`: the report on such a set.

Adding a layout: its encoders in the formats that hold it, its drawing in
job/sampling/generation.py, its report in job/evaluation/, its name among `layout`'s
choices in job/core/config.py, and one entry in LAYOUTS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from job.core.errors import BadInput
from job.core.kinds import attribute
from job.shardsets import formats

DEFAULT = "digits"  # what a manifest without a `layout` field holds (sets written before strings)


@dataclass(frozen=True)
class Layout:
    name: str
    unit: str  # one item, in progress lines and counts: "digit", "string"
    items_are_strings: bool  # readers yield (image, text, boxes) instead of (image, label)
    # (format, index, content, labeled) -> {file name: bytes}
    encode: Callable[[str, int, Any, bool], dict[str, bytes]]
    labels: Callable[[Any], torch.Tensor]  # every digit label in a shard's content (NO_LABEL where none)
    count: Callable[[Any], int]  # items in a shard's content
    settings: Callable[[Any], dict | None]  # SampleJob -> the layout's own settings, kept in the plan
    # (plan, SampleJob, records) -> what the manifest says about this layout beyond every set's fields
    manifest_section: Callable[[Any, Any, list[dict]], dict]
    check_config: str  # "module:function"
    check_generator: str
    draw: str
    evaluate: str

    def function(self, role: str) -> Callable:
        """The function registered for `role` ("draw", "evaluate", ...), imported now."""
        return attribute(getattr(self, role))


def _encode_digits(fmt: str, index: int, content, labeled: bool) -> dict[str, bytes]:
    images, labels = content
    return formats.encode(fmt, index, images, labels, labeled)


def _encode_strings(fmt: str, index: int, batch, labeled: bool) -> dict[str, bytes]:
    return formats.encode_strings(fmt, index, batch)


def _strings_section(plan, cfg, records: list[dict]) -> dict:
    return {"strings": {"text": plan.text, "texts": cfg.texts or None, "texts_sha256": plan.texts_sha256 or None,
                        "digits": sum(r["digits"] for r in records), **plan.strings}}


def check_digits_config(cfg) -> None:
    if cfg.text is not None or cfg.texts:
        raise BadInput("text= and texts= are for layout=strings")


def any_generator(G, uri: str) -> None:
    """Every generator draws single digits."""


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            name="digits",
            unit="digit",
            items_are_strings=False,
            encode=_encode_digits,
            labels=lambda content: content[1],
            count=lambda content: int(content[1].shape[0]),
            settings=lambda cfg: None,
            manifest_section=lambda plan, cfg, records: {},
            check_config="job.shardsets.layouts:check_digits_config",
            check_generator="job.shardsets.layouts:any_generator",
            draw="job.sampling.generation:shard_digits",
            evaluate="job.evaluation.evaluate:evaluate_digits",
        ),
        Layout(
            name="strings",
            unit="string",
            items_are_strings=True,
            encode=_encode_strings,
            labels=lambda batch: batch.labels.flatten(),
            count=lambda batch: len(batch.texts),
            settings=lambda cfg: dataclasses.asdict(cfg.strings),
            manifest_section=_strings_section,
            check_config="job.data.strings:check_sample_config",
            check_generator="job.data.strings:check_generator",
            draw="job.sampling.generation:shard_strings",
            evaluate="job.evaluation.evaluate_strings:evaluate",
        ),
    )
}


def named(name: str | None) -> Layout:
    """The registered layout `name` (a manifest's `layout`, None for sets that predate it)."""
    name = name or DEFAULT
    if name not in LAYOUTS:
        raise BadInput(f"layout={name!r} is not one this version knows: use {' or '.join(LAYOUTS)}")
    return LAYOUTS[name]
