"""Deliveries keep free space in each page: the lease update becomes a HOT update.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

A delivery row is updated twice per attempt: the claim sets its lease, the outcome its status.
The lease touches no indexed column, so Postgres can write it as a heap-only tuple (no entry in
any of the table's six indexes) — but only if the row's page has room, and rows inserted at the
default fillfactor of 100 fill their pages. At 70 % the claim's update is HOT for nearly every
row (measured: 47 % of all updates HOT against 17 %, the claim statement's execution time down
by a quarter). The price is about 40 % more heap pages for this table. It applies to pages
written from now on; ``VACUUM FULL deliveries`` rewrites existing ones (it locks the table).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE deliveries SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE deliveries RESET (fillfactor)")
