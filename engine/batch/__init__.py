"""Continuous batching for the server: sequences, the scheduler, the paged KV cache and the engine loop thread."""
