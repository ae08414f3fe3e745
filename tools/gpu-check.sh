#!/usr/bin/env bash
# GPU check, in two halves: the GPU machines lent to this project reach no network and have
# no Rust toolchain, so everything is built and gathered on a CPU machine first.
#
#   tools/gpu-check.sh pack DIR    on a CPU machine with network: builds the CUDA bench
#                                  binaries (release, --features cuda, stripped, gzipped),
#                                  ingests 300 real sample photos, and writes DIR (< 60 MiB)
#                                  with everything the run needs, and DIR/run.sh
#   DIR/run.sh                     on the GPU machine (or tools/gpu-check.sh run DIR): no
#                                  network, no cargo, no apt; reads only DIR. Writes its
#                                  figures to $OUT/gpu-check.json (OUT defaults to DIR/out):
#     1. CUDA against the CPU: one teacher forward and two training steps of the quickstart
#        model (benches/train_step.rs --check; tolerances 1e-3 relative);
#     2. the ViT-S/16 recipe step (B = 64, 2x224 + 8x96, K = 65536) in fp32 and in bf16, by
#        phase, with the peak GPU memory (nvidia-smi, sampled every 200 ms);
#     3. real training through the loader (8 loader workers) in bf16: images/s, data wait;
#     4. the same step in PyTorch on the machine's own torch, fp32 and bf16 autocast
#        (tools/bench_train_step.py --no-venv);
#     5. one recipe batch's upload, u8 against f32 (benches/upload.rs).
#   Each stage has its own time limit (the whole run fits in 8 minutes); a stage that fails
#   or runs out of time is recorded as such and the others still run.
#
# Rehearsal on a CPU machine (checks the script, not the GPU): pack with CUDA=0, then
#   DEVICE=cpu RECIPE=configs/quickstart.toml STEPS=3 TRAIN_STEPS=12 \
#     PYTHON=~/.cache/dino-stream/venv-fixtures/bin/python DIR/run.sh
# (PYTHON: an interpreter with torch and timm; the GPU machine's python3 has them.)
set -euo pipefail

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

pack() {
  local dir
  dir=$(realpath -m "$1")
  local repo
  repo=$(cd "$(dirname "$0")/.." && pwd)
  cd "$repo"
  local features=(--features cuda)
  [ "${CUDA:-1}" = 0 ] && features=()
  tools/install-build-deps.sh
  echo "[gpu-check] building the bench binaries (release ${features[*]})" >&2
  cargo build --release --locked "${features[@]}" -p dino-stream --bench train_step --bench upload \
    2>&1 | tail -2 >&2
  rm -rf "$dir"
  mkdir -p "$dir/bin" "$dir/configs" "$dir/tools"
  local name bin
  for name in train_step upload; do
    # the newest build of each bench (the deps folder keeps older ones)
    bin=$(ls -t target/release/deps/"$name"-* | grep -v '\.d$' | head -1)
    strip -o "$dir/bin/$name" "$bin"
    gzip -9 "$dir/bin/$name"
  done
  cp configs/quickstart.toml configs/vit_small_imagenet.toml "$dir/configs/"
  cp tools/bench_train_step.py tools/dino_torch.py tools/pinned_venv.py "$dir/tools/"
  cp tools/gpu-check.sh "$dir/gpu-check.sh"
  local cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}
  local samples=$cache/samples/crops-300
  bash tools/fetch-sample-data.sh "$samples" crops 300 >&2
  cargo run --release --locked -q -p dino-stream -- ingest --src "$samples" --out "$dir/shards" \
    --row-group-bytes 4MiB >&2
  cat > "$dir/run.sh" <<'EOF'
#!/usr/bin/env bash
# the GPU half of tools/gpu-check.sh, on this folder only
exec bash "$(dirname "$0")/gpu-check.sh" run "$(dirname "$0")"
EOF
  chmod +x "$dir/run.sh"
  {
    echo "commit $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%FT%TZ) with $(rustc --version), features: ${features[*]:-none}"
  } > "$dir/BUILD"
  local size
  size=$(du -sm "$dir" | cut -f1)
  echo "[gpu-check] packed $dir: ${size} MiB" >&2
  if [ "$size" -gt 60 ]; then
    echo "[gpu-check] error: $dir is over 60 MiB" >&2
    exit 1
  fi
}

