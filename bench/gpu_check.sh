#!/usr/bin/env bash
# The GPU checks of rlhf-lens in one script (docs/scale.md, docs/sae.md), for a machine with CUDA:
#   1. the tests marked `gpu` (SAE training on cuda: gradients, CPU agreement, bf16, resume);
#   2. bench/bench_sae_gpu.py: the paper's SAE grid (60 SAEs, 6.4M tokens x 3 epochs each), float32 and bfloat16;
#   3. the same at batch 256, one (model, block) pass of one epoch (the launch-bound regime);
#   4. one PPO step, a harvest and an SAE group on a randomly initialised Pythia-70m-shaped model (bench/gpu_parts.py);
#   5. the `tiny` preset end to end with model.device=cuda (and its headline).
# Each step runs under its own time limit (LIMIT_<number>, else STEP_LIMIT seconds, default 900) and a failed step does not stop the
# next; each ends with a `STEP name rc=... wall=...` line. Figures are printed as `FIGURE name=value unit`.
# DEVICE=cpu QUICK=1 runs the same steps small on a CPU (a dry run of the script; its figures say nothing of a GPU).
#
#   PYTHONPATH=src PY=python3 bash bench/gpu_check.sh     # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
OUT="${OUT:-$(mktemp -d)}"
STEP_LIMIT="${STEP_LIMIT:-900}"
SKIP="${SKIP:-}"  # space-separated step numbers to leave out
export RLHF_LENS_QUIET=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="src:bench${PYTHONPATH:+:$PYTHONPATH}"
quick=$([ "$QUICK" = 1 ] && echo --quick)

step() {  # step NUMBER NAME COMMAND...
  local number=$1 name=$2
  shift 2
  case " $SKIP " in *" $number "*) echo "== $number. $name: skipped"; return;; esac
  echo "== $number. $name"
  local start rc limit_name="LIMIT_$number"
  start=$(date +%s%N)
  timeout "${!limit_name:-$STEP_LIMIT}" "$@"
  rc=$?
  echo "STEP $name rc=$rc wall=$(( ($(date +%s%N) - start) / 1000000 )) ms"
}

"$PY" - <<EOF
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "DEVICE=$DEVICE but CUDA is not available"
    print("device:", torch.cuda.get_device_name(0))
EOF

step 1 gpu_tests "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_sae_device.py
step 2 sae_grid "$PY" bench/bench_sae_gpu.py --device "$DEVICE" $quick
step 3 sae_grid_batch256 "$PY" bench/bench_sae_gpu.py --device "$DEVICE" --dtypes float32 --models 1 --blocks 1 \
  --epochs 1 --batch 256 $quick

tiny_preset() {
  "$PY" -m rlhf_lens run --preset tiny --set "model.device=$DEVICE" --out "$OUT/tiny-$DEVICE" > "$OUT/tiny.log" 2>&1 \
    || { tail -20 "$OUT/tiny.log"; return 1; }
  "$PY" - <<EOF
import json
results = json.load(open("$OUT/tiny-$DEVICE/results.json"))
for row in results["headline"]:
    print("headline", row["name"], {m: round(row[m]["mean"], 4) for m in ("base", "tuned") if row.get(m)})
print("diff", results["diff"]["verdicts"]["output"])
EOF
}
export PY DEVICE OUT
export -f tiny_preset
step 4 parts "$PY" bench/gpu_parts.py --device "$DEVICE" --out "$OUT/parts" $quick
step 5 tiny_preset bash -c tiny_preset
echo "outputs in $OUT"
