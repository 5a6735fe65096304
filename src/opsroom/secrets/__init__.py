"""Secrets: the one masker every sink passes through (encrypted store and injection follow)."""
