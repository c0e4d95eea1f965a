"""The model as read from its GGUF file: config, weights, tokenizer and chat template, the transformer.

Depends on `engine.quant` for its low-bit layers and on nothing above it (run, batch, serving, studies).
"""
