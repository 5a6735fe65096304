"""opsroom: self-hosted ChatOps for production support."""

__version__ = "0.1.0"
