"""Web interface: JSON API, login, the live web room, /metrics."""
