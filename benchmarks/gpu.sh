#!/usr/bin/env bash
# GPU check and figures, for a session whose task is lent a device machine (see the device tool's
# README). NOT YET RUN: no task so far was lent one. Two steps:
#
#   here (2 cores, network to PyPI):   benchmarks/gpu.sh prepare
#       downloads Python 3.12 wheels of what the device image lacks into .whl/ and packs CASIA's
#       features-to-be (the 16 kHz corpus as FLAC) into .gpu/ ; both are git-ignored via
#       .git/info/exclude and travel with `carry: [".whl", ".gpu"]` (64 MiB in all: check `du -sh`).
#   there (H200, no network):           benchmarks/gpu.sh run     (timeout_s ~ 540)
#       installs the wheels into /tmp/site, runs the GPU-relevant tests, featurizes CASIA with the
#       torch backend on CUDA (audio s/s), then trains cnn and two seed models at paper size under
#       LOSO with bf16 and prints UA, utterances/s and the data share of step time.
#       Results land in $OUT (log.txt, *.json).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
CORPUS=${SER_GPU_CORPUS:-../shared/corpora/casia}

if [[ $MODE == prepare ]]; then
    grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    mkdir -p .whl .gpu/casia
    # The device image has torch, numpy, scipy, pandas, pyarrow, scikit-learn, transformers, typer,
    # msgpack, toolz, cloudpickle... (device/KINDS.md); these it lacks (or has at other versions), at the versions constraints.txt
    # pins (the versions the tests ran with here). --no-deps: each need is named.
    for name in zarr numcodecs donfig google-crc32c soxr soundfile dask distributed tblib zict partd locket \
                sortedcontainers cloudpickle msgpack toolz fsspec; do
        pkg=$(grep -i "^${name}==" constraints.txt) || { echo "warning: $name is not pinned in constraints.txt" >&2; continue; }
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$pkg" || echo "warning: no wheel for $pkg (pin another version)" >&2
    done
    .venv/bin/python - "$CORPUS" .gpu/casia <<'EOF'
import sys, pathlib, soundfile as sf
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wav in sorted(src.rglob("*.wav")):
    out = dst / wav.relative_to(src).with_suffix(".flac")
    out.parent.mkdir(parents=True, exist_ok=True)
    data, rate = sf.read(wav, dtype="int16")
    sf.write(out, data, rate, subtype="PCM_16", format="FLAC")
EOF
    du -sh .whl .gpu
    exit 0
fi

# --- on the device machine ---
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SER_ROOT=/tmp/ser-gpu
SER="python3 -m ser_pipeline.cli"
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 120 python3 -m pytest -q -x tests/test_torch_features.py tests/test_features.py tests/training || true
$SER ingest casia .gpu/casia
$SER bench extract casia --limit 1200 --device cuda --json > "$OUT/extract.json" || true
$SER featurize casia --backend torch --json > "$OUT/featurize_torch.json"
for model in cnn att_res alexnet_sru; do
    timeout 150 $SER train "$model" casia --preset paper --set train.bf16=true --device cuda --no-track --json \
        > "$OUT/train_$model.json" || echo "train $model: stopped (timeout or error)"
done
ls -la "$OUT"
