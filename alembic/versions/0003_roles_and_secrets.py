"""Least-privilege roles and webhook secrets out of ``actions.config``.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-29

- ``actions.secret`` / ``previous_secret`` / ``previous_secret_expires_at``: the signing secret
  (plaintext until the workers seal it into an ``enc:v1`` envelope, or for good when no
  encryption key is configured) and, during an endpoint secret rotation, the previous one.
- A BEFORE trigger takes ``config.secret`` out of every written config into ``secret`` (so no
  secret is ever stored in ``config``, which the processor and dashboards read), validates it,
  keeps the replaced secret as ``previous_secret`` for ``config.previous_secret_ttl`` seconds
  (default 86400), and NOTIFYs ``blockhook_secrets`` when plaintext awaits sealing.
- ``actions_touch`` and ``actions_changed`` ignore writes of the secret columns alone: sealing
  is not an edit (``updated_at`` keeps the user's last change) and does not reload processors.
- Roles ``blockhook_ingest``, ``blockhook_processor``, ``blockhook_workers``,
  ``blockhook_readonly`` (created when missing) and their grants (:mod:`core.roles`).

Downgrade puts each current secret back into ``config`` (opening envelopes with
``BLOCKHOOK_ENCRYPTION_KEY``; it refuses without the key rather than lose secrets), drops the
columns and this revision's functions, and revokes the roles' grants in this database. The
roles stay: they are cluster-wide and other databases may use them.
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from core import roles
from core.crypto import is_sealed, reveal
from core.schema import CHANNEL_SECRETS
from core.settings import EncryptionSettings, load_settings

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_PREVIOUS_SECRET_TTL = 86400
USER_COLUMNS = "trigger_id, type, config, enabled"


def upgrade() -> None:
    op.add_column("actions", sa.Column("secret", sa.Text))
    op.add_column("actions", sa.Column("previous_secret", sa.Text))
    op.add_column("actions", sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "previous_secret_expiry", "actions",
        "(previous_secret IS NULL) = (previous_secret_expires_at IS NULL)")
    op.execute("""
        CREATE FUNCTION blockhook_is_webhook_secret(value text) RETURNS boolean
        LANGUAGE sql IMMUTABLE AS $$
            SELECT value ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'
               AND length(rtrim(substr(value, 7), '=')) % 4 <> 1
        $$""")
    op.execute(f"""
        CREATE FUNCTION blockhook_actions_take_secret() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            written text;
            overlap float8 := {DEFAULT_PREVIOUS_SECRET_TTL};
        BEGIN
            IF jsonb_typeof(NEW.config) = 'object' AND NEW.config ? 'previous_secret_ttl' THEN
                IF jsonb_typeof(NEW.config->'previous_secret_ttl') <> 'number'
                   OR (NEW.config->>'previous_secret_ttl')::float8 < 0 THEN
                    RAISE EXCEPTION 'actions.config.previous_secret_ttl must be a number of '
                                    'seconds >= 0' USING ERRCODE = 'check_violation';
                END IF;
                overlap := (NEW.config->>'previous_secret_ttl')::float8;
            END IF;
            IF jsonb_typeof(NEW.config) = 'object' AND NEW.config ? 'secret' THEN
                -- The value never appears in an error: it may be a near-miss of the real one.
                IF jsonb_typeof(NEW.config->'secret') NOT IN ('string', 'null')
                   OR NOT coalesce(blockhook_is_webhook_secret(NEW.config->>'secret'), true) THEN
                    RAISE EXCEPTION 'actions.config.secret must be ''whsec_'' followed by base64 '
                                    '(value not shown)' USING ERRCODE = 'check_violation';
                END IF;
                written := NEW.config->>'secret';
                NEW.config := NEW.config - 'secret';
                IF written IS NULL THEN
                    NEW.previous_secret := NULL;
                    NEW.previous_secret_expires_at := NULL;
                ELSIF TG_OP = 'UPDATE' AND OLD.secret IS DISTINCT FROM written
                      AND OLD.secret IS NOT NULL THEN
                    IF overlap > 0 THEN
                        NEW.previous_secret := OLD.secret;
                        NEW.previous_secret_expires_at := now() + make_interval(secs => overlap);
                    ELSE
                        NEW.previous_secret := NULL;
                        NEW.previous_secret_expires_at := NULL;
                    END IF;
                END IF;
                NEW.secret := written;
            END IF;
            IF (NEW.secret IS NOT NULL AND NEW.secret NOT LIKE 'enc:%')
               OR (NEW.previous_secret IS NOT NULL AND NEW.previous_secret NOT LIKE 'enc:%') THEN
                PERFORM pg_notify('{CHANNEL_SECRETS}', NEW.id::text);
            END IF;
            RETURN NEW;
        END $$""")
    # Existing secrets move out of config like new ones will; updated_at stays as it was.
    op.execute("ALTER TABLE actions DISABLE TRIGGER actions_touch")
    op.execute("""UPDATE actions SET secret = config->>'secret', config = config - 'secret'
                  WHERE config ? 'secret'""")
    op.execute("ALTER TABLE actions ENABLE TRIGGER actions_touch")
    op.execute("""
        CREATE TRIGGER actions_take_secret
        BEFORE INSERT OR UPDATE OF config, secret, previous_secret ON actions
        FOR EACH ROW EXECUTE FUNCTION blockhook_actions_take_secret()""")
    _restrict_config_triggers(f"UPDATE OF {USER_COLUMNS}")
    roles.ensure_roles(op.execute)
    # Every table declared in core.roles that exists at this point: revisions that come before
    # this one in the chain (whatever their number) are covered; later ones call grant().
    existing = set(op.get_bind().execute(sa.text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    roles.grant(op.execute, *(table for table in roles.PRIVILEGES if table in existing))


def _restrict_config_triggers(update_event: str) -> None:
    op.execute("DROP TRIGGER actions_touch ON actions")
    op.execute(f"""
        CREATE TRIGGER actions_touch BEFORE {update_event} ON actions FOR EACH ROW
        EXECUTE FUNCTION blockhook_touch_updated_at()""")
    op.execute("DROP TRIGGER actions_changed ON actions")
    op.execute(f"""
        CREATE TRIGGER actions_changed AFTER INSERT OR {update_event} OR DELETE OR TRUNCATE
        ON actions FOR EACH STATEMENT EXECUTE FUNCTION blockhook_notify_config()""")


def downgrade() -> None:
    roles.revoke_all(op.execute)
    bind = op.get_bind()
    stored = bind.execute(sa.text(
        "SELECT id, secret FROM actions WHERE secret IS NOT NULL ORDER BY id")).all()
    keyring = None
    if any(is_sealed(secret) for _, secret in stored):
        keyring = load_settings(EncryptionSettings).keyring()
        if keyring is None:
            raise RuntimeError("actions hold encrypted webhook secrets: set "
                               "BLOCKHOOK_ENCRYPTION_KEY to downgrade (they go back into "
                               "actions.config in plaintext)")
    op.execute("DROP TRIGGER actions_take_secret ON actions")
    for action_id, secret in stored:
        bind.execute(sa.text("UPDATE actions SET config = config || jsonb_build_object("
                             "'secret', CAST(:secret AS text)) WHERE id = :id"),
                     {"id": action_id,
                      "secret": reveal(secret, action_id=action_id, keyring=keyring)})
    _restrict_config_triggers("UPDATE")
    op.drop_constraint("ck_actions_previous_secret_expiry", "actions")
    for column in ("previous_secret_expires_at", "previous_secret", "secret"):
        op.drop_column("actions", column)
    op.execute("DROP FUNCTION blockhook_actions_take_secret()")
    op.execute("DROP FUNCTION blockhook_is_webhook_secret(text)")
