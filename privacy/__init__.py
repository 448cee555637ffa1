"""Differential privacy, accounting and CKKS encryption: no grpc, no transformers."""
