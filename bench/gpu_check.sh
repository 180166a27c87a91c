#!/usr/bin/env bash
# The GPU path, proven or plainly reported missing (issue 16, item 4).
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: bench/out/gpu-check-<UTC time>
#
# With an NVIDIA GPU (nvidia-smi lists one): makes sure ONNX Runtime offers the CUDA execution provider, installing
# the `gpu` extra of pyproject.toml (onnxruntime-gpu, onnxconverter-common) into a virtual environment that sees this
# Python's packages (bench/out/gpu-venv, or $FACEGATE_GPU_VENV) when it does not: onnxruntime and onnxruntime-gpu
# provide the same module and only one may be installed, so the venv's onnxruntime-gpu shadows the CPU build without
# touching this Python's own install (README, Install, does the same by replacing it). A machine without network
# access takes the wheels from $FACEGATE_WHEELS (pip --no-index --find-links). It then checks that a session really
# runs on CUDA and measures, with --providers CUDAExecutionProvider,CPUExecutionProvider:
#   embed.json     bench/embed_bench.py: the dlib ResNet plain, through IO binding and as a float16 copy, batch sizes
#                  1..256 swept, and the RetinaFace detector;
#   pipeline.json  bench/pipeline_bench.py: throughput on the stage and 1080p clips (batch 1, 4, 8) and the daemon
#                  with 1 and 4 cameras;
#   scale.json     bench/door_bench.py --scale 100: 100 cameras of 1080p at 10 frames/s (decode included).
# Without a GPU it says so in its first line and in summary.txt, installs nothing, runs the same benchmarks on the
# CPU (shorter: fewer frames, smaller sweep, 4 cameras for the scale run) and exits 0.
# Video decoding runs on the CPU in both cases (OpenCV's FFmpeg backend, one reader thread per camera).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/daemon${PYTHONPATH:+:$PYTHONPATH}"
say() { echo "gpu_check: $*" | tee -a "$OUT/summary.txt" >&2; }

gpu=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$OUT/nvidia-smi.txt" 2>&1; then
  gpu=$(grep -m1 '^GPU ' "$OUT/nvidia-smi.txt" || true)
fi
{ date -u +"when: %Y-%m-%dT%H:%M:%SZ"; echo "cpus: $(nproc)"; uname -a; } >"$OUT/machine.txt"

if [ -z "$gpu" ]; then
  say "no GPU found (nvidia-smi missing or listing no GPU): CPU figures only, nothing installed"
  providers=CPUExecutionProvider
  embed_args=(--batches 1,8,32 --repeats 2 --threads 1)
  pipe_args=(--max-frames 100 --daemon-seconds 15 --batches 1,4 --threads 1)
  scale_args=(--threads 1)
  scale=4
else
  say "GPU: $gpu"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT/machine.txt" 2>&1 || true
  has_cuda() { "$1" -c 'import sys, onnxruntime as o; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; }
  if ! has_cuda "$PY"; then
    venv=${FACEGATE_GPU_VENV:-bench/out/gpu-venv}
    mapfile -t extra < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))')
    say "installing the gpu extra (${extra[*]}) into $venv"
    [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
    src=()
    [ -n "${FACEGATE_WHEELS:-}" ] && src=(--no-index --find-links "$FACEGATE_WHEELS")
    "$venv/bin/python" -m pip install -q "${src[@]}" "${extra[@]}" 2>&1 | tee -a "$OUT/summary.txt"
    PY="$venv/bin/python"
    has_cuda "$PY" || { say "onnxruntime-gpu installed but offers no CUDAExecutionProvider (CUDA/cuDNN libraries?)"; exit 1; }
  fi
  # ONNX Runtime falls back to the CPU silently when CUDA cannot start: check what a real session gets
  "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
from facegate.pipeline import FacePipeline
import onnxruntime as ort
pipe = FacePipeline.load("default", providers=["CUDAExecutionProvider", "CPUExecutionProvider"], with_liveness=False)
print(f"gpu_check: onnxruntime {ort.__version__}, recogniser providers {pipe.providers}, "
      f"detector providers {pipe.detector.providers}")
if pipe.providers[:1] != ["CUDAExecutionProvider"]:
    raise SystemExit("gpu_check: the CUDA execution provider did not start; see the ONNX Runtime messages above")
EOF
  providers=CUDAExecutionProvider,CPUExecutionProvider
  embed_args=(--batches 1,8,32,64,128,256 --repeats 5 --faces 256)
  pipe_args=(--daemon-seconds 30 --batches 1,4,8)
  scale_args=()
  scale=100
fi
say "providers: $providers; figures in $OUT"

"$PY" bench/embed_bench.py --providers "$providers" --cases "facegate dlib,retinaface detector" --io-binding --fp16 \
  "${embed_args[@]}" --json "$OUT/embed.json" 2>&1 | tee "$OUT/embed.txt"
"$PY" bench/pipeline_bench.py --providers "$providers" --skip-peer "${pipe_args[@]}" --json "$OUT/pipeline.json" \
  2>&1 | tee "$OUT/pipeline.txt"
"$PY" bench/door_bench.py --providers "$providers" --skip-inprocess --scale "$scale" --daemon-seconds 30 \
  "${scale_args[@]}" --json "$OUT/scale.json" 2>&1 | tee "$OUT/scale.txt"
if [ -z "$gpu" ]; then
  say "done: no GPU was found, the figures in $OUT are CPU figures"
else
  say "done: GPU figures in $OUT ($gpu)"
fi
