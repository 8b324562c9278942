"""Where an interrupted ``scripts/replay.py`` resumes: one small JSON file per command.

The replay itself is idempotent (re-running a range changes nothing), so this file only saves
work: the same command after Ctrl-C skips what was already replayed and refired. It is keyed by
the arguments that define the work (chain, range, ``--refire``); ``--restart`` ignores it; a
completed run deletes it. Location: ``$XDG_STATE_HOME/blockhook`` (default
``~/.local/state/blockhook``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ValidationError


class ReplayState(BaseModel):
    chain_id: int
    from_block: int
    to_block: int  # resolved (the head at the first run when --to-block was omitted)
    refire: bool
    ingested_through: int | None = None  # last block re-ingested
    refired_through: int | None = None  # last block re-evaluated by --refire


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "blockhook"


def state_path(chain_id: int, from_block: int, to_block: int | None, refire: bool) -> Path:
    to = "head" if to_block is None else str(to_block)
    return state_dir() / f"replay-{chain_id}-{from_block}-{to}{'-refire' if refire else ''}.json"


def load_state(path: Path) -> ReplayState | None:
    """The saved state, or ``None`` when absent or unreadable (then the run starts over, which
    is always correct)."""
    try:
        return ReplayState.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None


def save_state(path: Path, state: ReplayState) -> None:
    """Write atomically (a rename), so a second Ctrl-C cannot leave half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(state.model_dump_json())
    scratch.replace(path)


def clear_state(path: Path) -> None:
    """Forget the position (the run completed). Nothing to forget where nothing could be saved."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
