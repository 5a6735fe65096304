"""Approval requests: named roles decide; the requester never approves their own."""
