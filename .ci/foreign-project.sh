#!/usr/bin/env bash
# CI: the pytest-autoresearch wheel alone, installed into a fresh venv of another project, runs a task of
# that project's own, and brings no torch. Usage: bash .ci/foreign-project.sh   (needs uv; uses PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
uv build -q --wheel -o "$tmp/dist" .
project=$tmp/other-project
mkdir -p "$project/experiments/tune"
uv venv -q "$project/.venv"
uv pip install -q --python "$project/.venv/bin/python" "$tmp"/dist/pytest_autoresearch-*.whl
cd "$project"
git init -q && git config user.email ci@example.invalid && git config user.name ci
printf '3\n' > params.txt
cat > experiments/tune/mutate.py <<'PY'
from pathlib import Path
p = Path("params.txt")
p.write_text(f"{int(p.read_text()) + 1}\n")
PY
cat > experiments/tune/score.py <<'PY'
from pathlib import Path
print(f"score: {-abs(int(Path('params.txt').read_text()) - 5)}")
PY
cat > experiments/tune/task.yaml <<'YAML'
name: tune
artifacts: [params.txt]
protected: [experiments/tune/score.py]
mutator: {command: python experiments/tune/mutate.py, timeout: 60}
runner: {command: python experiments/tune/score.py, timeout: 60, gpus: 0}
scorer: {metric: score, pattern: '^score:\s*(\S+)', direction: maximize}
policy: {kind: greedy}
YAML
git add -A && git commit -qm "a project of its own"
.venv/bin/python -m pytest --autoresearch experiments/tune --autoresearch-iterations 2 -q -p no:cacheprovider | tee "$tmp/out"
grep -q "2 kept" "$tmp/out"
test "$(cat params.txt)" = 5   # two keeps: 3 -> 4 -> 5
if .venv/bin/python -c "import torch" 2>/dev/null; then echo "torch came with the wheel" >&2; exit 1; fi
echo "foreign project: ok, no torch"
