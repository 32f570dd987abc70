"""Conveyor: a distributed task queue served over gRPC."""
