#!/usr/bin/env bash
# GPU check: builds with --features cuda, then on the first NVIDIA GPU
#   1. times one ViT-S/16 DINO step of the official recipe (batch 64, 2x224 + 8x96 crops),
#      split into forward / backward / optimizer / EMA (benches/train_step.rs), and
#   2. trains ViT-S/16 for a short while on real sample shards, reporting images/s and the
#      share of step time spent waiting for the pipeline,
# sampling the peak GPU memory with nvidia-smi. Results go to OUT_DIR (default runs/gpu-check).
#
# usage: tools/gpu-check.sh [OUT_DIR]      (STEPS=N to change the training length, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-check}
steps=${STEPS:-60}
cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}
mkdir -p "$out"
command -v nvidia-smi >/dev/null || { echo "[gpu-check] nvidia-smi not found: no NVIDIA GPU here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

tools/install-build-deps.sh
cargo build --release --locked --features cuda -p dino-stream --bin dino-stream --bench train_step 2>&1 | tail -3
bench=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)

peak_memory() {  # runs "$@" while sampling GPU memory; prints the peak in MiB to $out/$name.mem
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/$name.mem.log" &
  local sampler=$!
  "$@"
  kill $sampler; wait $sampler 2>/dev/null || true
  sort -n "$out/$name.mem.log" | tail -1 > "$out/$name.mem"
  echo "[gpu-check] $name: peak GPU memory $(cat "$out/$name.mem") MiB"
}

echo "[gpu-check] 1/2 one ViT-S/16 step, split by phase"
peak_memory step "$bench" --config configs/vit_small_imagenet.toml --device cuda --steps 20 --json | tee "$out/step.txt"

samples=$cache/samples/crops-1000
bash tools/fetch-sample-data.sh "$samples" crops 1000
target/release/dino-stream ingest --src "$samples" --out "$out/shards" --row-group-bytes 16MiB
echo "[gpu-check] 2/2 ViT-S/16 training for $steps steps on real shards"
rm -rf "$out/run"
peak_memory train target/release/dino-stream train --config configs/vit_small_imagenet.toml \
  --data "$out/shards" --out "$out/run" --device cuda \
  --set optim.epochs=100 --set run.max_steps="$steps" --set run.log_every=10 | tee "$out/train.txt"
tail -3 "$out/run/metrics.jsonl"
echo "[gpu-check] done: $out"
