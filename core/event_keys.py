"""The ``events`` uniqueness key as SQL text, in a module of its own so that ingest's hot path
does not import SQLAlchemy for one string (a fifth of its start-up). ``core.schema`` re-exports
it beside the index it matches; ``tests/core/test_schema.py`` runs it against the migrated
database."""

# ON CONFLICT target matching ``uq_events_log`` (the predicate is part of the inference).
EVENTS_CONFLICT_TARGET = "(chain_id, block_hash, log_index, block_time) WHERE NOT invalidated"
