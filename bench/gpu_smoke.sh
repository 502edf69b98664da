#!/usr/bin/env bash
# GPU smoke test (needs CUDA): the quickstart with trainer=gpu in 16-mixed and bf16-mixed, one
# training step of trainer=ddp on 1 device, and the DRLoc overhead benchmark at 224 px on the GPU.
# Budget: under 5 minutes on one H100-class GPU. Prints a short table; writes bench/results/gpu_smoke/.
#   bash bench/gpu_smoke.sh            (from the repository root, after `make install`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-bench/results/gpu_smoke}
mkdir -p "$OUT"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: no CUDA device visible; run this on a machine with a GPU." >&2
  exit 3
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

rows=()
run() {  # name, then the train overrides
  local name=$1; shift
  local start=$(date +%s)
  "$PY" -m vt_drloc.train "$@" print_config=false "hydra.run.dir=$OUT/$name" > "$OUT/$name.log" 2>&1
  local rc=$?
  local secs=$(( $(date +%s) - start ))
  local acc=$("$PY" -c "import json,sys; r=json.load(open('$OUT/$name/results.json')); print(r.get('test_acc1'), round(r.get('images_per_s') or 0))" 2>/dev/null || echo "- -")
  rows+=("$(printf '%-22s rc=%-3s %5ss  test_acc1/img_s: %s' "$name" "$rc" "$secs" "$acc")")
}

QUICK=(experiment=quickstart trainer=gpu data.num_workers=8 trainer.max_epochs=3)
run quickstart_fp16 "${QUICK[@]}" trainer.precision=16-mixed
run quickstart_bf16 "${QUICK[@]}" trainer.precision=bf16-mixed
run ddp_1gpu_1step experiment=quickstart trainer=ddp trainer.devices=1 trainer.max_epochs=1 \
    trainer.limit_train_batches=1 trainer.limit_val_batches=1 trainer.limit_test_batches=1 data.cache=false

"$PY" bench/overhead.py --device cuda --batch 64 --steps 20 --warmup 3 --out "$OUT/overhead.json" | tee "$OUT/overhead.txt"

echo
echo "gpu_smoke summary"
printf '%s\n' "${rows[@]}"
