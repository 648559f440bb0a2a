"""Completeness rules on listings, and the variables.index header of real bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage.complete import graph_needs_variables, index_shard_count, missing_parts

REPO = Path(__file__).resolve().parents[2]


def _header(shards: int) -> bytes:
    # Table entry with the empty key: shared=0, unshared=0, value length; then
    # BundleHeaderProto {num_shards: shards (field 1), version {producer: 1} (field 3)}.
    proto = bytes([0x08, shards, 0x1A, 0x02, 0x08, 0x01])
    return bytes([0, 0, len(proto)]) + proto + b"\x00rest of the table"


def test_shard_count_of_a_real_bundle() -> None:
    index = REPO / "models" / "mlp" / "1" / "variables" / "variables.index"
    assert index_shard_count(index.read_bytes()[:256]) == 1


@pytest.mark.parametrize("head", [b"", b"\x01\x00\x02", b"\x00\x00\x09\x08"])
def test_malformed_index_head_is_an_error(head: bytes) -> None:
    with pytest.raises(ValueError):
        index_shard_count(head)


def _files(*names: str) -> dict[str, int]:
    return dict.fromkeys(names, 1)


def test_every_shard_the_index_names_must_be_listed() -> None:
    shards = [f"variables/variables.data-{i:05d}-of-00003" for i in range(3)]
    base = ("saved_model.pb", "variables/variables.index")
    assert index_shard_count(_header(3)) == 3
    reason = missing_parts(_files(*base, *shards[:2]), "", 3)
    assert reason is not None and "missing 1 of 3" in reason and "data-00002-of-00003" in reason
    assert missing_parts(_files(*base, *shards), "", 3) is None


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (("variables/variables.index",), "no saved_model.pb"),
        (("saved_model.pb", "variables/variables.data-00000-of-00001"), "without variables.index"),
    ],
)
def test_incomplete_listings(names: tuple[str, ...], reason: str) -> None:
    got = missing_parts(_files(*names), "", None)
    assert got is not None and reason in got


def test_graph_with_variables_is_recognised() -> None:
    assert graph_needs_variables((REPO / "models" / "mlp" / "1" / "saved_model.pb").read_bytes())
    assert not graph_needs_variables(b"\x08\x01 a graph of constants")
