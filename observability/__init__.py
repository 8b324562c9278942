"""Prometheus and Grafana for blockhook: config, alert rules, the dashboard (docs/operations.md)."""
