"""What a decoded value looks like, by ABI type: the contract between the decoder and anything
that compares decoded values (trigger conditions).

The decoder (:mod:`core.abi.decode`) returns, per kind: ``int`` → Python ``int``; ``decimal``
(``fixed``/``ufixed``) → ``Decimal``; ``address`` → lowercase ``0x`` string; ``bytes``
(``bytesN``, ``bytes``, ``function``, and every topic-hashed indexed parameter) → ``bytes``;
``bool`` → ``bool``; ``string`` → ``str``; arrays and tuples → tuples of their items.
``hex`` is not an ABI kind: it names event columns stored as ``0x`` strings (``tx_hash``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from core.abi.signature import Param

Kind = Literal["int", "decimal", "address", "hex", "bytes", "bool", "string", "array", "tuple"]


@dataclass(frozen=True)
class FieldType:
    """What a path resolves to: its comparison kind and, for containers, what is inside."""

    kind: Kind
    type_str: str = ""
    components: tuple[Param, ...] = ()
    array_size: int | None = None  # fixed-size arrays; None = dynamic
    byte_size: int | None = None  # bytesN

    def item(self) -> FieldType:
        return field_type(self.type_str[: self.type_str.rfind("[")], self.components)


def field_type(type_str: str, components: tuple[Param, ...] = (), *,
               hashed: bool = False) -> FieldType:
    """The ``FieldType`` of an ABI type; ``hashed`` for indexed dynamic parameters (a topic)."""
    if hashed:
        return FieldType("bytes", "bytes32", byte_size=32)
    from eth_abi.grammar import parse  # cached by eth_abi; imported where conditions need it

    parsed = parse(type_str)
    if parsed.is_array:
        size = parsed.arrlist[-1]
        return FieldType("array", type_str, components, array_size=size[0] if size else None)
    if components:
        return FieldType("tuple", type_str, components)
    base, sub = parsed.base, parsed.sub
    if base in ("uint", "int"):
        return FieldType("int", type_str)
    if base in ("ufixed", "fixed"):
        return FieldType("decimal", type_str)
    if base == "address":
        return FieldType("address", type_str)
    if base == "bool":
        return FieldType("bool", type_str)
    if base == "string":
        return FieldType("string", type_str)
    if base == "bytes":
        return FieldType("bytes", type_str, byte_size=int(sub) if sub else None)
    return FieldType("bytes", type_str)  # ``function``: 24 raw bytes


@lru_cache(maxsize=4096)
def param_type(param: Param) -> FieldType:
    """The ``FieldType`` of a top-level event parameter (a topic hash when it is hashed)."""
    return field_type(param.type, param.components, hashed=param.hashed_in_topic)
