#!/usr/bin/env bash
# GPU acceptance on a 2-GPU host (CI never runs this; see BENCHMARKS.md for how it was used).
#   GPU 0: the default train.py for the full TIME_BUDGET on a larger local corpus (the host's
#          site-packages .py files), for the val_bpb / tok/s / MFU / startup figures.
#   GPU 1: the harness on a copy of the repo with TIME_BUDGET shortened to $SHORT_BUDGET seconds:
#          experiments/train-bpb (baseline scored, one edit judged), then experiments/train-bpb-search
#          (noise-aware: baseline scored 3 times, then hparams-mutator iterations until the deadline).
# Usage: bash .ci/device-acceptance.sh OUT_DIR   (needs .corpus/ = a copy of ../shared/corpus; .whl/ = rustbpe wheel)
set -u
OUT=${1:?usage: device-acceptance.sh OUT_DIR}; mkdir -p "$OUT"
ROOT=$PWD
SHORT_BUDGET=${SHORT_BUDGET:-20}
DEADLINE=$((SECONDS + ${DEADLINE_S:-560}))   # stop the open-ended search before the call's limit
export PYTHONUNBUFFERED=1
if ! python3 -c "import rustbpe" 2>/dev/null; then   # the GPU image lacks rustbpe: install the carried wheel
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/rustbpe-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$OUT/gpus.txt"
python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/gpus.txt"

# --- corpora ---------------------------------------------------------------------------------
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
(
  mkdir -p /tmp/pycorpus && cd "$SITE" && find . -name '*.py' -print0 | tar --null -T - -cf - | tar -xf - -C /tmp/pycorpus
  echo "corpus: $(du -sh /tmp/pycorpus | cut -f1) in $(find /tmp/pycorpus -name '*.py' | wc -l) .py files from $SITE"
  cd "$ROOT" && time AUTORESEARCH_CACHE=/tmp/cache-big python3 prepare.py --source /tmp/pycorpus
) > "$OUT/prep-big.log" 2>&1 &
BIG=$!
AUTORESEARCH_CACHE=/tmp/cache-small python3 prepare.py --source .corpus > "$OUT/prep-small.log" 2>&1

# --- GPU 1: the harness ------------------------------------------------------------------------
H=/tmp/harness; rm -rf "$H"; mkdir -p "$H"
cp -r prepare.py train.py pyproject.toml conftest.py program.md experiments pytest_autoresearch "$H/"
sed -i -E "s/^TIME_BUDGET = 300( |$)/TIME_BUDGET = $SHORT_BUDGET\1/" "$H/prepare.py"
grep -q "^TIME_BUDGET = $SHORT_BUDGET" "$H/prepare.py" || { echo "TIME_BUDGET edit failed" > "$OUT/harness.txt"; exit 1; }
(
  cd "$H" && export CUDA_VISIBLE_DEVICES=1 AUTORESEARCH_CACHE=/tmp/cache-small PYTHONPATH=$H:$PYTHONPATH
  P="python3 -m pytest -p pytest_autoresearch.plugin -p no:cacheprovider --autoresearch"
  cp train.py /tmp/train.default.py
  echo "== train-bpb: baseline"; $P experiments/train-bpb
  sed -i -E 's/^MATRIX_LR = 0.04( |$)/MATRIX_LR = 0.05\1/' train.py
  echo "== train-bpb: edit MATRIX_LR 0.04 -> 0.05"; AUTORESEARCH_DESCRIPTION="MATRIX_LR 0.04 -> 0.05" $P experiments/train-bpb
  cp /tmp/train.default.py train.py
  echo "== train-bpb-search until the deadline"
  timeout -s INT $((DEADLINE - SECONDS)) $P experiments/train-bpb-search --autoresearch-iterations 0
  echo "== done at ${SECONDS}s"
) > "$OUT/harness.txt" 2>&1 &
HARNESS=$!

# --- GPU 0: the full-budget run ----------------------------------------------------------------
wait $BIG
CUDA_VISIBLE_DEVICES=0 AUTORESEARCH_CACHE=/tmp/cache-big timeout $((DEADLINE - SECONDS + 20)) python3 train.py > "$OUT/full.log" 2>&1
echo "full run exit $? at ${SECONDS}s" >> "$OUT/full.log"
wait $HARNESS
tar -czf "$OUT/harness-work.tgz" -C "$H" work
