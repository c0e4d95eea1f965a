"""Single-stream generation: the `Engine` behind generate, the studies and the dashboard; its KV cache, CUDA graph."""
