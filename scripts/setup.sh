#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: host gcc, the Arm toolchain and QEMU
# from Debian, and this package (editable) with its test extras from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v arm-none-eabi-gcc >/dev/null || need_apt+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v clang-format >/dev/null || need_apt+=(clang-format)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -m pip install -q -e '.[test]' 2>&1 | grep -v -i "running pip as the 'root' user" || true
python3 -c "import tinygen" || { echo "setup: tinygen did not install" >&2; exit 1; }
