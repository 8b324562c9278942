"""blockhook ingest service."""
