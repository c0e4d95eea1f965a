"""Tests of the benchmark harness: how bench/ runs its peers, not the figures they give."""
