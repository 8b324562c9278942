"""The webhook action's ``config`` (SPEC §4), validated at the edge with pydantic.

An invalid config is a permanent error of that delivery (``failed`` with the reason in
``last_error``); reasons name the field and never echo a value (the secret must not leak).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import EndpointRejected
from workers.signing import decode_secret


class WebhookAction(BaseModel):
    """``{"url": ..., "secret": "whsec_...", "headers": {...}, "timeout": seconds}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str = Field(min_length=1)
    secret: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, le=300)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None:
            decode_secret(value)  # ValueError says what is wrong without the value
        return value

    @property
    def signing_key(self) -> bytes | None:
        return decode_secret(self.secret) if self.secret else None


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
