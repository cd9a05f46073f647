#!/usr/bin/env bash
# The GPU checks of rlhf-lens in one script (docs/scale.md), for a machine with CUDA:
#   1. the `tiny` preset end to end with model.device=cuda (and the CPU run's headline beside it);
#   2. one PPO step, a harvest and the SAE grid on a randomly initialised Pythia-70m-shaped model
#      (GPT-NeoX, 6 blocks, width 512: no hub needed), timed (bench/gpu_parts.py);
#   3. bench/bench_sae_gpu.py when it is there (the paper's SAE grid shapes).
# Each figure is printed as `FIGURE name=value unit`. DEVICE=cpu QUICK=1 runs the same steps small on a CPU
# (a dry run of the script itself; its figures say nothing about a GPU).
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
OUT="${OUT:-$(mktemp -d)}"
export RLHF_LENS_QUIET=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<EOF
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "DEVICE=$DEVICE but CUDA is not available"
    print("device:", torch.cuda.get_device_name(0))
EOF

echo "== 1. tiny preset on $DEVICE"
start=$(date +%s.%N)
"$PY" -m rlhf_lens run --preset tiny --set "model.device=$DEVICE" --out "$OUT/tiny-$DEVICE" > "$OUT/tiny.log" 2>&1 \
  || { tail -20 "$OUT/tiny.log"; exit 1; }
end=$(date +%s.%N)
echo "FIGURE tiny_preset_wall_s=$(echo "$end - $start" | bc) s"
"$PY" - <<EOF
import json
results = json.load(open("$OUT/tiny-$DEVICE/results.json"))
for row in results["headline"]:
    print("headline", row["name"], {m: round(row[m]["mean"], 4) for m in ("base", "tuned") if row.get(m)})
print("diff", results["diff"]["verdicts"]["output"])
EOF

echo "== 2. PPO step, harvest and SAE grid on a random Pythia-70m-shaped model"
"$PY" bench/gpu_parts.py --device "$DEVICE" --out "$OUT/parts" $([ "$QUICK" = 1 ] && echo --quick)

if [ -f bench/bench_sae_gpu.py ]; then
  echo "== 3. the paper's SAE grid (bench/bench_sae_gpu.py)"
  "$PY" bench/bench_sae_gpu.py --device "$DEVICE" $([ "$QUICK" = 1 ] && echo --quick)
fi
echo "outputs in $OUT"
