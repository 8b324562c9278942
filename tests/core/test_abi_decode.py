"""Decoding real ABI-encoded logs (OpenZeppelin ERC20/ERC721/ERC1155 on anvil, a crafted
tuple/array event) equals web3's own decoding; the word-slicing fast path equals eth_abi."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode
from eth_utils import keccak
from hexbytes import HexBytes
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from core.abi import (
    DecodeError,
    EventSignature,
    decode_log,
    field_reader,
    log_decoder,
    parse_event_signature,
    to_json_args,
)
from core.abi.decode import _fast_decoder, _general_decoder
from tests.support.anvil import Anvil
from tests.support.contracts import deploy, deploy_erc20, transact, web3_for


def abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ", ".join(f"{abi_type(c)} {c['name']}".strip() for c in item["components"])
        return f"({inner}){item['type'][len('tuple'):]}"
    return str(item["type"])


def declaration(event_abi: dict[str, Any]) -> str:
    """The Solidity declaration a user would write for an ABI event entry."""
    params = [" ".join(filter(None, [abi_type(i), "indexed" if i["indexed"] else "", i["name"]]))
              for i in event_abi["inputs"]]
    return f"{event_abi['name']}({', '.join(params)})"


def normalise(value: Any) -> Any:
    """web3's values in the webhook JSON form (docs/reference.md) (what ``to_json_args`` produces)."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.lower() if Web3.is_address(value) else value
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    return [normalise(item) for item in value]


def assert_same_as_web3(contract: Any, receipt: Any) -> int:
    checked = 0
    events = {e["name"]: e for e in contract.abi if e["type"] == "event"}
    topics = {"0x" + keccak(text=parse_event_signature(declaration(e)).canonical).hex(): e
              for e in events.values()}
    for log in receipt["logs"]:
        event_abi = topics[HexBytes(log["topics"][0]).to_0x_hex()]
        expected = contract.events[event_abi["name"]]().process_log(log)["args"]
        signature = parse_event_signature(declaration(event_abi))
        stored_topics = [HexBytes(t).to_0x_hex() for t in log["topics"]]
        decoded = decode_log(signature, stored_topics, HexBytes(log["data"]).to_0x_hex())
        assert to_json_args(signature, decoded) == normalise(dict(expected)), event_abi["name"]
        checked += 1
    return checked


@pytest.fixture(scope="module")
def chain() -> Any:
    node = Anvil()
    try:
        yield web3_for(node.url)
    finally:
        node.stop()


def test_openzeppelin_erc20_erc721_erc1155_logs_decode_as_web3_does(chain: Web3) -> None:
    me, other = list(chain.eth.accounts)[:2]
    erc20 = deploy_erc20(chain)
    checked = assert_same_as_web3(erc20, transact(chain, erc20.functions.mint(me, 2 ** 255)))
    checked += assert_same_as_web3(erc20, transact(chain, erc20.functions.transfer(other, 2 ** 200)))
    checked += assert_same_as_web3(erc20, transact(chain, erc20.functions.approve(other, 2 ** 256 - 1)))
    erc721 = deploy(chain, "ERC721PresetMinterPauserAutoId", "Nft", "NFT", "ipfs://x/")
    checked += assert_same_as_web3(erc721, transact(chain, erc721.functions.mint(other)))
    checked += assert_same_as_web3(erc721, transact(chain, erc721.functions.mint(me)))
    checked += assert_same_as_web3(erc721, transact(chain, erc721.functions.approve(other, 1)))
    erc1155 = deploy(chain, "ERC1155PresetMinterPauser", "ipfs://{id}")
    checked += assert_same_as_web3(erc1155, transact(chain, erc1155.functions.mint(me, 7, 99, b"")))
    checked += assert_same_as_web3(erc1155, transact(
        chain, erc1155.functions.mintBatch(me, [1, 2, 2 ** 255], [5, 6, 2 ** 256 - 1], b"\x01")))
    checked += assert_same_as_web3(erc1155, transact(
        chain, erc1155.functions.setApprovalForAll(other, True)))
    assert checked >= 9


