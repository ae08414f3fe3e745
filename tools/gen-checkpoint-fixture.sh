#!/usr/bin/env bash
# Writes tests/fixtures/checkpoint-v1: a checkpoint of the format every later version must
# still resume (its step-3 folder) and the losses of steps 1-5 of the run it came from. Run
# at commit a535111 (the last version before the backbone trait), which made the committed
# copy:  git worktree add /tmp/v1 a535111 && /tmp/v1/tools/gen-checkpoint-fixture.sh
# (this script is then copied there first; it uses only commands that version has).
#
# The data are the tests' own shards: tools/fetch-sample-data.sh's 48 `crops`, ingested with
# --row-group-bytes 256KiB (the ingest plan, which the checkpoint records, does not depend on
# paths, so tests/train.rs's shards() gives the same plan).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/tests/fixtures/checkpoint-v1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --quiet --locked --manifest-path "$repo/Cargo.toml" --bin dino-stream
bin=${CARGO_TARGET_DIR:-$repo/target}/debug/dino-stream
bash "$repo/tools/fetch-sample-data.sh" "$work/crops" crops 48
"$bin" ingest --src "$work/crops" --out "$work/shards" --row-group-bytes 256KiB
"$bin" train --config "$out/run.toml" --data "$work/shards" --out "$work/run"
rm -rf "$out/step-00000003"
cp -r "$work/run/checkpoints/step-00000003" "$out/"
python3 - "$work/run/metrics.jsonl" "$out/expected.json" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
json.dump({
    "written_by": "dino-stream a535111 (tools/gen-checkpoint-fixture.sh)",
    "data": "tests' shards: crops-48 ingested with --row-group-bytes 256KiB",
    "losses": {str(d["step"]): d["loss"] for d in lines},
}, open(sys.argv[2], "w"), indent=2)
PY
echo "wrote $out"
