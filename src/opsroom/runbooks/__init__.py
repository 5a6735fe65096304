"""Runbooks: parameterised recovery procedures and their executions."""
