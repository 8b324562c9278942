"""Prove a fetched range complete before it is stored, whichever node answered which request.

Headers and logs may come from different nodes of a load-balanced provider, some of them a few
blocks behind: ``null`` for blocks they do not have, ``eth_getLogs`` silently clamped to their
head. :func:`check_range` walks the range block by block and keeps the longest prefix it can
prove:

- every header is present and its ``parentHash`` is the previous header's hash;
- every log carries the ``blockHash`` of the header fetched for its block;
- without an address filter, the bloom of the block's returned logs **equals** the header's
  ``logsBloom`` (a zero bloom means no logs): a missing log leaves a bit unset, a log from
  elsewhere sets one too many;
- with an address filter, every returned log is in its header's bloom, and a block whose bloom
  admits a filtered address but returned no log is listed in ``to_confirm``: the caller asks for
  it with ``eth_getLogs`` by ``blockHash`` (a node that has not seen the hash errors instead of
  answering ``[]``) and merges the answer with :func:`confirm_blocks`;
- with a ``topic0`` filter too (or alone: one event of any contract), the same, for the blocks
  whose bloom admits ``topic0`` and (with addresses) one of the addresses: a node that dropped
  such a block's logs is caught by the confirmation, a block whose bloom lacks either cannot hold
  a matching log.

The first block that fails ends the prefix; ``problem`` says why (an exception of the kind the
fetcher counts and retries). Nothing after it is returned, so nothing unproven is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

from core.errors import RpcBadResponse, RpcUnavailable
from ingest.bloom import admits, admits_any, bloom_of, item_bits, log_bits
from ingest.rpc import Header, Log


class HashMismatch(RpcBadResponse):
    """A log's ``blockHash`` (or a header's ``parentHash``) contradicts the headers fetched."""


class IncompleteLogs(RpcBadResponse):
    """The logs returned for a block do not match its header's ``logsBloom``: some are missing
    (a clamped ``eth_getLogs``) or do not belong to it. Refetched, never stored."""


class NotSeenYet(RpcUnavailable):
    """The node has no such block yet (``null`` header, "unknown block"): it is behind."""


@dataclass(frozen=True, slots=True)
class RangeCheck:
    """The proven prefix of a fetched range (``headers`` may be empty)."""

    headers: list[Header]
    logs: list[Log]
    to_confirm: list[Header] = field(default_factory=list)
    problem: Exception | None = None


def check_range(first: int, headers: Sequence[Header | None], logs: Sequence[Log],
                addresses: Sequence[str] = (), topic0: str | None = None) -> RangeCheck:
    """The longest provable prefix of ``headers`` (asked for ``first``, ``first + 1``, …) and the
    logs that belong to it, answered for the filter ``addresses`` (all when empty) and ``topic0``
    (any when ``None``). Raises ``RpcBadResponse`` for logs outside the asked range."""
    blooms, hashes, mixed = _scan(logs)
    last_asked = first + len(headers) - 1
    if blooms and not (first <= min(blooms) and max(blooms) <= last_asked):
        outside = next(n for n in blooms if not first <= n <= last_asked)
        raise RpcBadResponse(f"eth_getLogs returned a log of block {outside} outside the range "
                             f"{first}..{last_asked}")
    proven: list[Header] = []
    to_confirm: list[Header] = []
    problem: Exception | None = None
    topic_bits = None if topic0 is None else item_bits(topic0)
    filtered = bool(addresses) or topic_bits is not None
    for offset, header in enumerate(headers):
        number = first + offset
        problem = _block_problem(number, header, proven[-1] if proven else None, blooms.get(number),
                                 hashes.get(number), number in mixed, filtered)
        if problem is not None:
            break
        assert header is not None
        if topic_bits is None:
            if addresses and number not in blooms and admits_any(header.logs_bloom, addresses):
                to_confirm.append(header)
        elif number not in blooms and admits(header.logs_bloom, topic_bits) and (
                not addresses or admits_any(header.logs_bloom, addresses)):
            to_confirm.append(header)
        proven.append(header)
    if len(proven) == len(headers):
        kept = list(logs)
    else:
        last = proven[-1].number if proven else first - 1
        kept = [entry for entry in logs if entry.block_number <= last]
    return RangeCheck(proven, kept, to_confirm, problem)


def _scan(logs: Sequence[Log]) -> tuple[dict[int, int], dict[int, str], set[int]]:
    """One pass over the logs (the hot loop of the proof): the bloom each block's logs make,
    the ``blockHash`` they carry, and the blocks whose logs carry different hashes.

    The logs are turned into columns (``zip``) and walked run by run of equal block numbers
    (a node answers in block order, so a run is a whole block; any other order is still
    correct, only with shorter runs): each run's items and hashes are collected with set
    operations on column slices, C loops instead of five ``set.add`` calls per log. Items are
    collected per block as sets (a dense block repeats its contracts and event signatures), so
    each distinct item is looked up — or hashed — once."""
    items: dict[int, set[str | None]] = {}
    hashes: dict[int, str] = {}
    mixed: set[int] = set()
    if not logs:
        return {}, hashes, mixed
    numbers, block_hashes, _, _, _, addresses, t0, t1, t2, t3, _ = zip(*logs, strict=True)
    start = 0
    for number, run in groupby(numbers):
        end = start + len(list(run))
        run_hashes = set(block_hashes[start:end])
        block_items = items.get(number)
        if block_items is None:
            block_items = items[number] = set(addresses[start:end])
            hashes[number] = block_hashes[start]
        else:
            block_items.update(addresses[start:end])
        if len(run_hashes) > 1 or hashes[number] not in run_hashes:
            mixed.add(number)
        block_items.update(t0[start:end], t1[start:end], t2[start:end], t3[start:end])
        start = end
    blooms = {}
    for number, block_items in items.items():
        block_items.discard(None)
        blooms[number] = bloom_of(block_items)  # type: ignore[arg-type]
    return blooms, hashes, mixed


def _block_problem(number: int, header: Header | None, parent: Header | None, bloom: int | None,
                   block_hash: str | None, mixed: bool, filtered: bool) -> Exception | None:
    if header is None:
        return NotSeenYet(f"block {number} is not available on the node yet")
    if parent is not None and header.parent_hash != parent.hash:
        return HashMismatch(f"block {number}'s parentHash does not match block {parent.number}: "
                            "the answers come from different chains (the node moved under us)")
    if mixed or (block_hash is not None and block_hash != header.hash):
        return HashMismatch(f"logs of block {number} carry blockHash {block_hash}, its header "
                            f"says {header.hash}")
    if not filtered:
        if (bloom or 0) != header.logs_bloom:
            return IncompleteLogs(f"the logs returned for block {number} do not make its "
                                  "logsBloom: logs are missing (a node behind clamped "
                                  "eth_getLogs) or do not belong to it")
        return None
    # Filtered: every returned log must be in the bloom (the union of their bits is a subset).
    if bloom is not None and bloom & ~header.logs_bloom:
        return IncompleteLogs(f"a log returned for block {number} is not in its logsBloom: it "
                              "does not belong to that block")
    return None


def confirm_blocks(check: RangeCheck, answers: Sequence[list[Log] | Exception]) -> RangeCheck:
    """Merge the by-``blockHash`` answers for ``check.to_confirm`` (same order) into the range:
    logs found are added (the range answer had missed them); a block the node did not know, or
    whose answer contradicts its header, ends the prefix just before it."""
    answer_for = {header.number: answer for header, answer in
                  zip(check.to_confirm, answers, strict=True)}
    proven: list[Header] = []
    added: list[Log] = []
    problem = check.problem
    for header in check.headers:
        answer = answer_for.get(header.number)
        if isinstance(answer, Exception):
            problem = answer if isinstance(answer, RpcUnavailable | RpcBadResponse) else \
                RpcUnavailable(str(answer))
            break
        if answer:
            wrong = [e for e in answer if e.block_hash != header.hash or e.block_number != header.number
                     or not admits(header.logs_bloom, log_bits(e))]
            if wrong:
                problem = HashMismatch(f"eth_getLogs by blockHash {header.hash} returned log "
                                       f"{wrong[0].block_number}/{wrong[0].log_index} of another block")
                break
            added.extend(answer)
        proven.append(header)
    last = proven[-1].number if proven else -1
    logs = [entry for entry in check.logs if entry.block_number <= last] + added
    return RangeCheck(proven, logs, [], problem)


def found_missing_logs(answers: Sequence[list[Log] | Exception]) -> bool:
    """Whether confirmation found logs the range answer had left out (an incomplete answer)."""
    return any(isinstance(answer, list) and answer for answer in answers)
