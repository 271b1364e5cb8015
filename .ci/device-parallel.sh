#!/usr/bin/env bash
# The GPU measurements still open after 2026-11-27 (CI never runs this; see BENCHMARKS.md).
#   MODE=xdist: issue 3 on a 2-GPU host: one harness iteration alone, then two with `-n 2`, each
#               worker on its own GPU; compare the wall times. TIME_BUDGET shortened to $SHORT_BUDGET s.
#   MODE=sigma: issue 4: the default train.py for the full 300 s on both GPUs at once, seeds
#               $SEEDS (two per call), on the site-packages corpus; run twice for 4 seeds.
# Usage: MODE=xdist|sigma bash .ci/device-parallel.sh OUT_DIR   (carry .corpus/ and .whl/ as for device-acceptance.sh)
set -u
OUT=${1:?usage: device-parallel.sh OUT_DIR}; mkdir -p "$OUT"
ROOT=$PWD
export PYTHONUNBUFFERED=1
if ! python3 -c "import rustbpe" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/rustbpe-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$OUT/gpus.txt"

case "${MODE:-xdist}" in
xdist)
  SHORT_BUDGET=${SHORT_BUDGET:-60}
  AUTORESEARCH_CACHE=/tmp/cache-small python3 prepare.py --source .corpus > "$OUT/prep.log" 2>&1
  H=/tmp/harness; rm -rf "$H"; mkdir -p "$H"
  cp -r prepare.py train.py pyproject.toml conftest.py program.md experiments pytest_autoresearch "$H/"
  sed -i -E "s/^TIME_BUDGET = 300( |$)/TIME_BUDGET = $SHORT_BUDGET\1/" "$H/prepare.py"
  # a greedy variant of train-bpb-search: one baseline run, so the parallel part is the candidates only
  mkdir -p "$H/experiments/train-bpb-greedy"
  sed -e 's/^name: .*/name: train-bpb-greedy/' -e '/^policy:/,$d' "$H/experiments/train-bpb-search/task.yaml" \
    > "$H/experiments/train-bpb-greedy/task.yaml"
  printf 'policy:\n  kind: greedy\n  min_delta: 0.0\n' >> "$H/experiments/train-bpb-greedy/task.yaml"
  (
    cd "$H" && export AUTORESEARCH_CACHE=/tmp/cache-small PYTHONPATH=$H:$PYTHONPATH
    P="python3 -m pytest -p pytest_autoresearch.plugin -p no:cacheprovider --autoresearch experiments/train-bpb-greedy"
    TIMEFORMAT="wall_s: %R"   # bash's own `time`: the image may lack /usr/bin/time
    echo "== one iteration alone (scores the baseline first)"; time $P
    echo "== one iteration alone (baseline reused)"; time $P
    echo "== two iterations, -n 2"; time $P -n 2 --autoresearch-iterations 2 -v
  ) > "$OUT/harness.txt" 2>&1
  tar -czf "$OUT/harness-work.tgz" -C "$H" work
  ;;
sigma)
  SEEDS=${SEEDS:-"42 43"}
  SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  mkdir -p /tmp/pycorpus && (cd "$SITE" && find . -name '*.py' -print0 | tar --null -T - -cf - | tar -xf - -C /tmp/pycorpus)
  AUTORESEARCH_CACHE=/tmp/cache-big python3 prepare.py --source /tmp/pycorpus > "$OUT/prep.log" 2>&1
  gpu=0
  for seed in $SEEDS; do
    CUDA_VISIBLE_DEVICES=$gpu AUTORESEARCH_SEED=$seed AUTORESEARCH_CACHE=/tmp/cache-big \
      python3 train.py > "$OUT/full-seed$seed.log" 2>&1 &
    gpu=$((gpu + 1))
  done
  wait
  grep -H "^val_bpb:" "$OUT"/full-seed*.log
  ;;
esac
