"""Telegram through the Bot API (long polling or webhook)."""
