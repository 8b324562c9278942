"""eth_abi is imported only for types the word-slicing path does not cover: the answers given
without it must be eth_abi's own, and a worker delivering static-type events never imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from eth_abi.exceptions import ParseError
from eth_abi.grammar import BasicType, parse

from core.abi.signature import is_plain_elementary, parse_event_signature, type_shape

CANDIDATES = [
    *(f"{base}{bits}" for base in ("uint", "int") for bits in range(0, 300)),
    *(f"bytes{size}" for size in range(0, 40)),
    "uint08", "int016", "bytes01", "address", "bool", "string", "bytes", "function",
    "fixed128x18", "ufixed8x1", "uint", "int", "byte", "uint256[]", "(uint256,address)",
    "(uint256,address)[2]", "string[3][]", "address[]",
]


def _eth_abi_accepts(type_str: str) -> bool:
    try:
        parsed = parse(type_str)
        parsed.validate()
    except (ParseError, ValueError):
        return False
    return True


@pytest.mark.parametrize("type_str", CANDIDATES)
def test_types_known_without_eth_abi_are_the_ones_it_accepts_and_shapes_agree(
        type_str: str) -> None:
    if is_plain_elementary(type_str):
        assert _eth_abi_accepts(type_str)
        assert isinstance(parse(type_str), BasicType)
    if _eth_abi_accepts(type_str):
        parsed = parse(type_str)
        assert type_shape(type_str) == (bool(parsed.is_dynamic), bool(parsed.is_array))


def test_invalid_sizes_still_get_eth_abis_reason() -> None:
    from core.errors import InvalidTrigger

    with pytest.raises(InvalidTrigger, match="unknown type 'uint7'"):
        parse_event_signature("E(uint7 a)")
    with pytest.raises(InvalidTrigger, match="unknown type 'bytes33'"):
        parse_event_signature("E(bytes33 a)")


def test_a_worker_building_a_static_type_payload_does_not_import_eth_abi() -> None:
    code = """
import sys
from datetime import UTC, datetime
import workers.__main__, workers.runtime, workers.jobs
from workers.payload import build_payload
word = "0x" + "0" * 24 + "11" * 20
event = {"id": 1, "topic0": "0x" + "dd" * 32, "topic1": word, "topic2": word, "topic3": None,
         "data": "0x" + "0" * 63 + "5", "chain_id": 1, "block_number": 1, "block_hash": "0xab",
         "block_time": datetime.now(UTC), "tx_hash": "0xcd", "tx_index": 0, "log_index": 0,
         "address": "0xef"}
build_payload(delivery_id=1, kind="matched", replay=False, trigger_id=1, trigger_name="t",
              event_signature="Transfer(address indexed from, address indexed to, uint256 value)",
              event=event)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"eth_abi", "eth_utils"})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
