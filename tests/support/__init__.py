"""Test support: real services (Postgres clusters, anvil, HTTP peers) and contract helpers."""
