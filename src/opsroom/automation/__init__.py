"""Rules: when a check changes state, run a runbook under a policy."""
