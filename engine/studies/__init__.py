"""Measured studies of the bundled engine (`python -m engine study`): kv, quant and batch, and their registry."""
