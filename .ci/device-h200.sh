#!/usr/bin/env bash
# Issue 8 on one H200 (CI never runs this; BENCHMARKS.md §5 says how it was used). Runs the jobs named in
# $JOBS one after the other, on a corpus built once on the host, and logs each under OUT_DIR:
#   ours:NAME:BUDGET:cold|warm[:SETTINGS]   this repo's train.py in a copy whose TIME_BUDGET is BUDGET seconds;
#                                "cold" empties its compile caches first, "warm" keeps those of the last run;
#                                SETTINGS: comma-separated KEY=VALUE, a train.py constant to set (e.g.
#                                COMPILE_REGIONS=False), SEED=N for AUTORESEARCH_SEED, or TIMES=1 to print Dynamo's
#                                compile-phase timings after the run (dynamo_times:)
#   upstream:NAME:BUDGET:cold|warm[:SEED=N]   the same through .upstream/run.sh, a local, uncommitted copy of
#                                karpathy/autoresearch run offline (see BENCHMARKS.md §5), skipped if absent
#   profile[:NAME[:SETTINGS]]    tests/bench_step.py on the default config (or SETTINGS): step time, kernel breakdown;
#                                a SETTINGS entry I.key=value sets an Inductor option (e.g. I.prologue_fusion=False)
#   attention                    tests/bench_attention.py: the banded attention's methods, timed and checked
#   sealed:NAME:STEPS            tests/bench_sealed.py: STEPS steps of the default model, then its val_bpb in-process
#                                and from evaluate.py on the saved model.export, with the time each took
# Corpus: every .py file of the host's site-packages, split by file into train and a pinned val shard that
# holds more than EVAL_TOKENS (a third of the files, ~130 M chars), so val_bpb scores EVAL_TOKENS exactly as the upstream does.
# Usage: JOBS="ours:o-cold:10:cold ours:o-100:100:warm" bash .ci/device-h200.sh OUT_DIR   (carry .whl/)
#        JOBS="attention profile:p-whole:COMPILE_REGIONS=False" bash .ci/device-h200.sh OUT_DIR
set -u
OUT=${1:?usage: device-h200.sh OUT_DIR}; mkdir -p "$OUT"
ROOT=$PWD
export PYTHONUNBUFFERED=1 AUTORESEARCH_CACHE=/tmp/cache-big
if ! python3 -c "import rustbpe" 2>/dev/null; then   # the GPU image lacks rustbpe: install the carried wheel
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/rustbpe-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; nproc; } > "$OUT/host.txt"

if [ ! -f /tmp/cache-big/tokenizer/token_bytes.pt ]; then
  SECONDS_AT=$SECONDS
  python3 - <<'PY' > "$OUT/corpus.log" 2>&1
import hashlib, os, random, sysconfig
import pyarrow as pa, pyarrow.parquet as pq
site = sysconfig.get_paths()["purelib"]
train, val = [], []
for d, _, names in os.walk(site):
    for n in sorted(names):
        if n.endswith(".py"):
            p = os.path.join(d, n)
            try:
                text = open(p, encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                rel = os.path.relpath(p, site)
                (val if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 3 == 0 else train).append((rel, text))
for docs in (train, val):
    docs.sort()
    random.Random(1337).shuffle(docs)
os.makedirs("/tmp/pysrc", exist_ok=True)
pq.write_table(pa.table({"text": [t for _, t in train]}), "/tmp/pysrc/train.parquet")
pq.write_table(pa.table({"text": [t for _, t in val]}), "/tmp/pysrc/shard_val.parquet")
print(f"site-packages {site}: {len(train)} train files ({sum(len(t) for _, t in train)/1e6:.0f} M chars), "
      f"{len(val)} val files ({sum(len(t) for _, t in val)/1e6:.0f} M chars)")
PY
  python3 prepare.py --source /tmp/pysrc >> "$OUT/corpus.log" 2>&1 || { echo "corpus failed"; tail "$OUT/corpus.log"; exit 1; }
  echo "corpus built in $((SECONDS - SECONDS_AT)) s" >> "$OUT/corpus.log"
fi

copy_ours() {  # DIR BUDGET SETTINGS: prints the seed to use
  local dir=$1 seed=42 setting
  rm -rf "$dir"; mkdir -p "$dir/tests"; cp prepare.py evaluate.py train.py "$dir/"; cp tests/bench_*.py "$dir/tests/"
  sed -i -E "s/^TIME_BUDGET = 300( |$)/TIME_BUDGET = $2\1/" "$dir/prepare.py"
  for setting in ${3//,/ }; do
    case $setting in
      SEED=*) seed=${setting#SEED=} ;;
      TIMES=1) ;;
      *=*) grep -q "^${setting%%=*} = " "$dir/train.py" || { echo "no constant ${setting%%=*}" >&2; return 1; }
           sed -i -E "s/^(${setting%%=*}) = [^#]*/\1 = ${setting#*=}  /" "$dir/train.py" ;;
    esac
  done
  echo "$seed"
}

