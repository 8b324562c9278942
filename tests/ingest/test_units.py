"""The pure parts: range sizing, backoff, error classification, parsing, ancestor search."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from core.backoff import backoff_delay
from core.errors import ReorgTooDeep, RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
from ingest.ranges import RangeSizer
from ingest.reorg import Reorg, Unconfirmed, detect
from ingest.rpc import (
    Header,
    classify_rpc_error,
    lowercase_json,
    parse_header,
    parse_logs,
    parse_retry_after,
)
from ingest.store import Checkpoint, StoredBlock

H = "0x" + "ab" * 32


def test_range_sizer_uses_the_suggestion_halves_and_grows_back() -> None:
    sizer = RangeSizer(100, grow_after=2, initial=100)
    assert sizer.span(10, 1000) == (10, 109)
    assert sizer.span(10, 50) == (10, 50)
    sizer.shrink(10, 109, suggested=(10, 39))
    assert sizer.size == 30
    sizer.shrink(10, 39, suggested=None)
    assert sizer.size == 15
    sizer.shrink(10, 24, suggested=(11, 12))  # does not start at our range: halve instead
    assert sizer.size == 7
    sizes = []
    for _ in range(20):
        sizer.succeeded(sizer.size, 0)
        sizes.append(sizer.size)
    assert sizes[:4] == [7, 10, 10, 15]  # after a refusal: by half, every grow_after successes
    assert sizer.size == 100
    sizer.shrink(5, 5)
    assert sizer.size == 1


@pytest.mark.parametrize("maximum", [5, 50, 2000, 1_000_000])
def test_range_sizer_starts_at_one_block_and_follows_the_log_count(maximum: int) -> None:
    """Whatever MAX_BLOCK_RANGE is, no range carries much more than target_logs at a steady
    density: the first range is one block, the next ones are sized by the logs seen."""
    sizer = RangeSizer(maximum, target_logs=10_000)
    assert sizer.span(0, 10**9) == (0, 0)
    sizes = []
    for _ in range(8):
        blocks = sizer.size
        sizer.succeeded(blocks, 5_000 * blocks)  # 5,000 logs a block: two blocks fill a range
        sizes.append(sizer.size)
    assert max(sizes) <= min(maximum, 2)
    assert sizes[-1] == min(maximum, 2)
    sparse = RangeSizer(maximum, target_logs=10_000)
    for _ in range(12):
        sparse.succeeded(sparse.size, 200 * sparse.size)  # 200 a block: 50 blocks fill one
    assert sparse.size == min(maximum, 50)


def test_range_sizer_slow_start_grows_by_the_blocks_actually_fetched() -> None:
    sizer = RangeSizer(2000)
    sizes = []
    for _ in range(7):
        sizer.succeeded(sizer.size, 0)
        sizes.append(sizer.size)
    assert sizes == [4, 16, 64, 256, 1024, 2000, 2000]
    sizer.succeeded(1, 0)  # at the head: one block says nothing about 2000
    assert sizer.size == 4


def test_range_sizer_follows_log_density() -> None:
    sizer = RangeSizer(2000, target_logs=10_000, initial=2000)
    sizer.succeeded(2000, 200_000)
    assert sizer.size == 100
    for _ in range(10):
        sizer.succeeded(100, 10_000)
    assert sizer.size == 100  # does not grow past the density that fills a range
    sizer.succeeded(100, 50_000)  # the density jumped
    assert sizer.size == 20
    sizer.succeeded(1, 30_000)  # one block over the target: the smallest range, one block
    assert sizer.size == 1


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, base=0.25, cap=30, rng=rng) for n in range(1, 12)]
    assert all(0.125 * 2 ** (n - 1) <= d <= min(30, 0.25 * 2 ** (n - 1)) for n, d in
               zip(range(1, 12), delays, strict=True) if 0.25 * 2 ** (n - 1) <= 30)
    assert max(delays) <= 30
    assert backoff_delay(1, retry_after=5, rng=rng) >= 5
    assert backoff_delay(1, retry_after=500, cap=30, rng=rng) == 30


@pytest.mark.parametrize("message, suggested", [
    ("query returned more than 10000 results. Try with this block range [0x10, 0x2F].", (16, 47)),
    ("Log response size exceeded. ... this block range should work: [0x1, 0x5]", (1, 5)),
    ("block range too large", None),
    ("exceed maximum block range: 5000", None),
    ("query exceeds max results 20000, retry with the range 1-2", None),
])
def test_provider_limit_errors_are_recognised(message: str, suggested: tuple[int, int] | None) -> None:
    error = classify_rpc_error("eth_getLogs", {"code": -32005, "message": message})
    assert isinstance(error, RpcRangeTooLarge)
    assert error.suggested == suggested


def test_other_rpc_errors_are_transient() -> None:
    assert isinstance(classify_rpc_error("eth_getLogs", {"code": -32603, "message": "boom"}),
                      RpcUnavailable)
    assert isinstance(classify_rpc_error("eth_blockNumber", "nonsense"), RpcBadResponse)


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def _raw_log(**overrides: object) -> dict[str, object]:
    item: dict[str, object] = {"blockNumber": "0x5", "blockHash": H.upper().replace("0X", "0x"),
                               "transactionHash": H, "transactionIndex": "0x0", "logIndex": "0x2",
                               "address": "0x" + "AB" * 20, "topics": [H], "data": "0xDEAD",
                               "removed": False}
    item.update(overrides)
    return item


def test_logs_parse_lowercase_with_null_topics_and_refuse_wrong_types() -> None:
    [log] = parse_logs(lowercase_json([_raw_log()]))
    assert log.block_hash == H and log.address == "0x" + "ab" * 20 and log.data == "0xdead"
    assert (log.topic0, log.topic1, log.topic3) == (H, None, None)
    for bad in ({"logIndex": 2}, {"topics": "0x00"}, {"blockHash": "0x12"}, {"removed": True},
                {"data": None}, {"topics": [H] * 5}):
        with pytest.raises(RpcBadResponse):
            parse_logs(lowercase_json([_raw_log(**bad)]))
    with pytest.raises(RpcBadResponse):
        parse_logs({"not": "a list"})
    with pytest.raises(RpcBadResponse):
        parse_header({"number": 1, "hash": H, "parentHash": H, "timestamp": "0x1"})
    assert parse_header(None) is None


def _chain(tag: str, numbers: range, *, fork_below: str = "a") -> dict[int, Header | None]:
    """Headers ``0x<tag><n>`` linked by parentHash; the lowest links to ``fork_below``'s chain."""
    chain: dict[int, Header | None] = {}
    for n in numbers:
        parent_tag = tag if n - 1 in numbers else fork_below
        chain[n] = Header(n, f"0x{tag}{n:063x}"[:66], f"0x{parent_tag}{n - 1:063x}"[:66], n)
    return chain


