"""The demo: System A (service-b, service-c) as real local HTTP processes."""