ORDER_ABI: dict[str, Any] = {
    "type": "event", "name": "OrderFilled", "anonymous": False, "inputs": [
        {"name": "order", "type": "tuple", "indexed": False, "components": [
            {"name": "maker", "type": "address"}, {"name": "amount", "type": "uint256"},
            {"name": "tags", "type": "bytes32[]"}]},
        {"name": "weights", "type": "uint16[3]", "indexed": False},
        {"name": "label", "type": "string", "indexed": True},
        {"name": "legs", "type": "tuple[]", "indexed": False, "components": [
            {"name": "to", "type": "address"}, {"name": "share", "type": "int128"}]},
        {"name": "note", "type": "bytes", "indexed": False},
        {"name": "taker", "type": "address", "indexed": True},
    ]}


def test_tuple_and_array_event_decodes_as_web3_does(chain: Web3) -> None:
    signature = parse_event_signature(declaration(ORDER_ABI))
    assert signature.canonical == ("OrderFilled((address,uint256,bytes32[]),uint16[3],string,"
                                   "(address,int128)[],bytes,address)")
    maker, taker = list(chain.eth.accounts)[2:4]
    data = encode(["(address,uint256,bytes32[])", "uint16[3]", "(address,int128)[]", "bytes"],
                  [(maker, 2 ** 256 - 1, [b"\x01" * 32, b"\x02" * 32]), [1, 2, 65535],
                   [(maker, -(2 ** 127)), (taker, 5)], b"hello"])
    topics = [HexBytes(signature.topic0), HexBytes(keccak(text="limit")),
              HexBytes(b"\x00" * 12 + bytes.fromhex(taker[2:]))]
    log: dict[str, Any] = {"address": "0x" + "11" * 20, "blockHash": HexBytes(b"\x00" * 32), "blockNumber": 1,
           "data": HexBytes(data), "logIndex": 0, "transactionHash": HexBytes(b"\x01" * 32),
           "transactionIndex": 0, "removed": False,
           "topics": topics}
    contract = chain.eth.contract(abi=[ORDER_ABI])
    expected = contract.events.OrderFilled().process_log(log)["args"]
    decoded = decode_log(signature, [t.to_0x_hex() for t in topics], "0x" + data.hex())
    assert to_json_args(signature, decoded) == normalise(dict(expected))
    assert to_json_args(signature, decoded)["order"]["maker"] == maker.lower()
    with pytest.raises(DecodeError):  # wrong topic count is a non-match, not a crash
        decode_log(signature, [t.to_0x_hex() for t in topics[:2]], "0x" + data.hex())
    with pytest.raises(DecodeError):
        decode_log(signature, [t.to_0x_hex() for t in topics], "0x" + data.hex()[:256])


STATIC = parse_event_signature(
    "S(address indexed a, int8 indexed b, bool c, uint24 d, bytes3 e, int256 f, address g)")

WORDS = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 255).map(lambda n: n.to_bytes(32, "big")),
    st.integers(-128, 127).map(lambda n: n.to_bytes(32, "big", signed=True)),
    st.integers(0, 2 ** 160 - 1).map(lambda n: n.to_bytes(32, "big")),
    st.binary(min_size=3, max_size=3).map(lambda b: b + bytes(29)),
)


def outcome(decoder: Any, *args: Any) -> Any:
    try:
        return decoder(*args)
    except DecodeError:
        return DecodeError


@settings(max_examples=400, deadline=None)
@given(topics=st.lists(WORDS, min_size=2, max_size=2), body=st.lists(WORDS, min_size=5, max_size=6))
def test_fast_path_equals_eth_abi(topics: list[bytes], body: list[bytes]) -> None:
    fast, general = _fast_decoder(STATIC), _general_decoder(STATIC)
    assert fast is not None
    args = ("0x" + topics[0].hex(), "0x" + topics[1].hex(), None, "0x" + b"".join(body).hex())
    assert outcome(fast, *args) == outcome(general, *args)


