"""``scripts/backtest.py`` on a factory trigger, with the real Uniswap V2 factory and pairs on
anvil: every swap over the threshold on a pair the factory created counts — a pair created and
swapped on in one block included, and a pair created before ``--from-block`` — and a look-alike
pair of another factory never does. The same answer from the node (nothing stored), from stored
history (factory registered or not), under ``INGEST_ADDRESSES`` and past the address-list limit;
nothing is written, not even a ``factories`` row."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import scripts.backtest as backtest_command
from core.db import connect
from core.factories import factory_of, register_factories
from tests.ingest.conftest import ingest_settings, running_indexer, wait_for_checkpoint
from tests.ops.test_backtest import SNAPSHOT_TABLES, _backtest, _report, _snapshot
from tests.support.anvil import Anvil
from tests.support.uniswap import ETH, PAIR_CREATED, SWAP, UniswapV2

CHAIN = 31337
LARGE = {"any": [{"field": "amount0In", "op": "gte", "value": str(100 * ETH)},
                 {"field": "amount1In", "op": "gte", "value": str(100 * ETH)}]}
TABLES = (*SNAPSHOT_TABLES, "factories", "factory_children")


def _add_factory_trigger(db_url: str, factory: str, *, name: str = "large-swaps") -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """WITH t AS (INSERT INTO triggers (name, chain_id, event_signature, conditions,
                                                factory_address, factory_event_signature,
                                                factory_parameter, enabled)
                          VALUES (%s, %s, %s, %s, %s, %s, 'pair', false) RETURNING id)
               INSERT INTO actions (trigger_id, type, config)
               SELECT id, 'webhook', %s FROM t RETURNING trigger_id""",
            (name, CHAIN, SWAP, Jsonb(LARGE), factory, PAIR_CREATED,
             Jsonb({"url": "https://example.com/hook"}))).fetchone()
    assert row is not None
    return int(row[0])


class Family:
    """One Uniswap V2 factory's history, and a look-alike factory's swaps."""

    def __init__(self, anvil: Anvil) -> None:
        self.uni = UniswapV2(anvil.url)
        self.other = UniswapV2(anvil.url)  # same bytecode, another factory: a look-alike
        token0, token1 = self.uni.tokens()
        self.early = self.uni.create_pair(token0, token1)
        self.uni.add_liquidity(token0, token1, 1_000 * ETH, 1_000 * ETH)
        anvil.mine(3)
        self.from_block = self.uni.head() + 1  # the early pair was created before this block
        self.uni.swap(token0, token1, 150 * ETH)  # large
        self.uni.swap(token0, token1, 1 * ETH)  # small: a candidate, no match
        self.same_block = self.uni.create_and_swap(200 * ETH)  # created and swapped in one block
        self.lookalike = self.other.create_and_swap(500 * ETH)
        self.other.create_and_swap(600 * ETH)
        anvil.mine(1)
        self.to_block = self.uni.head()

    def close(self) -> None:
        self.uni.close()
        self.other.close()

    def check(self, report: dict[str, Any]) -> None:
        assert report["trigger"]["factory"]["address"] == self.uni.factory.address.lower()
        assert report["matches"] == 2 and report["candidates"] == 3, report
        pairs = [event["address"] for event in report["first_matches"]]
        assert pairs == [self.early, self.same_block]
        assert self.lookalike not in pairs
        assert [int(event["args"]["amount0In"]) for event in report["first_matches"]] == \
            [150 * ETH, 200 * ETH]
        assert report["children"]["count"] == 2
        assert report["webhook_body"]["event"]["address"] == self.early


@pytest.fixture
def family(anvil: Anvil) -> Any:
    built = Family(anvil)
    try:
        yield built
    finally:
        built.close()


def _args(family: Family) -> tuple[str, ...]:
    return ("--trigger", "large-swaps", "--from-block", str(family.from_block),
            "--to-block", str(family.to_block))


async def test_a_factory_trigger_from_the_node_counts_its_children_only(
        plain_db_url: str, anvil: Anvil, family: Family) -> None:
    """Nothing stored: the factory's creation logs, then the pairs' swaps, from the node."""
    db_url = plain_db_url
    _add_factory_trigger(db_url, family.uni.factory.address)
    before = _snapshot(db_url, TABLES)
    report = _report(db_url, anvil.url, *_args(family), MAX_BLOCK_RANGE="3")
    family.check(report)
    assert [s["source"] for s in report["sources"]] == ["node"]
    assert [s["source"] for s in report["children"]["sources"]] == ["node"]
    table = _backtest(db_url, anvil.url, *_args(family))
    assert table.returncode == 0, table.stderr
    assert "children of factory" in table.stdout
    assert _snapshot(db_url, TABLES) == before, "a backtest writes nothing, no factory either"


async def _in_process(family: Family, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The command's JSON report, run here (in a thread: it runs its own event loop) so a test
    can lower its address-list limit."""
    capsys.readouterr()  # what was printed before (the indexer's log lines)
    assert await asyncio.to_thread(backtest_command.main, [*_args(family), "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


async def test_a_factory_trigger_over_stored_history_registered_or_not(
        db_url: str, anvil: Anvil, family: Family, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with running_indexer(ingest_settings(db_url, anvil.url)):
        await wait_for_checkpoint(db_url, anvil)
    _add_factory_trigger(db_url, family.uni.factory.address)
    before = _snapshot(db_url, TABLES)
    # Not registered (a disabled trigger's factory): children from the stored creation logs.
    report = _report(db_url, anvil.url, *_args(family))
    family.check(report)
    assert [s["source"] for s in report["sources"]] == ["stored"]
    assert report["children"]["sources"][-1]["source"] == "stored"
    assert _snapshot(db_url, TABLES) == before

    # Registered (the trigger was enabled once): children from factory_children.
    conn = await connect(db_url)
    try:
        await register_factories(conn, [factory_of(CHAIN, family.uni.factory.address,
                                                   PAIR_CREATED, "pair")])
    finally:
        await conn.close()
    family.check(_report(db_url, anvil.url, *_args(family)))

    # Past the address-list limit: every stored swap by topic0, kept when the emitter is a child.
    for name, value in (("DATABASE_URL", db_url), ("RPC_URL", anvil.url), ("METRICS_PORT", "0"),
                        ("INGEST_ADDRESSES", "")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHAIN_ID", raising=False)
    monkeypatch.setattr(backtest_command, "MAX_FILTER_ADDRESSES", 1)
    family.check(await _in_process(family, capsys))


async def test_a_factory_trigger_under_ingest_addresses_and_past_the_address_limit(
        plain_db_url: str, anvil: Anvil, family: Family, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The pairs are not ingested (INGEST_ADDRESSES lists another contract): their swaps come
    from the node, by address — or, past the address-list limit, by topic0 alone, filtered
    here to the children (the look-alike's swaps are in that answer and must not count)."""
    db_url = plain_db_url
    listed = "0x" + "11" * 20
    async with running_indexer(ingest_settings(db_url, anvil.url, ingest_addresses=listed)):
        await wait_for_checkpoint(db_url, anvil)
    _add_factory_trigger(db_url, family.uni.factory.address)
    report = _report(db_url, anvil.url, *_args(family), INGEST_ADDRESSES=listed)
    assert [s["source"] for s in report["sources"]] == ["node"]
    family.check(report)

    for name, value in (("DATABASE_URL", db_url), ("RPC_URL", anvil.url),
                        ("INGEST_ADDRESSES", listed), ("METRICS_PORT", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHAIN_ID", raising=False)
    monkeypatch.setattr(backtest_command, "MAX_FILTER_ADDRESSES", 1)
    family.check(await _in_process(family, capsys))
