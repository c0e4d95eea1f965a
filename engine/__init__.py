"""Preflight's bundled inference engine: a pure-PyTorch Llama runner for GGUF files."""
