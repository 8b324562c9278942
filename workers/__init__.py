"""blockhook workers service."""
