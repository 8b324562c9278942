"""Retention: delete what the pipeline no longer needs, never what it still does (see
:mod:`retention.runner` for the contract, :mod:`retention.guards` for what is protected)."""
