"""Slack: Socket Mode for events and clicks, the Web API for posting, signed HTTP actions."""
