"""Powertools logger, metrics and tracer shared by every function (service and namespace from env vars)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
metrics = Metrics()
tracer = Tracer()
