"""Prometheus metrics of a running soundwatch (``soundwatch run --metrics [HOST:]PORT``).

The exporter is a subscriber like any other: it turns the ``status``, ``tags`` and
``events`` messages into metrics, so it knows nothing of the pipeline. The one thing status
did not carry, the inference batches, is measured by :class:`InferenceStats` around the
model call and published in status's ``inference`` field.
"""

from soundwatch.metrics.config import MetricsConfig
from soundwatch.metrics.inference import InferenceStats

__all__ = ["InferenceStats", "MetricsConfig"]
