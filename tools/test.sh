#!/usr/bin/env bash
# The project's one test command (README, .ci/run): prepares what the tests need, then runs
# every test of the workspace. Extra arguments go to `cargo test` (e.g. a test name filter).
#
# - The tests fetch their real sample photos themselves (tools/fetch-sample-data.sh, cached).
# - The Parquet interop test reads shards with pyarrow: a venv with a pinned pyarrow is kept
#   in the cache ($DINO_STREAM_CACHE, default ~/.cache/dino-stream), outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly PYARROW_VERSION=26.0.1
cache=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}
venv=$cache/venv-test-pyarrow-$PYARROW_VERSION
if ! "$venv/bin/python" -c 'import pyarrow' 2>/dev/null; then
  echo "[test] creating $venv with pyarrow $PYARROW_VERSION" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pyarrow==$PYARROW_VERSION"
fi
export DINO_STREAM_PYTHON=$venv/bin/python

cargo test --workspace --locked "$@"
