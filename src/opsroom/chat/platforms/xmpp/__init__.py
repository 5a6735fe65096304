"""XMPP multi-user chat over slixmpp."""
