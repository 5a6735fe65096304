"""Rooms: where people and the bot talk; message history and what a room shows on opening."""