run_ours() {  # NAME BUDGET cold|warm SETTINGS
  local dir=/tmp/ours-$1 seed
  seed=$(copy_ours "$dir" "$2" "$4") || return 1
  [ "$3" = cold ] && rm -rf /tmp/cache-big/compile "${TORCHINDUCTOR_CACHE_DIR:-}" "${TRITON_CACHE_DIR:-}"
  local t0=$SECONDS
  local script=(train.py)   # TIMES=1: then Dynamo's own timings of its compile phases, after the summary
  # (the import of Dynamo before train.py would fix Inductor's cache folder at its /tmp default: name ours first)
  [[ ",$4," == *,TIMES=1,* ]] && export TORCHINDUCTOR_CACHE_DIR=/tmp/cache-big/compile/inductor && script=(-c "import runpy, torch._dynamo.utils as u; runpy.run_path('train.py', run_name='__main__'); print('dynamo_times:', u.compile_times(repr='str', aggregate=True))")
  (cd "$dir" && AUTORESEARCH_SEED=$seed python3 "${script[@]}") > "$OUT/$1.log" 2>&1
  echo "rc $? wall_seconds $((SECONDS - t0))" >> "$OUT/$1.log"
}

for job in ${JOBS:?set JOBS}; do
  IFS=: read -r side name budget caches settings <<< "$job"
  echo "== $job at ${SECONDS}s"
  case $side in
    ours) run_ours "$name" "$budget" "$caches" "$settings" ;;
    upstream) [ -x .upstream/run.sh ] && .upstream/run.sh "$name" "$budget" "$caches" "$OUT" "${settings#SEED=}" ;;
    profile)  # profile[:NAME[:SETTINGS]]: here the third field holds the settings
      # SETTINGS entries I.key=value are Inductor options (bench_step.py's BENCH_INDUCTOR), the rest train.py constants
      name=${name:-profile}; inductor=$(tr , '\n' <<< "$budget" | sed -n 's/^I\.//p' | paste -sd,)
      copy_ours "/tmp/ours-$name" 300 "$(tr , '\n' <<< "$budget" | grep -v '^I\.' | paste -sd,)" > /dev/null &&
        (cd "/tmp/ours-$name" && BENCH_INDUCTOR=$inductor PYTHONPATH=/tmp/ours-$name:$PYTHONPATH python3 tests/bench_step.py) > "$OUT/$name.log" 2>&1; echo "rc $?" >> "$OUT/$name.log" ;;
    sealed) copy_ours "/tmp/ours-$name" 300 "" > /dev/null &&
        (cd "/tmp/ours-$name" && python3 tests/bench_sealed.py "$budget") > "$OUT/$name.log" 2>&1; echo "rc $?" >> "$OUT/$name.log" ;;
    attention) name=attention; python3 tests/bench_attention.py > "$OUT/attention.log" 2>&1; echo "rc $?" >> "$OUT/attention.log" ;;
  esac
  grep -E "^(startup:|dynamo_times:|compile cache:|method:|step_ms:|kind:|inductor:|val_bpb|training_seconds|total_seconds|startup_seconds|eval_seconds|export_seconds|model_mb|peak_vram_mb|mfu_percent|num_steps|evaluation:|refused:|in_process|sealed|difference|evaluator_wall|rc )" "$OUT/$name.log" 2>/dev/null
done
echo "== done at ${SECONDS}s"
