"""NOTIFY channel names (payloads are short strings, far below the 8000-byte limit). The
migrations' trigger functions send them; ``core.schema`` re-exports them. A module of its own so
that a listener does not import SQLAlchemy for a few strings (it is most of a service's start)."""

CHANNEL_EVENTS = "blockhook_events"  # payload: chain id
CHANNEL_TRIGGERS = "blockhook_triggers"  # payload: table name
CHANNEL_REORGS = "blockhook_reorgs"  # payload: chain id
CHANNEL_CHECKPOINTS = "blockhook_checkpoints"  # payload: chain id
CHANNEL_SECRETS = "blockhook_secrets"  # payload: action id (a plaintext secret awaits sealing)
