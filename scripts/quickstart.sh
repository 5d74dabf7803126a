#!/usr/bin/env bash
# Set up (idempotent), then the main job: build a training firmware for the stm32f746 (digits-cnn
# with a fresh 5-way head, every layer trained, 32 real digits embedded in flash) and train it
# under QEMU; `tinygen sim` prints the loss of every step and proves each one, and the trained
# parameters' checksum, equal to the NumPy reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tinygen build --board stm32f746 --model digits-cnn --classes 5 --samples 32 --steps 64 \
  --out build/digits-stm32f746
tinygen sim build/digits-stm32f746
