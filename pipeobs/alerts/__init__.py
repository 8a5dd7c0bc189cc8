"""Alerting: rules over a run's signals, evaluated live in the driver and exported to Prometheus.

:mod:`~pipeobs.alerts.rules` reads rule files, :mod:`~pipeobs.alerts.signals` holds each signal's
PromQL and embedded computation, :mod:`~pipeobs.alerts.evaluator` is the driver's record-pipeline
sink that fires and resolves alerts, :mod:`~pipeobs.alerts.notify` delivers them (webhooks,
Alertmanager) on a thread of its own.
"""
