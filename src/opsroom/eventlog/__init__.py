"""The durable event log: events written in the transaction of the change they report."""
