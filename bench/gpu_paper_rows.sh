#!/usr/bin/env bash
# Paper rows on one CUDA GPU in about 9 minutes (bench/gpu_paper_rows.py): the GPU smoke (16-mixed, DDP
# on 1 device), the DRLoc step ratio of Swin-T at 224 px, and Swin-T on Flowers-102, λ 0 vs 0.5, for as
# many epochs as fit. Needs torch, Lightning, timm and torchmetrics only (no Hydra), so it runs on the
# lent accelerator machine's own Python as it is. The data: the reduced Flowers-102 archive (<= 40 MB,
# official split, test set whole) that `python bench/make_flowers_subset.py` writes to bench/data/,
# checked against bench/flowers102_subset.SHA256SUMS.
#
#   bash bench/gpu_paper_rows.sh                     # any CUDA machine, from the repository root
#   bash bench/gpu_paper_rows.sh --dry-run           # CPU, tiny settings (what CI runs)
# On the lent machine: `device` run with carry=["bench/data"], command `bash bench/gpu_paper_rows.sh`,
# OUT=$OUT to bring the results back. Env: PY (python), DATA (archive folder), OUT (results folder),
# BUDGET_S (wall-clock budget of the python part, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-bench/data}
OUT=${OUT:-bench/results/gpu_paper_rows}
if [ ! -f "$DATA/flowers102.tar" ]; then
  echo "gpu_paper_rows: no $DATA/flowers102.tar; make it with: python bench/make_flowers_subset.py --out-dir $DATA" >&2
  exit 2
fi
case " $* " in
  *" --dry-run "*) ;;  # a dry run reads any small copy (its own SHA256SUMS beside it is checked by the data module)
  *)
    expected=$(awk '{print $1}' bench/flowers102_subset.SHA256SUMS)
    actual=$(sha256sum "$DATA/flowers102.tar" | awk '{print $1}')
    if [ "$expected" != "$actual" ]; then
      echo "gpu_paper_rows: $DATA/flowers102.tar has sha256 $actual, not the committed $expected" \
           "(bench/flowers102_subset.SHA256SUMS); remake it with bench/make_flowers_subset.py." >&2
      exit 2
    fi
    ;;
esac
mkdir -p "$OUT"
exec "$PY" bench/gpu_paper_rows.py --data-root "$DATA" --out "$OUT" --budget-s "${BUDGET_S:-540}" "$@"
