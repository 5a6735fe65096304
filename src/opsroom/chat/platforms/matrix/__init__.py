"""Matrix: the client-server API (see docs/chat/matrix.md)."""
