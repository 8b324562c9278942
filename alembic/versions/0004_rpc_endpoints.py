"""rpc_endpoints: the indexer's view of each RPC endpoint, for scripts/status.py.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

One row per (chain, position in ``RPC_URL``), rewritten by the chain's active indexer every few
seconds: state, head, lag, health score, latency, request and error counts, last error. The
endpoint column holds the redacted URL only (no API key is ever stored). Written by
``blockhook_ingest``, read by ``blockhook_readonly`` (:data:`core.roles.PRIVILEGES`).
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from core import roles

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rpc_endpoints",
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("head", sa.BigInteger()),
        sa.Column("lag_blocks", sa.Integer()),
        sa.Column("health_score", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("chain_id", "position", name="pk_rpc_endpoints"),
    )
    roles.grant(op.execute, "rpc_endpoints")


def downgrade() -> None:
    op.drop_table("rpc_endpoints")
