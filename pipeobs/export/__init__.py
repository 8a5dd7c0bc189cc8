"""Routing telemetry to remote backends: the exporter interface, delivery, spool, plugins."""
