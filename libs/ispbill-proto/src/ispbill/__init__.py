"""ispbill gRPC APIs: stubs generated from proto/ispbill by `make proto`; do not edit."""
