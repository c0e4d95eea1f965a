"""Weight formats in their real precision: pure quantize/dequantize functions and the Linear modules that hold them.

A leaf of the engine: it imports torch and `engine.formats`, nothing else of ours.
"""
