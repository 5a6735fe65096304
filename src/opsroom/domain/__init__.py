"""Pure lifecycles (DESIGN 5c): state machines with no I/O, tested alone."""
