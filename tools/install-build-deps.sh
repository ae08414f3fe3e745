#!/usr/bin/env bash
# Installs the system packages the build needs and a fresh Debian/Ubuntu machine lacks:
# cmake and nasm, with which turbojpeg builds its vendored libjpeg-turbo (SIMD included).
set -euo pipefail
missing=()
for tool in cmake nasm; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]})) || exit 0
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
echo "[install-build-deps] installing ${missing[*]} with apt-get" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
