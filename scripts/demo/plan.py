"""What the demo does, in one place: the run orchestrator seeds the trigger from it, the chain
script sends the transfers, and the receiver knows which webhooks to expect."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import psycopg
from eth_utils import to_checksum_address
from psycopg.types.json import Jsonb
from web3 import Web3

DEVNET_CHAIN_ID = 31337
# anvil's first default account (mnemonic "test test … junk"), which deploys the token.
DEPLOYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
RECIPIENTS = (
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
)
TOKEN_NAME, TOKEN_SYMBOL, DECIMALS = "Demo Token", "DEMO", 18
TRIGGER_NAME = "demo-large-transfers"
THRESHOLD_TOKENS = 1_000
MINT_TOKENS = 10_000
# Whole tokens sent to RECIPIENTS in turn; those >= THRESHOLD_TOKENS fire the trigger.
TRANSFERS_TOKENS = (1_500, 250, 4_200)
SIGNATURE = "Transfer(address indexed from, address indexed to, uint256 value)"


def token_units(tokens: int) -> int:
    return tokens * 10**DECIMALS


def token_address() -> str:
    """Where the deployer's first transaction (nonce 0) on a fresh devnet creates the token:
    known before the chain starts, so the trigger is in place before any event exists.
    CREATE address = keccak(rlp([sender, nonce]))[12:]; rlp of (20-byte address, 0) is
    0xd6 0x94 <address> 0x80."""
    return to_checksum_address(Web3.keccak(bytes.fromhex("d694") + bytes.fromhex(DEPLOYER[2:])
                                           + b"\x80")[12:])


def expected_values() -> list[int]:
    """Transfer values (base units) that must reach the receiver: the mint and the large transfers."""
    sent = (MINT_TOKENS, *TRANSFERS_TOKENS)
    return sorted(token_units(t) for t in sent if t >= THRESHOLD_TOKENS)


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class DemoTrigger:
    receiver_url: str
    secret: str


def seed_trigger(database_url: str, demo: DemoTrigger) -> int:
    """Create (or replace) the demo trigger and its webhook action; return the trigger id."""
    conditions = {"all": [{"field": "value", "op": "gte",
                           "value": str(token_units(THRESHOLD_TOKENS))}]}
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        conn.execute("DELETE FROM triggers WHERE name = %s", (TRIGGER_NAME,))
        row = conn.execute(
            """INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
            (TRIGGER_NAME, DEVNET_CHAIN_ID, token_address(), SIGNATURE, Jsonb(conditions)),
        ).fetchone()
        assert row is not None
        conn.execute("INSERT INTO actions (trigger_id, type, config) VALUES (%s, 'webhook', %s)",
                     (row[0], Jsonb({"url": demo.receiver_url, "secret": demo.secret})))
        conn.commit()
    return int(row[0])
