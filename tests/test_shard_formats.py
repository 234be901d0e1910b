"""The shard-format table (job/shardsets/formats.py FORMATS): every registered format round-trips, names
its own files, and any other name is refused rather than falling through to a default."""

from __future__ import annotations

import pytest
import torch

from job.core.errors import BadInput
from job.data.strings import StringBatch
from job.shardsets import formats


def _digits(n: int = 7, channels: int = 1):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, 28, 28), generator=gen, dtype=torch.uint8)
    return images, torch.arange(n, dtype=torch.int64) % 10


@pytest.mark.parametrize("name", list(formats.FORMATS))
@pytest.mark.parametrize("labeled", [True, False])
def test_every_format_decodes_what_it_encodes_under_the_names_it_declares(name, labeled):
    images, labels = _digits()
    if not labeled:
        labels = torch.full_like(labels, formats.NO_LABEL)
    files = formats.encode(name, 12, images, labels, labeled)
    assert sorted(files) == sorted(formats.shard_files(name, 12, labeled))
    assert files == formats.encode(name, 12, images, labels, labeled)  # deterministic bytes
    got_images, got_labels = formats.decode(name, files)
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


@pytest.mark.parametrize("name", [n for n, f in formats.FORMATS.items() if f.holds_strings])
def test_every_format_that_holds_strings_decodes_the_strings_it_encodes(name):
    widths = torch.tensor([20, 33])
    images = torch.zeros((2, 1, 28, 33), dtype=torch.uint8)
    images[0, 0, :, :20] = 7
    images[1, 0] = 9
    labels = torch.tensor([[1, 2, -1], [4, 5, 6]])
    boxes = torch.tensor([[[0, 0, 10, 28], [10, 0, 20, 28], [-1, -1, -1, -1]],
                          [[0, 0, 11, 28], [11, 0, 22, 28], [22, 0, 33, 28]]])
    batch = StringBatch(images=images, widths=widths, labels=labels, lengths=torch.tensor([2, 3]), boxes=boxes,
                        texts=["12", "456"])
    decoded = formats.decode_strings(name, formats.encode_strings(name, 3, batch))
    assert [text for _, text, _ in decoded] == ["12", "456"]
    assert [image.shape[-1] for image, _, _ in decoded] == [20, 33]
    assert torch.equal(decoded[1][0], images[1]) and decoded[1][2] == boxes[1].tolist()


@pytest.mark.parametrize("name", ["tar", "jpeg", "", "IDX", "safetensors "])
def test_a_name_that_is_not_registered_is_refused_by_every_entry_point(name):
    images, labels = _digits(2)
    for call in (lambda: formats.shard_files(name, 0, True), lambda: formats.encode(name, 0, images, labels, True),
                 lambda: formats.decode(name, {"x": b""}), lambda: formats.decode_strings(name, {"x": b""})):
        with pytest.raises(BadInput, match="use one of safetensors, webdataset, idx"):
            call()


def test_strings_in_a_format_without_them_are_refused_naming_those_with_them():
    with pytest.raises(BadInput, match="format=idx holds single digits only: use format=safetensors or webdataset"):
        formats.encode_strings("idx", 0, None)
