"""Solidity event declarations → a validated, hashable description used for decoding.

Accepts ``Transfer(address indexed from, address indexed to, uint256 value)``, unnamed
parameters, tuples written ``(uint256 a, address b)`` or ``tuple(uint256 a, address b)``, fixed
and dynamic arrays of anything, and an optional leading ``event`` keyword and ``anonymous``
suffix is refused (anonymous events have no topic0 to match on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

from core.errors import InvalidTrigger
from core.keccak import keccak

_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_ARRAY_SUFFIX = re.compile(r"^(\[\d*\])*$")
_ELEMENTARY = re.compile(r"^(u?int\d*|address|bool|bytes\d*|string|u?fixed\d+x\d+|function)$")
_SIZED = re.compile(r"^(u?int|bytes)(\d+)$")


def is_plain_elementary(type_str: str) -> bool:
    """Whether ``type_str`` is a canonical elementary type eth_abi accepts, known without
    asking it: ``address``, ``bool``, ``string``, ``bytes``, ``uintN``/``intN`` (N a multiple
    of 8 up to 256), ``bytesN`` (N up to 32). These need no eth_abi (imported only for other
    types: it costs ~0.2 s of start-up); anything else — arrays, tuples, ``fixed``,
    ``function``, invalid sizes — goes to eth_abi as before."""
    if type_str in ("address", "bool", "string", "bytes"):
        return True
    match = _SIZED.match(type_str)
    if match is None or match.group(2).startswith("0"):
        return False
    size = int(match.group(2))
    if match.group(1) == "bytes":
        return 1 <= size <= 32
    return size % 8 == 0 and 8 <= size <= 256


@lru_cache(maxsize=4096)
def type_shape(type_str: str) -> tuple[bool, bool]:
    """``(is_dynamic, is_array)`` of a canonical ABI type, as eth_abi's grammar says."""
    if is_plain_elementary(type_str):
        return type_str in ("string", "bytes"), False
    from eth_abi.grammar import parse

    parsed = parse(type_str)
    return bool(parsed.is_dynamic), bool(parsed.is_array)


@dataclass(frozen=True)
class Param:
    """One parameter: ``type`` is canonical (``uint256``, ``(address,bool)[]``);
    ``components`` name tuple members (recursively, for the JSON form)."""

    name: str
    type: str
    indexed: bool = False
    components: tuple[Param, ...] = ()

    @property
    def is_dynamic(self) -> bool:
        return type_shape(self.type)[0]

    @property
    def hashed_in_topic(self) -> bool:
        """An indexed parameter of dynamic type (``string``, ``bytes``), array or tuple is stored
        as the keccak hash of its encoding: its topic is 32 opaque bytes, not the value."""
        if not self.indexed:
            return False
        is_dynamic, is_array = type_shape(self.type)
        return is_dynamic or is_array or bool(self.components)


def arg_name(param: Param, position: int) -> str:
    """The name a parameter goes by in decoded args: its own, or ``arg<position>``."""
    return param.name or f"arg{position}"


@dataclass(frozen=True)
class EventSignature:
    name: str
    inputs: tuple[Param, ...]

    @cached_property
    def canonical(self) -> str:
        """``Transfer(address,address,uint256)``: what topic0 hashes."""
        return f"{self.name}({','.join(p.type for p in self.inputs)})"

    @cached_property
    def topic0(self) -> str:
        return "0x" + keccak(self.canonical.encode()).hex()

    @cached_property
    def params_by_name(self) -> dict[str, Param]:
        """Parameters by the name decoded args use (``arg<i>`` for unnamed ones)."""
        return {arg_name(param, position): param for position, param in enumerate(self.inputs)}

    @property
    def indexed(self) -> tuple[Param, ...]:
        return tuple(p for p in self.inputs if p.indexed)

    @property
    def non_indexed(self) -> tuple[Param, ...]:
        return tuple(p for p in self.inputs if not p.indexed)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidTrigger("unbalanced parentheses in event signature")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise InvalidTrigger("unbalanced parentheses in event signature")
    tail = "".join(current).strip()
    if tail or parts:
        parts.append(tail)
    return parts


def _normalise_elementary(type_str: str) -> str:
    aliases = {"uint": "uint256", "int": "int256", "byte": "bytes1",
               "fixed": "fixed128x18", "ufixed": "ufixed128x18"}
    return aliases.get(type_str, type_str)


