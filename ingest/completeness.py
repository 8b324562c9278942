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
  answering ``[]``) and merges the answer with :func:`confirm_blocks`.

The first block that fails ends the prefix; ``problem`` says why (an exception of the kind the
fetcher counts and retries). Nothing after it is returned, so nothing unproven is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.errors import RpcBadResponse, RpcUnavailable
from ingest.bloom import admits, admits_any, blooms_by_block, log_bits
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
                addresses: Sequence[str] = ()) -> RangeCheck:
    """The longest provable prefix of ``headers`` (asked for ``first``, ``first + 1``, …) and the
    logs that belong to it. Raises ``RpcBadResponse`` for logs outside the asked range."""
    last_asked = first + len(headers) - 1
    by_block: dict[int, list[Log]] = {}
    for entry in logs:
        if not first <= entry.block_number <= last_asked:
            raise RpcBadResponse(f"eth_getLogs returned a log of block {entry.block_number} "
                                 f"outside the range {first}..{last_asked}")
        by_block.setdefault(entry.block_number, []).append(entry)
    blooms = blooms_by_block(logs) if not addresses else {}
    proven: list[Header] = []
    kept: list[Log] = []
    to_confirm: list[Header] = []
    problem: Exception | None = None
    for offset, header in enumerate(headers):
        number = first + offset
        problem = _block_problem(number, header, proven[-1] if proven else None,
                                 by_block.get(number, ()), blooms, addresses)
        if problem is not None:
            break
        assert header is not None
        block_logs = by_block.get(number, [])
        if addresses and not block_logs and admits_any(header.logs_bloom, addresses):
            to_confirm.append(header)
        proven.append(header)
        kept.extend(block_logs)
    return RangeCheck(proven, kept, to_confirm, problem)


def _block_problem(number: int, header: Header | None, parent: Header | None,
                   block_logs: Sequence[Log], blooms: dict[int, int],
                   addresses: Sequence[str]) -> Exception | None:
    if header is None:
        return NotSeenYet(f"block {number} is not available on the node yet")
    if parent is not None and header.parent_hash != parent.hash:
        return HashMismatch(f"block {number}'s parentHash does not match block {parent.number}: "
                            "the answers come from different chains (the node moved under us)")
    for entry in block_logs:
        if entry.block_hash != header.hash:
            return HashMismatch(f"log {number}/{entry.log_index} has blockHash {entry.block_hash}, "
                                f"header says {header.hash}")
    if not addresses:
        if blooms.get(number, 0) != header.logs_bloom:
            return IncompleteLogs(f"the {len(block_logs)} logs returned for block {number} do "
                                  "not make its logsBloom: logs are missing (a node behind "
                                  "clamped eth_getLogs) or do not belong to it")
        return None
    for entry in block_logs:
        if not admits(header.logs_bloom, log_bits(entry)):
            return IncompleteLogs(f"log {number}/{entry.log_index} is not in block {number}'s "
                                  "logsBloom: it does not belong to that block")
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
