"""The Alertmanager fixture for every test under tests/alerts (defined in tests/alerts/alertmanager.py)."""

from tests.alerts.alertmanager import alertmanager_factory

__all__ = ["alertmanager_factory"]
