"""The webhook action's ``config`` (SPEC §4), validated at the edge with pydantic.

An invalid config is a permanent error of that delivery (``failed`` with the reason in
``last_error``); reasons name the field and never echo a value (header values may be
credentials). The signing secret is not part of ``config``: the database moves it to the
``actions.secret`` column as it is written (see :func:`workers.signing.action_secrets`).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import EndpointRejected


class WebhookAction(BaseModel):
    """``{"url": ..., "headers": {...}, "timeout": seconds}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, le=300)


@lru_cache(maxsize=1024)
def parse_action(config_json: str) -> WebhookAction:
    """Validate an action's config (its JSON text); raise ``EndpointRejected`` naming the bad
    fields. Cached by text: a batch usually shares a few actions, and an edited action has a
    new text."""
    try:
        return WebhookAction.model_validate_json(config_json)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'config'}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in error.errors(include_input=False))
        raise EndpointRejected(f"invalid webhook action config: {problems}") from None
