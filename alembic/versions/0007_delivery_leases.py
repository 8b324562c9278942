"""Delivery leases: a worker claims a delivery for one attempt without holding a row lock.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

``deliveries.leased_by`` (the claiming worker and claim number) and ``deliveries.lease_expires_at``
are set in the short transaction that claims an attempt and cleared by the transaction that
records its outcome. While a lease runs, no other worker claims the row; once it has expired,
any worker may (the webhook is then sent again with the same ``webhook-id``). The table-level
grants of ``deliveries`` (:data:`core.roles.PRIVILEGES`) cover the new columns.
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("leased_by", sa.Text()))
    op.add_column("deliveries", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("deliveries", "lease_expires_at")
    op.drop_column("deliveries", "leased_by")
