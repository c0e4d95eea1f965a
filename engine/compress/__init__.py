"""Compression of the bundled model into weights the engine serves: GPTQ int4, pruning, SVD low-rank, distillation.

`pipeline.compress(settings, reference)` turns the fp32 reference into a served model plus its `Recipe`
(`recipe.py`); `Compressed.save(DIR)` writes the directory `--weights DIR` loads. The algorithms are pure
functions over one weight (`gptq.py`, `prune.py`, `lowrank.py`), the calibration data and Hessians are in
`calibration.py`, quality against fp32 in `evaluate.py`, and `python -m engine compress` in `command.py`.
`distill.distill(settings, reference, compressed)` then trains an int4 model's grid toward fp32 in a time budget.
The engine core never imports this package.
"""
