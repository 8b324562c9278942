"""The error hierarchy: transient errors are retried with backoff, permanent ones are recorded
where the user looks (``triggers.error``, ``deliveries.last_error``) and logged once."""


class BlockhookError(Exception):
    """Base of every error blockhook raises on purpose."""


class TransientError(BlockhookError):
    """Worth retrying: the outside world may recover (node, endpoint, database, Redis)."""


class PermanentError(BlockhookError):
    """Retrying will not help; record the reason and move on."""


class ConfigError(PermanentError):
    """Bad configuration: the service exits non-zero with this one-line message."""


class RpcUnavailable(TransientError):
    """The JSON-RPC node could not answer (connection, 5xx, timeout, rate limit)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RpcRangeTooLarge(TransientError):
    """The provider refused an ``eth_getLogs`` range; ``suggested`` is its hint, if any."""

    def __init__(self, message: str, *, suggested: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.suggested = suggested


class RpcBadResponse(TransientError):
    """The node answered with something that is not what JSON-RPC promises (garbage, wrong
    types, a log that contradicts its block header). Refetched, never written."""


class ChainMismatch(ConfigError):
    """``CHAIN_ID`` is set and the node reports another chain."""


class ReorgTooDeep(PermanentError):
    """A reorg reaches below the stored window: the indexer stops and names the replay command."""


class InvalidTrigger(PermanentError):
    """A trigger row that cannot be evaluated; its reason goes to ``triggers.error``."""


class EndpointUnavailable(TransientError):
    """A webhook endpoint failed in a retryable way (timeout, connection, 408, 429, 5xx)."""

    def __init__(self, message: str, *, status_code: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class EndpointRejected(PermanentError):
    """A webhook endpoint refused the delivery for good (4xx other than 408/429), or the target
    is forbidden (SSRF guard, bad scheme)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class SecretUnavailable(TransientError):
    """A stored webhook secret is sealed under a key this process does not hold: a deployment
    matter (a worker without the key, or mid key rotation). The delivery is retried."""


class SecretCorrupt(PermanentError):
    """A stored webhook secret cannot be opened with its own key: tampered with, truncated, or
    copied from another action. The delivery fails with this reason."""
