"""Scales each worker pool from its queue and, ahead of deadlines, from the forecast.

sources (Redis queues, database deadlines) → policy (pure) → targets (Kubernetes, local processes).
"""
