"""Mattermost: the WebSocket API for events, REST for posting, interactive message buttons."""