def test_fast_path_is_used_only_for_static_elementary_signatures() -> None:
    assert _fast_decoder(parse_event_signature("T(address indexed a, uint256 v)")) is not None
    for text in ("T(uint256[] v)", "T(string s)", "T((uint256 a) t)", "T(uint8[2] v)"):
        assert _fast_decoder(parse_event_signature(text)) is None, text
    assert isinstance(STATIC, EventSignature)


# Valid words per type of STATIC, so that most logs decode and the values are compared.
VALID_WORDS = {
    "address": st.integers(0, 2 ** 160 - 1).map(lambda n: n.to_bytes(32, "big")),
    "int8": st.integers(-128, 127).map(lambda n: n.to_bytes(32, "big", signed=True)),
    "bool": st.integers(0, 1).map(lambda n: n.to_bytes(32, "big")),
    "uint24": st.integers(0, 2 ** 24 - 1).map(lambda n: n.to_bytes(32, "big")),
    "bytes3": st.binary(min_size=3, max_size=3).map(lambda b: b + bytes(29)),
    "int256": st.binary(min_size=32, max_size=32),
}
DAMAGE = st.sampled_from([None] * 5 + ["random-word", "drop-topic", "gap", "extra-topic",
                                       "bad-hex", "short", "upper", "no-prefix", "space"])


@st.composite
def static_log(draw: st.DrawFn) -> tuple[list[str | None], str]:
    words = {param.name: draw(VALID_WORDS[param.type]) for param in STATIC.inputs}
    for _ in range(draw(st.integers(0, 2))):
        if draw(DAMAGE) == "random-word":
            words[draw(st.sampled_from(sorted(words)))] = draw(st.binary(min_size=32, max_size=32))
    topics: list[str | None] = ["0x" + words[p.name].hex() for p in STATIC.inputs if p.indexed]
    data = "0x" + b"".join(words[p.name] for p in STATIC.inputs if not p.indexed).hex()
    damage = draw(DAMAGE)
    if damage == "drop-topic":
        topics.pop(0)
    elif damage == "extra-topic":
        topics.append("0x" + "07" * 32)
    elif damage == "bad-hex":
        topics[1] = "0x" + "zz" * 32
    elif damage == "short":
        data = data[:-2]
    elif damage == "upper":
        topics[0], data = (topics[0] or "").upper().replace("0X", "0x"), data.upper()
    elif damage == "no-prefix":
        data = data[2:]
    elif damage == "space":
        data = data[:4] + " " + data[4:]  # bytes.fromhex skips it: the decoder still reads it
    topics = (topics + [None, None, None])[:3]
    if damage == "gap":
        topics = [None, *topics[:2]]
    return topics, data


@settings(max_examples=400, deadline=None)
@given(log=static_log())
def test_field_readers_fail_only_where_the_decoder_fails_and_agree_with_it(
        log: tuple[list[str | None], str]) -> None:
    """What the processor's index relies on: a reader's failure means the log does not decode,
    and when both succeed the reader's value is the decoded one."""
    topics, data = log
    decoded = outcome(log_decoder(STATIC), *topics, data)
    for param in STATIC.inputs:
        reader = field_reader(STATIC, param.name)
        assert reader is not None
        value = outcome(reader, *topics, data)
        if value is DecodeError:
            assert decoded is DecodeError, param.name
        elif decoded is not DecodeError:
            assert value == decoded[param.name], param.name


def test_field_readers_exist_only_for_word_sliced_signatures() -> None:
    assert field_reader(parse_event_signature("T(uint256[] v, address a)"), "a") is None
    assert field_reader(STATIC, "nope") is None
