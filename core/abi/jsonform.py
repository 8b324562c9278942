"""Decoded values in the webhook's JSON form (docs/reference.md, Webhooks): integers as decimal strings, addresses
and bytes as lowercase ``0x`` hex, tuples as objects keyed by member name (``arg<i>`` when
unnamed), arrays as arrays, topic-hashed indexed parameters as their ``0x`` hash."""

from __future__ import annotations

from typing import Any

from core.abi.signature import EventSignature, Param, arg_name, type_shape


def _json_value(type_str: str, components: tuple[Param, ...], value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if type_shape(type_str)[1]:
        item_type = type_str[: type_str.rfind("[")]
        return [_json_value(item_type, components, item) for item in value]
    if components:
        return {arg_name(member, i): _json_value(member.type, member.components, item)
                for i, (member, item) in enumerate(zip(components, value, strict=True))}
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.lower() if type_str == "address" else value
    return str(value)  # fixed-point decimals


def to_json_args(signature: EventSignature, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` as :func:`core.abi.decode.decode_log` returns them, in the webhook's JSON form (docs/reference.md)."""
    result = {}
    for position, param in enumerate(signature.inputs):
        name = arg_name(param, position)
        value = args[name]
        if param.hashed_in_topic and isinstance(value, bytes) and len(value) == 32:
            result[name] = "0x" + value.hex()
        else:
            result[name] = _json_value(param.type, param.components, value)
    return result
