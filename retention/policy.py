"""What a retention pass is told: the age limit per kind of data, from ``RetentionSettings``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.settings import RetentionSettings, format_duration

# ingest keeps this many ``blocks`` rows beyond its re-checked window (ingest.poller.BLOCKS_MARGIN;
# a test keeps the two equal). Retention never prunes blocks the indexer itself would keep.
BLOCKS_MARGIN = 32
# Rows per DELETE statement: each statement is its own short transaction (no long locks).
BATCH_ROWS = 5000


@dataclass(frozen=True)
class RetentionPolicy:
    """Age limits (``None`` = keep forever) and the reorg window that is never pruned."""

    events: timedelta | None = timedelta(days=30)
    event_batches: timedelta | None = timedelta(days=1)
    deliveries: timedelta | None = timedelta(days=30)
    reorgs: timedelta | None = timedelta(days=90)
    compress_after: timedelta | None = timedelta(days=7)
    reorg_window: int = 128
    batch_rows: int = BATCH_ROWS

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionPolicy:
        return cls(events=settings.retention_events,
                   event_batches=settings.retention_event_batches,
                   deliveries=settings.retention_deliveries,
                   reorgs=settings.retention_reorgs,
                   compress_after=settings.events_compress_after,
                   reorg_window=settings.reorg_window)

    def cutoffs(self, now: datetime) -> Cutoffs:
        """The moments before which each kind of data is old enough to go."""

        def before(age: timedelta | None) -> datetime | None:
            return None if age is None else now - age

        return Cutoffs(now=now, events=before(self.events),
                       event_batches=before(self.event_batches),
                       deliveries=before(self.deliveries), reorgs=before(self.reorgs),
                       compress=before(self.compress_after))

    def describe(self) -> dict[str, str]:
        """Setting values as an operator writes them (``30d``, ``forever``)."""
        return {"events": format_duration(self.events),
                "event_batches": format_duration(self.event_batches),
                "deliveries": format_duration(self.deliveries),
                "reorgs": format_duration(self.reorgs),
                "blocks": f"last {self.reorg_window + BLOCKS_MARGIN}",
                "events_compress_after": format_duration(self.compress_after)}


@dataclass(frozen=True)
class Cutoffs:
    """One pass's age cutoffs, all from one clock reading (``None`` = keep forever)."""

    now: datetime
    events: datetime | None
    event_batches: datetime | None
    deliveries: datetime | None
    reorgs: datetime | None
    compress: datetime | None
