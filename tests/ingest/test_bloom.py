"""The completeness proof on real mainnet data: block 483920's header, its two ERC20 Transfer
logs and its four receipts (``tests/fixtures/mainnet_block_483920.json``). Blooms are computed
from the logs by ``ingest.bloom`` and compared with what the chain says — never hard-coded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import RpcBadResponse
from ingest.bloom import admits, admits_any, item_bits, log_bits, logs_bloom, parse_bloom
from ingest.completeness import (
    HashMismatch,
    IncompleteLogs,
    NotSeenYet,
    _scan,
    check_range,
    confirm_blocks,
    found_missing_logs,
)
from ingest.rpc import BlockNotSeen, Header, Log, lowercase_json, parse_header, parse_logs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mainnet_block_483920.json"
TOKEN = "0xf4eced2f682ce333f96f2d8966c613ded8fc95dd"
# Receivers of the block's two plain ether transfers: no log names them.
SILENT = ("0x9e669f970ec0f49bb735f20799a7e7c4a1c274e2", "0x743b8aeedc163c0e3a0fe9f3910d146c48e70da8")


@pytest.fixture(scope="module")
def mainnet() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


@pytest.fixture(scope="module")
def header(mainnet: dict[str, Any]) -> Header:
    parsed = parse_header(mainnet["header"])
    assert parsed is not None
    return parsed


@pytest.fixture(scope="module")
def logs(mainnet: dict[str, Any]) -> list[Log]:
    return parse_logs(lowercase_json(mainnet["logs"]))


def test_the_bloom_of_the_blocks_logs_is_the_headers_logs_bloom(mainnet: dict[str, Any],
                                                                 header: Header, logs: list[Log]) -> None:
    assert header.logs_bloom != 0 and len(logs) == 2
    assert logs_bloom(logs) == header.logs_bloom
    # Each receipt's own bloom is the bloom of its logs; together they make the header's.
    together = 0
    for receipt in mainnet["receipts"]:
        mine = [entry for entry in logs if entry.log_index in receipt["logIndexes"]]
        assert logs_bloom(mine) == parse_bloom(receipt["logsBloom"])
        together |= parse_bloom(receipt["logsBloom"])
    assert together == header.logs_bloom


def test_membership_has_no_false_negative_and_rejects_the_silent_addresses(
        header: Header, logs: list[Log]) -> None:
    for entry in logs:
        assert admits(header.logs_bloom, log_bits(entry))
        for item in (entry.address, entry.topic0, entry.topic1, entry.topic2):
            assert item is not None and admits(header.logs_bloom, item_bits(item))
    assert admits_any(header.logs_bloom, [TOKEN, SILENT[0]])
    assert not admits_any(header.logs_bloom, SILENT)
    with pytest.raises(TypeError):
        parse_bloom("0x00")


def test_the_complete_block_is_proven(header: Header, logs: list[Log]) -> None:
    check = check_range(header.number, [header], logs)
    assert check.headers == [header] and check.logs == logs and check.problem is None


@pytest.mark.parametrize("dropped", [0, 1])
def test_a_missing_log_is_caught(header: Header, logs: list[Log], dropped: int) -> None:
    check = check_range(header.number, [header], [e for e in logs if e.log_index != dropped])
    assert check.headers == [] and isinstance(check.problem, IncompleteLogs)


def test_a_clamped_answer_keeps_only_the_proven_prefix(header: Header, logs: list[Log]) -> None:
    """A node behind clamps eth_getLogs to its head: the blocks above come back without logs.
    Block 483920 is asked as the third block of a range whose first two are empty."""
    empty = [Header(header.number - 2 + n, f"0x{n:064x}", f"0x{n - 1:064x}", n) for n in range(2)]
    linked = replace(header, parent_hash=empty[-1].hash)
    first = header.number - 2
    complete = check_range(first, [*empty, linked], logs)
    assert complete.headers == [*empty, linked] and complete.problem is None
    clamped = check_range(first, [*empty, linked], [])
    assert clamped.headers == empty and clamped.logs == []
    assert isinstance(clamped.problem, IncompleteLogs)
    not_seen = check_range(first, [*empty, None], [])
    assert not_seen.headers == empty and isinstance(not_seen.problem, NotSeenYet)
    unlinked = check_range(first, [*empty, header], logs)  # its parentHash is the real one
    assert unlinked.headers == empty and isinstance(unlinked.problem, HashMismatch)


def test_a_log_that_is_not_the_blocks_is_caught(header: Header, logs: list[Log]) -> None:
    other_fork = [logs[0], logs[1]._replace(block_hash="0x" + "ee" * 32)]
    assert isinstance(check_range(header.number, [header], other_fork).problem, HashMismatch)
    foreign = logs + [logs[1]._replace(log_index=2, topic2="0x" + "00" * 12 + SILENT[0][2:])]
    assert isinstance(check_range(header.number, [header], foreign).problem, IncompleteLogs)
    with pytest.raises(RpcBadResponse):  # a log outside the asked range
        check_range(header.number + 1, [header], logs)


def test_a_zero_bloom_means_no_logs(header: Header, logs: list[Log]) -> None:
    empty = replace(header, logs_bloom=0)
    assert check_range(header.number, [empty], []).problem is None
    assert isinstance(check_range(header.number, [empty], logs).problem, IncompleteLogs)


def test_with_an_address_filter_empty_looking_blocks_are_confirmed_by_hash(
        header: Header, logs: list[Log]) -> None:
    # The range answer lost the token's logs: the bloom admits the token, so confirm by hash.
    check = check_range(header.number, [header], [], addresses=[TOKEN])
    assert check.headers == [header] and check.to_confirm == [header]
    assert found_missing_logs([logs])
    confirmed = confirm_blocks(check, [logs])
    assert confirmed.headers == [header] and confirmed.logs == logs and confirmed.to_confirm == []
    # A node that has not seen the hash errors: the block is not stored.
    unknown = confirm_blocks(check, [BlockNotSeen("eth_getLogs: -32000 unknown block")])
    assert unknown.headers == [] and isinstance(unknown.problem, BlockNotSeen)
    # Addresses the bloom rules out need no confirmation; a returned log must be in the bloom.
    assert check_range(header.number, [header], [], addresses=list(SILENT)).to_confirm == []
    assert check_range(header.number, [header], logs, addresses=[TOKEN]).problem is None
    stray = [logs[0]._replace(address=SILENT[0])]
    assert isinstance(check_range(header.number, [header], stray, addresses=list(SILENT)).problem,
                      IncompleteLogs)


# ------------------------------------------------------------------ the proof's scan, any order

def _scan_log_by_log(logs: list[Log]) -> tuple[dict[int, int], dict[int, str], set[int]]:
    """The proof's scan written plainly, one log at a time: what the columnar one must equal."""
    blooms: dict[int, int] = {}
    hashes: dict[int, str] = {}
    mixed: set[int] = set()
    for entry in logs:
        if entry.block_number not in hashes:
            hashes[entry.block_number] = entry.block_hash
        elif hashes[entry.block_number] != entry.block_hash:
            mixed.add(entry.block_number)
        blooms[entry.block_number] = blooms.get(entry.block_number, 0) | log_bits(entry)
    return blooms, hashes, mixed


_hex32 = st.sampled_from([f"0x{n:064x}" for n in range(6)])
_scan_logs = st.lists(st.builds(
    lambda number, block_hash, address, topics, index: Log(
        number, block_hash, "0x" + "ab" * 32, 0, index, address,
        *(topics + [None] * (4 - len(topics))), "0x"),
    st.integers(0, 3), _hex32, st.sampled_from([f"0x{n:040x}" for n in range(3)]),
    st.lists(_hex32, max_size=4), st.integers(0, 1000)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_scan_logs, st.booleans())
def test_scan_equals_the_log_by_log_scan_in_any_order_and_with_mixed_hashes(
        logs: list[Log], in_block_order: bool) -> None:
    if in_block_order:
        logs = sorted(logs, key=lambda entry: entry.block_number)
    assert _scan(logs) == _scan_log_by_log(logs)
