import pytest

from core.redact import redact_url, redact_urls_in

KEY = "k3yAbCdEf0123456789xyzKEY"


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
    (f"https://eth-mainnet.g.alchemy.com/v2/{KEY}", "https://eth-mainnet.g.alchemy.com/v2/***"),
    (f"https://mainnet.infura.io/v3/{KEY}", "https://mainnet.infura.io/v3/***"),
    (f"https://rpc.ankr.com/eth/{KEY}/", "https://rpc.ankr.com/eth/***/"),
    (f"https://api.example.com/rpc?apikey={KEY}&chain=1",
     "https://api.example.com/rpc?apikey=***&chain=***"),
    (f"postgresql://blockhook:{KEY}@db:5432/blockhook", "postgresql://***@db:5432/blockhook"),
    (f"redis://:{KEY}@cache:6379/0", "redis://***@cache:6379/0"),
    (f"https://user:{KEY}@[::1]:8545/x#{KEY}", "https://***@[::1]:8545/x#***"),
    ("not a url", "***"),
    ("http://[::1", "***"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert KEY not in redact_url(url)


def test_redact_urls_in_text() -> None:
    text = (f"the node at https://eth.example/v2/{KEY} reports chain 5; "
            f"db postgresql://u:{KEY}@h/db unreachable")
    redacted = redact_urls_in(text)
    assert KEY not in redacted
    assert "https://eth.example/v2/*** reports chain 5" in redacted
    assert "postgresql://***@h/db unreachable" in redacted


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_logging_pipeline_redacts_urls_in_messages_fields_and_tracebacks(
        fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Whoever logs (our code through structlog, a library through the standard library),
    a URL anywhere in the line comes out redacted; secret-bearing keys are replaced."""
    import logging

    import structlog

    from core.logging import configure_logging

    url = f"https://user:{KEY}@node.example/v2/{KEY}?apikey={KEY}"
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    configure_logging(level="DEBUG", fmt=fmt, service="test")
    try:
        structlog.get_logger("t").warning(f"node at {url} is down", rpc=url, nested={"u": [url]},
                                          secret=KEY, attempt=2)
        logging.getLogger("somelibrary").info("connecting to %s", url)
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError:
            structlog.get_logger("t").exception("failed")
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    output = capsys.readouterr().err
    assert KEY not in output
    assert output.count("https://***@node.example/v2/***?apikey=***") >= 5
    assert "attempt" in output
