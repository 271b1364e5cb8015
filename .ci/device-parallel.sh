#!/usr/bin/env bash
# The GPU measurements for issues 3 and 4 on a multi-GPU host (CI never runs this; see BENCHMARKS.md).
# Jobs run at the same time, each on its own GPUs; an empty variable skips its job:
#   SEED_RUNS="GPU:SEED ..."  issue 4: the default train.py for the full 300 s, one seed per GPU, on the
#                             host's site-packages .py corpus (the seed spread σ of val_bpb).
#   XDIST_GPUS="a,b"          issue 3: a greedy copy of train-bpb-search: one iteration alone (scores the
#                             baseline first), one more alone (baseline reused), then two with `-n 2`.
#   SEARCH_GPU=g[,h...]       issue 4: experiments/train-bpb-search (noise-aware, hparams mutator) until the
#                             deadline, `-n` one worker per GPU; it resumes from .devwork/search-work.tgz
#                             when that is carried (work/ and the workspace's train.py, which holds the keeps).
# The harness jobs run on copies of the repo whose TIME_BUDGET is $SHORT_BUDGET s (default 30).
# Usage: SEED_RUNS=... XDIST_GPUS=... SEARCH_GPU=... bash .ci/device-parallel.sh OUT_DIR
#        (carry .corpus/ = a copy of ../shared/corpus, .whl/ = the rustbpe wheel, and .devwork/ to resume)
set -u
OUT=${1:?usage: device-parallel.sh OUT_DIR}; mkdir -p "$OUT"
ROOT=$PWD
SHORT_BUDGET=${SHORT_BUDGET:-30}
DEADLINE=$((SECONDS + ${DEADLINE_S:-540}))   # end the open-ended search before the call's 600 s limit
export PYTHONUNBUFFERED=1
if ! python3 -c "import rustbpe" 2>/dev/null; then   # the GPU image lacks rustbpe: install the carried wheel
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/rustbpe-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__)"; date -u; } > "$OUT/gpus.txt"
PYTEST="python3 -m pytest -p pytest_autoresearch.plugin -p no:cacheprovider --autoresearch"
TIMEFORMAT="wall_s: %R"   # bash's own `time`: the image may lack /usr/bin/time

make_harness() {  # $1: a fresh copy of the repo with TIME_BUDGET shortened
  rm -rf "$1"; mkdir -p "$1"
  cp -r prepare.py train.py pyproject.toml conftest.py program.md experiments pytest_autoresearch "$1/"
  sed -i -E "s/^TIME_BUDGET = 300( |$)/TIME_BUDGET = $SHORT_BUDGET\1/" "$1/prepare.py"
  grep -q "^TIME_BUDGET = $SHORT_BUDGET" "$1/prepare.py"
}

seed_runs() {
  local site; site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  mkdir -p /tmp/pycorpus && (cd "$site" && find . -name '*.py' -print0 | tar --null -T - -cf - | tar -xf - -C /tmp/pycorpus)
  echo "corpus: $(du -sh /tmp/pycorpus | cut -f1) in $(find /tmp/pycorpus -name '*.py' | wc -l) .py files" > "$OUT/prep-big.log"
  AUTORESEARCH_CACHE=/tmp/cache-big python3 prepare.py --source /tmp/pycorpus >> "$OUT/prep-big.log" 2>&1 || return 1
  local run
  for run in $SEED_RUNS; do
    CUDA_VISIBLE_DEVICES=${run%%:*} AUTORESEARCH_SEED=${run##*:} AUTORESEARCH_CACHE=/tmp/cache-big \
      python3 train.py > "$OUT/full-seed${run##*:}.log" 2>&1 &
  done
  wait
}

xdist_job() {
  local h=/tmp/harness-xdist; make_harness $h || return 1
  mkdir -p $h/experiments/train-bpb-greedy   # greedy: one baseline run, so the parallel part is candidates only
  sed -e 's/^name: .*/name: train-bpb-greedy/' -e '/^policy:/,$d' $h/experiments/train-bpb-search/task.yaml \
    > $h/experiments/train-bpb-greedy/task.yaml
  printf 'policy:\n  kind: greedy\n  min_delta: 0.0\n' >> $h/experiments/train-bpb-greedy/task.yaml
  (
    cd $h && export CUDA_VISIBLE_DEVICES=$XDIST_GPUS PYTHONPATH=$h:$PYTHONPATH
    echo "== one iteration alone (scores the baseline first)"; time $PYTEST experiments/train-bpb-greedy
    echo "== one iteration alone (baseline reused)"; time $PYTEST experiments/train-bpb-greedy
    echo "== two iterations, -n 2"; time $PYTEST experiments/train-bpb-greedy -n 2 --autoresearch-iterations 2 -v
  ) > "$OUT/xdist.txt" 2>&1
  tar -czf "$OUT/xdist-work.tgz" -C $h work
}

search_job() {
  local h=/tmp/harness-search; make_harness $h || return 1
  [ -f .devwork/search-work.tgz ] && tar -xzf .devwork/search-work.tgz -C $h
  local workers; workers=$(echo "$SEARCH_GPU" | tr ',' ' ' | wc -w)
  [ "$workers" -gt 1 ] && workers="-n $workers" || workers=""
  (
    cd $h && export CUDA_VISIBLE_DEVICES=$SEARCH_GPU PYTHONPATH=$h:$PYTHONPATH
    echo "== train-bpb-search until the deadline (records so far: $(cat work/results.jsonl 2>/dev/null | wc -l))"
    timeout -s INT -k 40 $((DEADLINE - SECONDS)) $PYTEST experiments/train-bpb-search --autoresearch-iterations 0 $workers
    echo "== done at ${SECONDS}s"
  ) > "$OUT/search.txt" 2>&1
  tar -czf "$OUT/search-work.tgz" -C $h work train.py
}

# the small corpus for the harness jobs, once, before they start
if [ -n "${XDIST_GPUS:-}${SEARCH_GPU:-}" ]; then
  AUTORESEARCH_CACHE=/tmp/cache-small python3 prepare.py --source .corpus > "$OUT/prep-small.log" 2>&1 || exit 1
fi
export AUTORESEARCH_CACHE=/tmp/cache-small
[ -n "${SEED_RUNS:-}" ] && seed_runs &
[ -n "${XDIST_GPUS:-}" ] && xdist_job &
[ -n "${SEARCH_GPU:-}" ] && search_job &
wait
echo "== summary at ${SECONDS}s"
grep -H -E "^(val_bpb|mfu_percent|peak_vram_mb|startup_seconds|total_seconds|num_steps):" "$OUT"/full-seed*.log 2>/dev/null
grep -h -E "^(== |wall_s:)|KEPT|DISCARDED|PASSED|FAILED" "$OUT/xdist.txt" 2>/dev/null | tail -20
tail -5 "$OUT/search.txt" 2>/dev/null
