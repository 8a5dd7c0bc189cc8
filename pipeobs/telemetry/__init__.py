"""Telemetry: spans (OpenTelemetry SDK), built-in metrics (Prometheus names), correlation."""
