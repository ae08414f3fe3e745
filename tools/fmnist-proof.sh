#!/usr/bin/env bash
# Does DINO learn? Fashion-MNIST through the whole product on the CPU: fetch the train and
# test photos (Debian's dataset-fashion-mnist), ingest them as splits `train` (the first
# 20,000 train photos, for training), `bank` (all 60,000, the k-NN neighbours) and `val`
# (the 10,000 test photos), train configs/fmnist.toml, then k-NN top-1/top-5 of the trained
# teacher, of the same network at its random initialization and of raw pixels, attention
# maps of three test photos, and the run's curves.
#
# usage: tools/fmnist-proof.sh [RUN_DIR [STEPS]]   (default: runs/fmnist-proof, the config's
# 1,560 steps; a rerun resumes). STEPS=936 is the run the README's config sweep compares.
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir=${1:-runs/fmnist-proof}
steps=${2:-}
cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}

tools/install-build-deps.sh
bash tools/fetch-sample-data.sh "$cache/samples/fmnist-train-20000" fmnist-train 20000
bash tools/fetch-sample-data.sh "$cache/samples/fmnist-train" fmnist-train 60000
bash tools/fetch-sample-data.sh "$cache/samples/fmnist-test" fmnist-test 10000
dino_stream() { cargo run --quiet --release --locked -p dino-stream -- "$@"; }
shards=$run_dir/shards
dino_stream ingest --src "$cache/samples/fmnist-train-20000" --out "$shards" --split train
dino_stream ingest --src "$cache/samples/fmnist-train" --out "$shards" --split bank
dino_stream ingest --src "$cache/samples/fmnist-test" --out "$shards" --split val

extra=()
[ -d "$run_dir/train/checkpoints" ] && extra+=(--resume)
[ -n "$steps" ] && extra+=(--set "run.max_steps=$steps")
dino_stream train --config configs/fmnist.toml --data "$shards" --out "$run_dir/train" "${extra[@]}"
dino_stream plot "$run_dir/train"

knn() { dino_stream knn --checkpoint "$run_dir/train" --train "$shards" --train-split bank --val "$shards" "$@"; }
knn --json > "$run_dir/knn-teacher.json"
knn --json --baseline init > "$run_dir/knn-init.json"
knn --json --baseline pixels > "$run_dir/knn-pixels.json"
for f in "$run_dir"/knn-*.json; do
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-70s" % r["features"], "  ".join("k=%d top-1 %.2f" % (x["k"], x["top1"]) for x in r["results"]))' "$f"
done

for class in 9_Ankle_boot 8_Bag 0_T-shirt_top; do
  images=("$cache/samples/fmnist-test/$class"/*.JPEG)
  dino_stream attention --checkpoint "$run_dir/train" --image "${images[0]}" --out "$run_dir/attention/$class" --size 56 --threshold 0.6
done
echo "[fmnist-proof] done: $run_dir (train/, train/plots/, knn-*.json, attention/)"