def _stored(numbers: range) -> list[StoredBlock]:
    time = datetime(2026, 1, 1, tzinfo=UTC)
    return [StoredBlock(n, f"0xa{n:063x}", time) for n in sorted(numbers, reverse=True)]


def test_a_served_alternative_chain_linked_to_a_stored_ancestor_is_a_reorg() -> None:
    stored = _stored(range(10, 21))
    canonical = _chain("a", range(10, 16)) | _chain("b", range(16, 21))
    reorg = detect(1, Checkpoint(20, stored[0].hash), stored, canonical, window=11)
    assert isinstance(reorg, Reorg)
    assert reorg.ancestor.number == 15 and reorg.depth == 5 and reorg.new_head_hash == canonical[20].hash  # type: ignore[union-attr]
    assert detect(1, Checkpoint(20, stored[0].hash), stored, _chain("a", range(10, 21)),
                  window=11) is None
    # The alternative chain may be served only from the fork up (lower blocks not yet seen).
    partial = dict.fromkeys(range(10, 16)) | _chain("b", range(16, 21))
    assert isinstance(detect(1, Checkpoint(20, ""), stored, partial, window=11), Reorg)


def test_unknown_is_not_different() -> None:
    """``null`` headers — a node behind, a head lower than ours — are never a reorg."""
    stored = _stored(range(10, 21))
    checkpoint = Checkpoint(20, stored[0].hash)
    shorter = _chain("a", range(10, 14)) | dict.fromkeys(range(14, 21))
    assert detect(1, checkpoint, stored, shorter, window=11) is None
    assert detect(1, checkpoint, stored, dict.fromkeys(range(10, 21)), window=11) is None
    interleaved = {n: (h if n % 2 else None) for n, h in _chain("a", range(10, 21)).items()}
    assert detect(1, checkpoint, stored, interleaved, window=11) is None


def test_a_mismatch_without_a_linked_chain_up_to_our_height_is_unconfirmed() -> None:
    stored = _stored(range(10, 21))
    checkpoint = Checkpoint(20, stored[0].hash)
    # Another chain served only up to 18 (the node is behind on it): not a reorg yet.
    short_fork = _chain("a", range(10, 16)) | _chain("b", range(16, 19)) | dict.fromkeys(range(19, 21))
    assert isinstance(detect(1, checkpoint, stored, short_fork, window=11), Unconfirmed)
    # Answers mixed from two chains: block 18 of chain c does not link to 17 of chain b.
    mixed = _chain("a", range(10, 16)) | _chain("b", range(16, 18)) | _chain("c", range(18, 21))
    assert isinstance(detect(1, checkpoint, stored, mixed, window=11), Unconfirmed)
    # A fork below what the node served: 16 differs but links to a 15 that is not ours.
    deeper = dict.fromkeys(range(10, 16)) | _chain("b", range(16, 21), fork_below="x")
    assert isinstance(detect(1, checkpoint, stored, deeper, window=11), Unconfirmed)


def test_too_deep_only_when_the_alternative_chain_replaces_the_whole_window() -> None:
    stored = _stored(range(10, 21))
    checkpoint = Checkpoint(20, stored[0].hash)
    with pytest.raises(ReorgTooDeep, match="--from-block 10"):
        detect(1, checkpoint, stored, _chain("c", range(10, 21), fork_below="z"), window=11)
    gappy = _chain("c", range(10, 21), fork_below="z") | {15: None}
    assert isinstance(detect(1, checkpoint, stored, gappy, window=11), Unconfirmed)
