"""Decode a stored log under an event signature, and turn decoded values into SPEC §6 JSON.

Indexed parameters of dynamic type (``string``, ``bytes``, arrays, tuples) are topic hashes: they
decode to the 32-byte hash. A log that does not fit the signature (wrong topic count, short or
malformed data) raises ``DecodeError``: a non-match, never a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_abi.grammar import parse

from processor.signature import EventSignature, Param


class DecodeError(ValueError):
    """The log does not decode under the signature."""


def _arg_name(param: Param, position: int) -> str:
    return param.name or f"arg{position}"


def _hex_to_bytes(value: str) -> bytes:
    try:
        return bytes.fromhex(value[2:] if value.startswith(("0x", "0X")) else value)
    except ValueError:
        raise DecodeError(f"not hex: {value[:20]!r}") from None


def decode_log(signature: EventSignature, topics: Sequence[str | None], data: str) -> dict[str, Any]:
    """Return ``{name: python value}`` for every parameter (unnamed ones as ``arg<i>``).

    ``topics`` is ``[topic0, topic1, topic2, topic3]`` with ``None`` for absent topics.
    Integers are ints, addresses checksummed strings from eth_abi, bytes are ``bytes``; indexed
    dynamic values are their 32-byte topic hash (``bytes``).
    """
    present = [t for t in topics[1:] if t is not None]
    indexed = signature.indexed
    if len(present) != len(indexed):
        raise DecodeError(f"{len(present)} indexed topics, signature has {len(indexed)}")
    values: dict[int, Any] = {}
    topic_iter = iter(present)
    for position, param in enumerate(signature.inputs):
        if not param.indexed:
            continue
        raw = _hex_to_bytes(next(topic_iter))
        if len(raw) != 32:
            raise DecodeError("topic is not 32 bytes")
        if parse(param.type).is_dynamic or parse(param.type).is_array or param.components:
            values[position] = raw
        else:
            try:
                values[position] = abi_decode([param.type], raw, strict=True)[0]
            except (DecodingError, OverflowError, ValueError) as error:
                raise DecodeError(f"topic for {param.type}: {error}") from None
    body = signature.non_indexed
    if body:
        try:
            decoded = abi_decode([p.type for p in body], _hex_to_bytes(data), strict=False)
        except (DecodingError, OverflowError, ValueError) as error:
            raise DecodeError(f"data: {error}") from None
        body_iter = iter(decoded)
        for position, param in enumerate(signature.inputs):
            if not param.indexed:
                values[position] = next(body_iter)
    return {_arg_name(p, i): values[i] for i, p in enumerate(signature.inputs)}


def _json_value(type_str: str, components: tuple[Param, ...], value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    parsed = parse(type_str)
    if parsed.is_array:
        item_type = type_str[: type_str.rfind("[")]
        return [_json_value(item_type, components, item) for item in value]
    if components:
        return {_arg_name(member, i): _json_value(member.type, member.components, item)
                for i, (member, item) in enumerate(zip(components, value, strict=True))}
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.lower() if type_str == "address" else value
    return str(value)  # fixed-point decimals


def to_json_args(signature: EventSignature, args: dict[str, Any]) -> dict[str, Any]:
    """SPEC §6 form: integers as decimal strings, addresses/bytes lowercase hex, tuples as
    objects keyed by member name (``arg<i>`` when unnamed), arrays as arrays."""
    result = {}
    for position, param in enumerate(signature.inputs):
        name = _arg_name(param, position)
        value = args[name]
        if param.indexed and isinstance(value, bytes) and len(value) == 32 and (
                parse(param.type).is_dynamic or parse(param.type).is_array or param.components):
            result[name] = "0x" + value.hex()
        else:
            result[name] = _json_value(param.type, param.components, value)
    return result
