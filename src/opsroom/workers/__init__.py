"""Runbook steps on Celery workers, one queue per environment (docs/workers.md)."""
