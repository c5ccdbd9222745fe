#!/usr/bin/env bash
# The accelerator check, one script within about 8 minutes of device time:
#   1. float32 golden parity and exact SOPs on XLA's lowering (the GPU/TPU path), as tests;
#   2. each device computes only its shard: the training step's per-device FLOPs and collectives on the devices;
#   3. what the training step keeps for its backward pass (benchmarks/memory.py), Ti at 224², T = 4;
#   4. the race against the official code: SpikingResformer-Ti at 224², T = 4, ours in bf16 and in fp16 (GradScaler
#      semantics), the official with fp16 autocast + GradScaler: images/s, the largest training batch that fits
#      (doubling search, each try in a fresh process), peak device memory.
#
#   benchmarks/device_check.sh                       # on a GPU or TPU; JSON under benchmarks/results/
#   OFFICIAL_DIR=/path/SpikingResformer OFFICIAL_PYTHON=/path/venv/bin/python benchmarks/device_check.sh
#   benchmarks/device_check.sh --dry-run             # the same script on the CPU at tiny sizes (CI runs this)
#
# Without OFFICIAL_DIR the race runs our side only and says so. The official side needs torch with CUDA and
# spikingjelly==0.0.0.0.14 (docs/performance.md). --dry-run only collects step 1's tests (they run in the suite
# anyway), runs the rest on a tiny model, writes to a temporary directory (or $OUT_DIR), and never touches
# benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: benchmarks/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # the official side shares the card: JAX allocates as it needs
PY=${OFFICIAL_PYTHON:-python}
TESTS=(tests/test_golden.py tests/test_energy.py -k
       "(float32_path and xla) or sops_match_official_exactly or energy_report_matches_official")
if [ "$DRY" = 1 ]; then
  OUT=${OUT_DIR:-$(mktemp -d)}
  export JAX_PLATFORMS=cpu
  TINY=(--override "planes=(8,16,32)" --override "num_heads=(1,2,4)" --override "blocks=(1,1,1)"
        --override group_size=8)
  MODEL=(--model spikingresformer_cifar --img-size 16 --T 1 --num-classes 10 "${TINY[@]}")
  RACE=(--batch 2 --steps 1 --warmup 0 --max-batch 2 --matmul-size 64)
  RACE16=(--batch 2 --steps 1 --warmup 0 --matmul-size 64)     # the batch search runs once (bf16)
  MEM=(--model spikingresformer_cifar --img-size 32 --T 1 --batch 2 --precision bfloat16 --remat none block
       --no-compile)
  CENSUS=(--tiny --batch-per-device 2)
  COLLECT=(--collect-only)
else
  OUT=${OUT_DIR:-benchmarks/results}
  python -c "import jax; d = jax.devices()[0]; assert d.platform in ('gpu', 'tpu'), f'not a GPU or TPU: {d} (use --dry-run)'"
  MODEL=(--model spikingresformer_ti --img-size 224 --T 4 --num-classes 1000)
  RACE=(--batch "${BATCH:-32}" --steps 5 --warmup 2 --max-batch "${CAP:-1024}")
  RACE16=("${RACE[@]}")
  MEM=(--model spikingresformer_ti --img-size 224 --T 4 --batch 2 --precision float32 bfloat16 float16
       --remat none block convs --compile-precisions bfloat16)     # the device's own temp bytes and FLOPs (bf16)
  CENSUS=(--config imagenet.py:ti --conv-impl xla --batch-per-device 8)
  COLLECT=()
fi
mkdir -p "$OUT"
TAG=$(python -c "import jax; d = jax.devices()[0]; print(d.platform if d.platform == 'cpu' else
  (d.platform + '_' + d.device_kind).lower().replace(' ', '_').replace('-', '_'))")
DEVICE=$([ "${TAG%%_*}" = gpu ] && echo cuda || echo cpu)
echo "device check: $TAG, results in $OUT"
SECONDS=0

echo "== 1. golden parity (float32, XLA's lowering) and exact SOPs"
python -m pytest -q -p no:cacheprovider "${COLLECT[@]}" "${TESTS[@]}" | tee "$OUT/golden_$TAG.txt"
grep -qE "^[0-9]+(\/[0-9]+)? tests collected|^[0-9]+ passed" "$OUT/golden_$TAG.txt" || { echo "   no test selected" >&2; exit 1; }
echo "   ${SECONDS}s"

echo "== 2. each device computes only its shard"
python benchmarks/census.py "${CENSUS[@]}" --out "$OUT/census_$TAG.json"
echo "   ${SECONDS}s"

echo "== 3. backward memory"
python benchmarks/memory.py "${MEM[@]}" --out "$OUT/backward_memory_$TAG.json"
echo "   ${SECONDS}s"

echo "== 4. the race"
official=()
if [ -n "${OFFICIAL_DIR:-}" ]; then
  official=(--official-dir "$OFFICIAL_DIR" --official-python "$PY" --official-device "$DEVICE" --official-amp
            --official-timeout 600)
else
  echo "   OFFICIAL_DIR is not set: our side only (set OFFICIAL_DIR and OFFICIAL_PYTHON for the official side)"
fi
python benchmarks/bench.py "${MODEL[@]}" "${RACE[@]}" "${official[@]}" --precision bfloat16 \
  --out "$OUT/device_race_bf16_$TAG.json"
python benchmarks/bench.py "${MODEL[@]}" "${RACE16[@]}" --precision float16 --out "$OUT/device_race_fp16_$TAG.json"
echo "== done in ${SECONDS}s: $OUT/{golden,census,backward_memory,device_race_bf16,device_race_fp16}_$TAG.*"
