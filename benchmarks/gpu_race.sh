#!/usr/bin/env bash
# The GPU race: SpikingResformer-Ti at 224², T = 4, ours vs the official code on the same card —
# training/evaluation images/s and the largest training batch that fits, each side in its own process.
#
#   OFFICIAL_DIR=/path/to/SpikingResformer OFFICIAL_PYTHON=/path/to/venv/bin/python benchmarks/gpu_race.sh
#
# The official side needs torch with CUDA, spikingjelly==0.0.0.0.14 (and cupy for its cupy neurons, else the
# torch backend is used) and timm; see docs/performance.md. It runs with fp16 autocast + GradScaler, as its
# recipe trains; ours with bf16 compute and float32 master weights (config.precision="bfloat16").
# Budget: about 5 minutes of device time (compiles included). Writes benchmarks/results/gpu_race_ti224*.json.
set -euo pipefail
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # the official side shares the card: JAX allocates as it needs
cd "$(dirname "$0")/.."
: "${OFFICIAL_DIR:?set OFFICIAL_DIR to a checkout of xyshi2000/SpikingResformer}"
PY=${OFFICIAL_PYTHON:-python}
BATCH=${BATCH:-64}           # timed batch (the official per-GPU batch is 32)
CAP=${CAP:-1024}             # largest batch tried by the doubling search
python -c "import jax; d = jax.devices()[0]; assert d.platform == 'gpu', f'not a GPU: {d}'; print(d.device_kind)"
ours=(--model spikingresformer_ti --img-size 224 --T 4 --num-classes 1000 --steps 5 --warmup 2)
official=(--official-dir "$OFFICIAL_DIR" --official-python "$PY" --official-device cuda --official-amp
          --official-timeout 600)
# 1. both sides at the same batch (ours bf16), then the largest batch each fits (doubling from BATCH)
python benchmarks/bench.py "${ours[@]}" "${official[@]}" --batch "$BATCH" --precision bfloat16 --max-batch "$CAP" \
    --out benchmarks/results/gpu_race_ti224.json
# 2. ours in float32, for reference
python benchmarks/bench.py "${ours[@]}" --batch "$BATCH" --precision float32 --out benchmarks/results/gpu_race_ti224_fp32.json
