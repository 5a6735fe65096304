"""Append-only, hash-chained audit log of every view and every change."""
