"""Users, roles, permissions, tokens, web sessions."""
