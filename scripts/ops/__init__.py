"""Helpers shared by the operations scripts (status, replay, run): small, read-mostly pieces."""
