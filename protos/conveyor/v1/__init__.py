"""Generated protobuf and gRPC code for the conveyor.v1 contract (never edit; run `make proto`)."""
