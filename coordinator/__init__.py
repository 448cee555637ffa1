"""The coordinator: authenticated gRPC service that sums ciphertexts it cannot read."""
