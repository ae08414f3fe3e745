#!/usr/bin/env bash
# Data-parallel overhead on one machine: the trainer's step time with 1 rank of batch B
# against N ranks of B/N (`--devices cpu,cpu,...`), in interleaved rounds, medians of the
# per-window step times in RUN/metrics.jsonl (the first window, with the pipeline's start,
# left out), and the bytes each rank all-reduces per step. On a CPU the ranks share the
# cores, so this shows the cost of the machinery, not a speed-up.
#
# usage: tools/bench-parallel.sh [--config FILE] [--ranks N] [--steps S] [--rounds R] [--bin PATH]
#        (defaults: configs/quickstart.toml, 2 ranks, 30 steps, 3 rounds, the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/quickstart.toml ranks=2 steps=30 rounds=3
bin=${CARGO_TARGET_DIR:-target}/release/dino-stream
while [ $# -gt 0 ]; do
  case $1 in
    --config) config=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || cargo build --release --locked -p dino-stream
cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}
bash tools/fetch-sample-data.sh "$cache/samples/crops-1000" crops 1000 >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" ingest --src "$cache/samples/crops-1000" --out "$work/shards" >/dev/null
batch=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['data']['batch_size'])" "$config")
devices=$(python3 -c "print(','.join(['cpu'] * $ranks))")

run() { # name, batch, devices
  local out=$work/$1-$RANDOM
  "$bin" train --config "$config" --data "$work/shards" --out "$out" --devices "$3" \
    --set data.batch_size="$2" --set run.max_steps="$steps" --set run.log_every=5 2>"$out.err" >/dev/null
  python3 - "$out/metrics.jsonl" <<'EOF' >>"$work/$1.times"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
for l in lines[1:]:
    print(l["step_time"] * 1e3)
EOF
  grep -o 'all-reduces [0-9.]* MB' "$out.err" >"$work/$1.bytes" || true
}
for _ in $(seq "$rounds"); do
  run one "$batch" cpu
  run many "$((batch / ranks))" "$devices"
done
python3 - "$work" "$ranks" "$batch" "$config" <<'EOF'
import statistics, sys, pathlib
work, ranks, batch, config = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
one = [float(x) for x in (work / "one.times").read_text().split()]
many = [float(x) for x in (work / "many.times").read_text().split()]
flags = [f for f in ("avx2", "fma", "avx512f") if f in open("/proc/cpuinfo").read().split()]
print(f"{config}: step time, medians over {len(one)} windows (min-max)")
print(f"  1 rank x batch {batch}: {statistics.median(one):.0f} ms ({min(one):.0f}-{max(one):.0f})")
print(f"  {ranks} ranks x batch {batch // ranks}: {statistics.median(many):.0f} ms ({min(many):.0f}-{max(many):.0f})")
print(f"  ratio (N ranks / 1): {statistics.median(many) / statistics.median(one):.2f}")
print(f"  per step each rank {(work / 'many.bytes').read_text().strip()}; CPU flags: {' '.join(flags)}")
EOF