run() {
  local dir
  dir=$(cd "$1" && pwd)
  local out=${OUT:-$dir/out}
  local device=${DEVICE:-cuda}
  local recipe=$dir/${RECIPE:-configs/vit_small_imagenet.toml}
  local steps=${STEPS:-20}
  local train_steps=${TRAIN_STEPS:-600}
  mkdir -p "$out"
  # global: the EXIT trap runs after this function returns
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  local name
  for name in train_step upload; do
    gunzip -c "$dir/bin/$name.gz" > "$work/$name"
    chmod +x "$work/$name"
  done
  local started=$SECONDS
  if [ "$device" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
      > "$out/gpu.txt" || echo "nvidia-smi failed" > "$out/gpu.txt"
  fi

  # stage NAME LIMIT_S CMD...: runs CMD with its output in $out/NAME.txt and its exit status
  # in $out/NAME.rc (124: out of time); on a GPU, samples the peak memory into $out/NAME.mem
  stage() {
    local name=$1 limit=$2
    shift 2
    echo "[gpu-check] $name ($((SECONDS - started)) s so far)" >&2
    local sampler=
    if [ "$device" != cpu ]; then
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
        > "$out/$name.mem.log" 2>/dev/null &
      sampler=$!
    fi
    local rc=0
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1 || rc=$?
    echo "$rc" > "$out/$name.rc"
    if [ -n "$sampler" ]; then
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      sort -n "$out/$name.mem.log" | tail -1 > "$out/$name.mem"
    fi
    tail -3 "$out/$name.txt" >&2
  }

  local bench=$work/train_step
  stage check 120 "$bench" --bench --config "$dir/configs/quickstart.toml" --device "$device" \
    --check --json
  local p
  for p in fp32 bf16; do
    stage "step-$p" 90 "$bench" --bench --config "$recipe" --device "$device" --steps "$steps" \
      --set "run.precision=$p" --json
  done
  stage train-bf16 150 "$bench" --bench --config "$recipe" --device "$device" --steps 1 \
    --set run.precision=bf16 --set data.workers=8 --data "$dir/shards" \
    --train-steps "$train_steps" --json
  local torch_device=$device
  [ "$device" = cuda ] && torch_device=cuda:0
  local python=${PYTHON:-python3}
  stage torch-fp32 60 "$python" "$dir/tools/bench_train_step.py" --no-venv --config "$recipe" \
    --device "$torch_device" --steps "$steps" --json
  stage torch-bf16 60 "$python" "$dir/tools/bench_train_step.py" --no-venv --config "$recipe" \
    --device "$torch_device" --steps "$steps" --amp --json
  stage upload 30 "$work/upload" --bench --device "$device" --rounds 10 --json

  python3 - "$out" "$device" "$((SECONDS - started))" <<'EOF'
import json, os, sys
out, device, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
report = {"device": device, "seconds": seconds}
gpu = os.path.join(out, "gpu.txt")
if os.path.exists(gpu):
    report["gpu"] = open(gpu).read().strip()
for name in ["check", "step-fp32", "step-bf16", "train-bf16", "torch-fp32", "torch-bf16", "upload"]:
    text = open(os.path.join(out, name + ".txt"), errors="replace").read()
    stage = {"rc": int(open(os.path.join(out, name + ".rc")).read())}
    # each program prints its figures as one JSON object on its last JSON line
    lines = [l for l in text.splitlines() if l.startswith("{")]
    if lines:
        stage["figures"] = json.loads(lines[-1])
    else:
        stage["tail"] = text.splitlines()[-5:]
    mem = os.path.join(out, name + ".mem")
    if os.path.exists(mem) and open(mem).read().strip():
        stage["peak_gpu_memory_mib"] = int(open(mem).read())
    report[name] = stage
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps(report, indent=1))
EOF
  echo "[gpu-check] done in $((SECONDS - started)) s: $out/gpu-check.json" >&2
}

case ${1:-} in
  pack) [ $# -eq 2 ] || usage; pack "$2" ;;
  run) [ $# -eq 2 ] || usage; run "$2" ;;
  *) usage ;;
esac
