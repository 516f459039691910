#!/usr/bin/env bash
# Client updates per second on one CUDA GPU, several simulated clients sharing it (fractional num-gpus),
# fp32 then bf16 autocast; each run also times the same work in a plain loop (benchmarks/overhead.py).
# Finishes well inside 10 minutes (each run is capped at 270 s).
#
#   benchmarks/gpu.sh                          # 4 clients per GPU (client-num-gpus=0.25), 10 rounds
#   GPUS_PER_CLIENT=0.5 ROUNDS=5 benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GPUS_PER_CLIENT=${GPUS_PER_CLIENT:-0.25}
ROUNDS=${ROUNDS:-10}
export FLWR_TELEMETRY_ENABLED=0

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA GPU visible to torch; nothing measured" >&2
    exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}')"

for bf16 in false true; do
    echo "== bf16=$bf16, client-num-gpus=$GPUS_PER_CLIENT (clients sharing one GPU: $("$PY" -c "print(int(1 / $GPUS_PER_CLIENT))"))"
    timeout 270 "$PY" benchmarks/overhead.py num-clients=20 clients-per-round=10 "num-server-rounds=$ROUNDS" \
        device=cuda "client-num-gpus=$GPUS_PER_CLIENT" client-num-cpus=1 "bf16=$bf16" \
        | grep -E "^\(a\) flower: (start-up|steady state)|^\(b\) plain|^overhead_ratio|^same work"
done
