#!/usr/bin/env bash
# Set up (idempotent), then the main job: build digits-cnn for the stm32f746 and prove
# the generated C equal to the NumPy reference on real digits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tinygen boards
tinygen build --board stm32f746 --model digits-cnn --out build/digits-stm32f746
tinygen verify build/digits-stm32f746 --inputs 32
