"""Alerts from outside (Alertmanager, Grafana, signed webhooks): received, deduplicated, tied to
services, rules and rooms; acknowledged and silenced from chat, silences pushed back."""
