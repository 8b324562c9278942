"""Decode a stored log under an event signature: the whole log, or one top-level field.

Indexed parameters of dynamic type (``string``, ``bytes``, arrays, tuples) are topic hashes: they
decode to the 32-byte hash. A log that does not fit the signature (wrong topic count, short or
malformed data) raises ``DecodeError``: a non-match, never a crash.

Signatures made only of static elementary types (``Transfer``, ``Approval``, ``Swap``… — the
bulk of real traffic) are decoded by slicing 32-byte words, with the same validity rules as
eth_abi (padding, ranges, ``bool`` in {0, 1}); everything else goes through eth_abi. Both paths
return addresses as lowercase ``0x`` strings.

For those same signatures, :func:`field_reader` reads one top-level parameter without decoding
the rest, so a caller can judge a log by one field and decode the whole log only when it passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from core.abi.signature import EventSignature, arg_name

if TYPE_CHECKING:
    from eth_abi.grammar import ABIType

# eth_abi is imported only by the general decoder: the word-slicing path covers the static
# elementary signatures that make most traffic, and a worker or processor that sees only those
# never pays eth_abi's import (~0.2 s of start-up).


class DecodeError(ValueError):
    """The log does not decode under the signature."""


# (topic1, topic2, topic3, data) → {name: value}; raises DecodeError.
LogDecoder = Callable[[str | None, str | None, str | None, str], dict[str, Any]]
# (topic1, topic2, topic3, data) → the value of one parameter; raises DecodeError.
FieldReader = Callable[[str | None, str | None, str | None, str], Any]
WordDecoder = Callable[[bytes], Any]

_ZERO_12 = bytes(12)
_ELEMENTARY_INT = re.compile(r"^(u?)int(\d+)$")
_FIXED_BYTES = re.compile(r"^bytes(\d+)$")


def _hex_to_bytes(value: str) -> bytes:
    try:
        return bytes.fromhex(value[2:] if value.startswith(("0x", "0X")) else value)
    except ValueError:
        raise DecodeError(f"not hex: {value[:20]!r}") from None


def _word_decoder(type_str: str) -> WordDecoder | None:
    """A decoder for one 32-byte word of a static elementary type, or ``None`` when the type
    needs eth_abi (arrays, tuples, dynamic and fixed-point types)."""
    if type_str == "address":
        def address(word: bytes) -> str:
            if word[:12] != _ZERO_12:
                raise DecodeError("address with non-zero padding")
            return "0x" + word[12:].hex()
        return address
    if type_str == "bool":
        def boolean(word: bytes) -> bool:
            value = int.from_bytes(word, "big")
            if value > 1:
                raise DecodeError("bool that is neither 0 nor 1")
            return value == 1
        return boolean
    if match := _ELEMENTARY_INT.match(type_str):
        bits = int(match.group(2))
        if match.group(1):
            def unsigned(word: bytes) -> int:
                value = int.from_bytes(word, "big")
                if value >> bits:
                    raise DecodeError(f"value out of range for uint{bits}")
                return value
            return unsigned
        low, high = -(1 << (bits - 1)), 1 << (bits - 1)

        def signed(word: bytes) -> int:
            value = int.from_bytes(word, "big", signed=True)
            if not low <= value < high:
                raise DecodeError(f"value out of range for int{bits}")
            return value
        return signed
    if match := _FIXED_BYTES.match(type_str):
        size = int(match.group(1))
        padding = bytes(32 - size)

        def fixed_bytes(word: bytes) -> bytes:
            if word[size:] != padding:
                raise DecodeError(f"bytes{size} with non-zero padding")
            return word[:size]
        return fixed_bytes
    return None


def _lower_addresses(abi_type: ABIType, value: Any) -> Any:
    """eth_abi returns checksummed addresses; the decoded form uses lowercase everywhere."""
    from eth_abi.grammar import BasicType, TupleType

    if abi_type.is_array:
        item_type = abi_type.item_type
        return tuple(_lower_addresses(item_type, item) for item in value)
    if isinstance(abi_type, TupleType):
        return tuple(_lower_addresses(member, item)
                     for member, item in zip(abi_type.components, value, strict=True))
    if isinstance(abi_type, BasicType) and abi_type.base == "address":
        return value.lower()
    return value


def _address_normaliser(type_str: str) -> Callable[[Any], Any]:
    if "address" not in type_str:
        return lambda value: value
    from eth_abi.grammar import parse

    abi_type = parse(type_str)
    return lambda value: _lower_addresses(abi_type, value)


def _topic_word(topic: str) -> bytes:
    raw = _hex_to_bytes(topic)
    if len(raw) != 32:
        raise DecodeError("topic is not 32 bytes")
    return raw


def _fast_decoder(signature: EventSignature) -> LogDecoder | None:
    """Word-slicing decoder when every parameter is a static elementary type."""
    plan: list[tuple[str, bool, WordDecoder]] = []
    for position, param in enumerate(signature.inputs):
        word_decoder = _word_decoder(param.type)
        if word_decoder is None:
            return None
        plan.append((arg_name(param, position), param.indexed, word_decoder))
    indexed_count = len(signature.indexed)
    data_words = len(plan) - indexed_count

    def decode(topic1: str | None, topic2: str | None, topic3: str | None,
               data: str) -> dict[str, Any]:
        topics = [t for t in (topic1, topic2, topic3) if t is not None]
        if len(topics) != indexed_count:
            raise DecodeError(f"{len(topics)} indexed topics, signature has {indexed_count}")
        body = _hex_to_bytes(data)
        if len(body) < 32 * data_words:
            raise DecodeError(f"data is {len(body)} bytes, signature needs {32 * data_words}")
        result: dict[str, Any] = {}
        topic_index = word_index = 0
        for name, indexed, word_decoder in plan:
            if indexed:
                result[name] = word_decoder(_topic_word(topics[topic_index]))
                topic_index += 1
            else:
                result[name] = word_decoder(body[32 * word_index:32 * word_index + 32])
                word_index += 1
        return result

    return decode


def _fast_field_reader(signature: EventSignature, name: str) -> FieldReader | None:
    """One parameter of a fast-path signature, with the decoder's checks for that parameter
    (topic count; its topic or data word, the data's hex and length up to that word)."""
    if any(_word_decoder(param.type) is None for param in signature.inputs):
        return None
    indexed_count = len(signature.indexed)
    topic_index = word_index = 0
    for position, param in enumerate(signature.inputs):
        if arg_name(param, position) == name:
            break
        topic_index += param.indexed
        word_index += not param.indexed
    else:
        return None
    word_decoder = _word_decoder(param.type)
    assert word_decoder is not None  # a fast-path signature has only word-decodable types
    decode_word = word_decoder

    present = (True,) * indexed_count + (False,) * (3 - indexed_count)

    def topic_counted(topic1: str | None, topic2: str | None, topic3: str | None
                      ) -> Sequence[str | None]:
        """The present topics, as the decoder counts them (the stored, gap-free form first)."""
        if (topic1 is not None, topic2 is not None, topic3 is not None) == present:
            return (topic1, topic2, topic3)
        topics = [t for t in (topic1, topic2, topic3) if t is not None]
        if len(topics) != indexed_count:
            raise DecodeError(f"{len(topics)} indexed topics, signature has {indexed_count}")
        return topics

    if param.indexed:
        def read_topic(topic1: str | None, topic2: str | None, topic3: str | None,
                       data: str) -> Any:
            topic = topic_counted(topic1, topic2, topic3)[topic_index]
            assert topic is not None  # topic_index < indexed_count: present
            return decode_word(_topic_word(topic))
        return read_topic
    low, high = 32 * word_index, 32 * word_index + 32

    def read_word(topic1: str | None, topic2: str | None, topic3: str | None, data: str) -> Any:
        topic_counted(topic1, topic2, topic3)
        body = _hex_to_bytes(data)
        if len(body) < high:
            raise DecodeError(f"data is {len(body)} bytes, {name!r} needs {high}")
        return decode_word(body[low:high])
    return read_word


@lru_cache(maxsize=4096)
def field_reader(signature: EventSignature, name: str) -> FieldReader | None:
    """A reader of the top-level parameter ``name`` alone, or ``None`` when the signature is not
    one of the word-sliced ones (then decode the whole log).

    Contract, relied on by the processor's index: when the reader raises ``DecodeError`` the
    whole log's decode raises too, and when both succeed the reader's value is the decoded
    ``args[name]``. The reader may succeed on a log the full decode refuses (a malformed other
    word), so a log judged by one field must still be decoded before it counts as a match."""
    return _fast_field_reader(signature, name)


def _general_decoder(signature: EventSignature) -> LogDecoder:
    """eth_abi for everything the fast path does not cover."""
    from eth_abi import decode as abi_decode
    from eth_abi.exceptions import DecodingError

    inputs = signature.inputs
    indexed = [(position, param, param.hashed_in_topic, _address_normaliser(param.type))
               for position, param in enumerate(inputs) if param.indexed]
    body_params = [(position, param) for position, param in enumerate(inputs) if not param.indexed]
    body_types = [param.type for _, param in body_params]
    body_normalisers = [_address_normaliser(type_str) for type_str in body_types]
    names = [arg_name(param, position) for position, param in enumerate(inputs)]

    def decode(topic1: str | None, topic2: str | None, topic3: str | None,
               data: str) -> dict[str, Any]:
        topics = [t for t in (topic1, topic2, topic3) if t is not None]
        if len(topics) != len(indexed):
            raise DecodeError(f"{len(topics)} indexed topics, signature has {len(indexed)}")
        values: dict[int, Any] = {}
        for (position, param, hashed, normalise), topic in zip(indexed, topics, strict=True):
            raw = _topic_word(topic)
            if hashed:
                values[position] = raw
                continue
            try:
                values[position] = normalise(abi_decode([param.type], raw, strict=True)[0])
            except (DecodingError, OverflowError, ValueError) as error:
                raise DecodeError(f"topic for {param.type}: {error}") from None
        if body_params:
            try:
                decoded = abi_decode(body_types, _hex_to_bytes(data), strict=False)
            except (DecodingError, OverflowError, ValueError) as error:
                raise DecodeError(f"data: {error}") from None
            for (position, _), normalise_body, value in zip(body_params, body_normalisers,
                                                            decoded, strict=True):
                values[position] = normalise_body(value)
        return {names[position]: values[position] for position in range(len(inputs))}

    return decode


@lru_cache(maxsize=4096)
def log_decoder(signature: EventSignature) -> LogDecoder:
    """The decoder for ``signature``, built once: call it with ``(topic1, topic2, topic3, data)``.
    Hot paths keep the returned callable instead of calling :func:`decode_log` per log."""
    return _fast_decoder(signature) or _general_decoder(signature)


def decode_log(signature: EventSignature, topics: Sequence[str | None], data: str) -> dict[str, Any]:
    """Return ``{name: python value}`` for every parameter (unnamed ones as ``arg<i>``).

    ``topics`` is ``[topic0, topic1, topic2, topic3]`` (shorter lists and ``None`` entries mean
    absent topics). Integers are ints, addresses lowercase ``0x`` strings, bytes are ``bytes``,
    tuples are tuples and arrays lists or tuples; indexed dynamic values are their 32-byte topic
    hash (``bytes``). Raises ``DecodeError`` when the log does not fit the signature.
    """
    padded = [*topics[1:4], None, None, None][:3]
    return log_decoder(signature)(padded[0], padded[1], padded[2], data)
