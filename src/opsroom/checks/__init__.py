"""Health checks: probes, the scheduler that runs them, and the monitor that keeps their state."""
