"""Generated protobuf and gRPC modules of the trackd.v1 contract (see protos/; `make proto`)."""
