"""The Conveyor broker: a stateless gRPC service that keeps queues, leases and results in Redis."""

__version__ = "0.8.0"
