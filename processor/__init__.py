"""blockhook processor service."""
