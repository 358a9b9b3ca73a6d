#!/usr/bin/env bash
# One prepared GPU check (issue 15): benchmarks/bench_gpu.py's stages in <= 8 minutes on one H100/H200:
# environment, flash proof, bf16 vs fp32 logits, training MFU, Fig. 3, long-context evaluation, sliding window.
#
#   bash benchmarks/gpu.sh              # writes gpu.json + gpu.md into $OUT (else out/gpu) and prints the table
#   bash benchmarks/gpu.sh --dry-run    # every stage at toy sizes on the CPU, < 3 minutes (tests run it)
#   bash benchmarks/gpu.sh --stages flash mfu --budget 300   # any of bench_gpu.py's options
#
# PYTHON picks the interpreter (default python3: the one holding torch on the GPU machines).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/bench_gpu.py "$@"
