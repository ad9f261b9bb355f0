#!/usr/bin/env bash
# Issue 13, the GPU training path on a machine that has the project installed (benchmarks/gpu.sh prepares a bare device machine) (not run yet: no GPU was lent to this task).
#   benchmarks/gpu.sh ROOT [WHEEL_DIR]
# ROOT: a workspace with CASIA ingested (`ser ingest casia ../shared/corpora/casia --root ROOT`).
# WHEEL_DIR: optional folder with a CUDA build of torch (the machine may have no network); the pin
# matches constraints.txt. Prints UA per model, utterances/s and the data-loading share of step time
# (metrics.json `folds[].timing`: utt_per_s, data_share), bf16 autocast on CUDA (TrainConfig.bf16).
set -euo pipefail
ROOT=${1:?usage: benchmarks/gpu.sh ROOT [WHEEL_DIR]}
WHEELS=${2:-}
PY=${PYTHON:-python}
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  if [ -n "$WHEELS" ]; then $PY -m pip install --no-index --find-links "$WHEELS" "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)"; fi
fi
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA"; print(torch.__version__, torch.cuda.get_device_name(0))'
$PY -m pytest -q -m gpu tests || true   # GPU-marked tests (none fail silently: the summary line shows)
for MODEL in cnn alexnet_sru dcnn_blstm_att; do
  PRESET=paper; [ "$MODEL" = cnn ] && PRESET=default
  ser train "$MODEL" casia --preset "$PRESET" --protocol loso --device cuda --root "$ROOT" --json > "gpu_$MODEL.json"
  $PY - "$ROOT" "gpu_$MODEL.json" <<'PYEOF'
import json, sys, pathlib
s = json.loads(pathlib.Path(sys.argv[2]).read_text())
m = json.loads((pathlib.Path(s["directory"]) / "metrics.json").read_text())
t = [f.get("timing", {}) for f in m["folds"]]
ups = sum(x.get("utt_per_s", 0) for x in t) / max(len(t), 1)
share = sum(x.get("data_share", 0) for x in t) / max(len(t), 1)
print(f"{sys.argv[2]}: UA {s['mean']['ua']:.3f} +- {s['std']['ua']:.3f} pooled {s['pooled']['ua']:.3f}; "
      f"{ups:.0f} utt/s; data share {share:.1%}")
PYEOF
done
