"""Shared ground for every blockhook service: settings, database, schema, errors, logging, metrics."""