def _parse_type(text: str, *, position: str) -> tuple[str, tuple[Param, ...]]:
    """Parse a type expression (elementary or tuple, with array suffixes) → canonical, members."""
    text = text.strip()
    if text.startswith("tuple("):
        text = text[len("tuple"):]
    if text.startswith("("):
        depth = 0
        index = 0
        for index, char in enumerate(text):  # noqa: B007 (index used after the loop)
            depth += char == "("
            depth -= char == ")"
            if depth == 0:
                break
        inner, suffix = text[1:index], text[index + 1:].replace(" ", "")
        if not _ARRAY_SUFFIX.match(suffix):
            raise InvalidTrigger(f"{position}: bad array suffix {suffix!r}")
        members = tuple(_parse_param(part, position=f"{position} member {n}", allow_indexed=False)
                        for n, part in enumerate(_split_top_level(inner)))
        if not members:
            raise InvalidTrigger(f"{position}: empty tuple")
        return f"({','.join(m.type for m in members)}){suffix}", members
    match = re.match(r"^([A-Za-z0-9]+)\s*((?:\[\s*\d*\s*\])*)$", text)
    if not match:
        raise InvalidTrigger(f"{position}: cannot read type {text!r}")
    base, suffix = _normalise_elementary(match.group(1)), match.group(2).replace(" ", "")
    if not _ELEMENTARY.match(base):
        raise InvalidTrigger(f"{position}: unknown type {match.group(1)!r}")
    canonical = base + suffix
    if is_plain_elementary(canonical):
        return canonical, ()
    from eth_abi.exceptions import ParseError
    from eth_abi.grammar import BasicType, TupleType, parse

    try:
        parsed = parse(canonical)
        parsed.validate()
    except (ParseError, ValueError) as error:
        raise InvalidTrigger(f"{position}: unknown type {canonical!r} ({error})") from None
    if not isinstance(parsed, BasicType | TupleType):
        raise InvalidTrigger(f"{position}: unsupported type {canonical!r}")
    return canonical, ()


def _parse_param(text: str, *, position: str, allow_indexed: bool = True) -> Param:
    text = text.strip()
    if not text:
        raise InvalidTrigger(f"{position}: empty parameter")
    # The type ends where the trailing words (``indexed``, name) begin: after the last ')' or ']'.
    cut = max(text.rfind(")"), text.rfind("]"))
    if cut >= 0:
        type_text, rest = text[:cut + 1], text[cut + 1:].split()
    else:
        words = text.split()
        type_text, rest = words[0], words[1:]
    indexed = False
    if rest and rest[0] == "indexed":
        if not allow_indexed:
            raise InvalidTrigger(f"{position}: 'indexed' is only allowed on event parameters")
        indexed, rest = True, rest[1:]
    if len(rest) > 1:
        raise InvalidTrigger(f"{position}: unexpected words {' '.join(rest)!r}")
    name = rest[0] if rest else ""
    if name and not _NAME.match(name):
        raise InvalidTrigger(f"{position}: bad parameter name {name!r}")
    type_str, members = _parse_type(type_text, position=position)
    return Param(name=name, type=type_str, indexed=indexed, components=members)


@lru_cache(maxsize=4096)
def parse_event_signature(text: str) -> EventSignature:
    """Parse and validate a Solidity event declaration; raise ``InvalidTrigger`` saying why."""
    source = text.strip().removeprefix("event ").strip().rstrip(";").strip()
    match = re.match(r"^([A-Za-z_$][A-Za-z0-9_$]*)\s*\((.*)\)\s*(anonymous)?$", source, re.S)
    if not match:
        raise InvalidTrigger(f"event signature {text!r} is not of the form Name(type [indexed] [name], ...)")
    if match.group(3):
        raise InvalidTrigger("anonymous events have no topic0 and cannot be matched")
    params = tuple(_parse_param(part, position=f"parameter {n}")
                   for n, part in enumerate(_split_top_level(match.group(2))))
    if sum(p.indexed for p in params) > 3:
        raise InvalidTrigger("an event has at most 3 indexed parameters")
    names = [p.name for p in params if p.name]
    if len(names) != len(set(names)):
        raise InvalidTrigger("duplicate parameter names")
    return EventSignature(name=match.group(1), inputs=params)
