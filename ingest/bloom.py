"""The header's ``logsBloom``: 2048 bits, to which every log adds its address and each topic.

An item (20-byte address or 32-byte topic) sets three bits: for its keccak-256 hash ``h``, bit
``(h[i] << 8 | h[i+1]) & 2047`` for ``i`` in 0, 2, 4 — counted from the right end of the 256-byte
big-endian bloom, so a bloom read with ``int(hex, 16)`` has exactly those bit numbers set.

Blooms are plain ``int`` here (OR and equality of 2048-bit ints are a few dozen ns). Keccak is
the cost: :func:`item_bits` caches the three-bit mask of every address and topic it has seen
(a chain repeats the same contracts, event signatures and padded addresses over and over), in a
bounded cache that is emptied when full.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from functools import reduce
from operator import or_
from typing import TYPE_CHECKING

from core.keccak import keccak_256  # safe-pysha3's C: ~0.7 µs per hash

if TYPE_CHECKING:
    from ingest.rpc import Log

BLOOM_BYTES = 256
EMPTY = 0
CACHE_LIMIT = 20_000  # ~10 MB at most: a 2048-bit int and a 66-char key are ~0.4 KB an entry

_bits_cache: dict[str, int] = {}


def parse_bloom(value: object) -> int:
    """A ``logsBloom`` field as an int; ``ValueError``/``TypeError`` unless 256 bytes of hex."""
    if type(value) is not str or len(value) != 2 + 2 * BLOOM_BYTES or value[:2] != "0x":
        raise TypeError(f"logsBloom is not 256 bytes of hex: {str(value)[:24]!r}…")
    return int(value, 16)


_BIT = tuple(1 << n for n in range(2048))


def _compute(item: str) -> int:
    digest = keccak_256(bytes.fromhex(item[2:])).digest()
    return (_BIT[((digest[0] << 8) | digest[1]) & 2047] | _BIT[((digest[2] << 8) | digest[3]) & 2047]
            | _BIT[((digest[4] << 8) | digest[5]) & 2047])


def bloom_of(items: Collection[str]) -> int:
    """The bloom of distinct ``items`` (addresses, topics). Items not cached yet are hashed in
    one tight loop (the cost of the whole proof: ~1 µs a new item, most of it keccak)."""
    cache = _bits_cache
    missing = [item for item in items if item not in cache]
    if missing:
        if len(cache) + len(missing) > CACHE_LIMIT:
            cache.clear()
            missing = list(items)
        fromhex, bit = bytes.fromhex, _BIT
        digests = [keccak_256(fromhex(item[2:])).digest() for item in missing]
        cache.update(zip(missing, [
            bit[((d[0] << 8) | d[1]) & 2047] | bit[((d[2] << 8) | d[3]) & 2047]
            | bit[((d[4] << 8) | d[5]) & 2047] for d in digests], strict=True))
    return reduce(or_, map(cache.__getitem__, items), EMPTY)


def item_bits(item: str) -> int:
    """The three bloom bits of one lowercase ``0x`` address or topic (cached)."""
    bits = _bits_cache.get(item)
    if bits is None:
        if len(_bits_cache) >= CACHE_LIMIT:
            _bits_cache.clear()
        bits = _bits_cache[item] = _compute(item)
    return bits


def log_bits(entry: Log) -> int:
    """The bloom bits one log contributes: its address and each of its topics."""
    bits = item_bits(entry.address)
    for topic in (entry.topic0, entry.topic1, entry.topic2, entry.topic3):
        if topic is None:
            break
        bits |= item_bits(topic)
    return bits


def logs_bloom(logs: Iterable[Log]) -> int:
    """The bloom ``logs`` make together (a receipt's, or a block's when they are all of it)."""
    bloom = EMPTY
    for entry in logs:
        bloom |= log_bits(entry)
    return bloom


def admits(bloom: int, bits: int) -> bool:
    """Whether ``bloom`` has every one of ``bits`` set (the item may be in the block; blooms
    have false positives, never false negatives)."""
    return bloom & bits == bits


def admits_any(bloom: int, items: Sequence[str]) -> bool:
    """Whether ``bloom`` may contain any of ``items`` (addresses of an address filter)."""
    return any(admits(bloom, item_bits(item)) for item in items)
