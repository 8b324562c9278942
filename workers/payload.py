"""The webhook body (SPEC §6), built from the stored event and the trigger's signature.

Integers are decimal strings, addresses and bytes lowercase hex, tuples objects keyed by member
name, arrays arrays (``core.abi.to_json_args``). ``type`` is ``event.matched`` or
``event.removed``; replayed deliveries carry ``"replay": true``. The body is a pure function of
the rows, so every retry sends the same bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

import orjson

from core.abi import DecodeError, decode_log, parse_event_signature, to_json_args
from core.errors import InvalidTrigger, PermanentError

EVENT_TYPES = {"matched": "event.matched", "removed": "event.removed"}


class EventColumns(Protocol):
    """The ``events`` row's columns by name (a mapping, or a view of a claimed row)."""

    def __getitem__(self, name: str, /) -> Any: ...


class PayloadError(PermanentError):
    """The event cannot be rendered under the trigger's signature (it will never succeed)."""


@lru_cache(maxsize=1024)  # events of one block share their block_time
def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_payload(*, delivery_id: int, kind: str, replay: bool, trigger_id: int,
                  trigger_name: str, event_signature: str, event: EventColumns) -> bytes:
    """The JSON body of a delivery. ``event`` holds the ``events`` row's columns.
    Raises ``PayloadError`` when the signature no longer parses or the log does not decode."""
    try:
        signature = parse_event_signature(event_signature)
        topics = [event["topic0"], event["topic1"], event["topic2"], event["topic3"]]
        args = to_json_args(signature, decode_log(signature, topics, event["data"]))
    except (InvalidTrigger, DecodeError) as error:
        raise PayloadError(f"cannot decode event {event['id']} as {event_signature!r}: "
                           f"{error}") from None
    body: dict[str, Any] = {
        "type": EVENT_TYPES[kind],
        "delivery_id": delivery_id,
        "trigger": {"id": trigger_id, "name": trigger_name},
        "event": {
            "chain_id": event["chain_id"],
            "block_number": event["block_number"],
            "block_hash": event["block_hash"].lower(),
            "block_time": _iso_utc(event["block_time"]),
            "tx_hash": event["tx_hash"].lower(),
            "tx_index": event["tx_index"],
            "log_index": event["log_index"],
            "address": event["address"].lower(),
            "name": signature.name,
            "signature": signature.canonical,
            "args": args,
        },
    }
    if replay:
        body["replay"] = True
    return orjson.dumps(body)
