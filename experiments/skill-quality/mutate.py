"""Propose one change to SKILL.md: through an agent CLI, or with a seeded rule-based editor.

Usage: python experiments/skill-quality/mutate.py [path/to/SKILL.md]   (default: SKILL.md beside this file)

Agent mode (AUTORESEARCH_AGENT_CMD is set): the command runs through the shell, in the current
directory (the sandbox root), with the engine's environment plus
  AUTORESEARCH_SKILL_FILE     absolute path of the SKILL.md to edit
  AUTORESEARCH_PROMPT_FILE    a prompt file written by this script: the engine's prompt (if any), the
                              task, the rubric location, the limits and the recent history
  AUTORESEARCH_PROMPT         the same prompt as text
e.g. AUTORESEARCH_AGENT_CMD='claude -p "$(cat "$AUTORESEARCH_PROMPT_FILE")" --allowedTools Edit'.
Its exit status becomes ours. If it wrote no description, we write one from the diff.

Rule-based mode (default): a deterministic editor. The random generator is seeded from
AUTORESEARCH_SEED and AUTORESEARCH_ITERATION (whichever are set; both are folded in so that a fixed
base seed still gives a different edit each iteration). It shuffles a library of edits, some that
should raise the rubric score and some that should lower it, and applies the first one that applies
and stays within AUTORESEARCH_MAX_LINES changed lines (default 40). So over a few iterations both
keeps and discards occur. The one-line description goes to AUTORESEARCH_DESCRIPTION_FILE.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

DEFAULT_MAX_LINES = 40
HISTORY_RECORDS = 8  # how many recent results the agent prompt shows
FENCE_RE = re.compile(r"^\s*```")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
TODO_RE = re.compile(r"\b(TODO|FIXME|XXX|TBD)\b")
MAX_PARAGRAPH_WORDS = 80  # mirrors score.py's rambling threshold
SHORTENED_PARAGRAPH_WORDS = 70

# ---------------------------------------------------------------------------
# Text the constructive edits insert

RESULTS_SECTION = """\
## Results file

Every iteration appends one JSON object to `work/results.jsonl` (`--autoresearch-results PATH`
moves it). The fields you will use most:

- `task`, `iteration` (0 is the baseline) and `status`: `baseline`, `keep`, `discard`, `crash`,
  `rejected` or `interrupted`.
- `score` (the mean when the policy repeats runs), `scores`, `baseline_score`, `direction`.
- `description`: the mutator's one-line summary; `reason`: why the policy decided as it did.
- `log`: the run's log file; `metrics`: every `key: number` line the runner printed.

Before choosing the next idea, look at the last decisions:

```bash
python -m pytest_autoresearch.report
jq -r '[.iteration, .status, .score, .description] | @tsv' work/results.jsonl | tail -n 10
```
"""

TROUBLESHOOTING_SECTION = """\
## Troubleshooting

- Every iteration is a `crash`: run the runner by hand in your workspace (for example
  `python experiments/skill-quality/score.py`) and fix the baseline first.
- A `crash` with a clean log: the runner printed no line matching `scorer.pattern`. Test the
  pattern on the log with `grep -E`.
- `rejected`: read the record's `reason`. Usually an edit outside `artifacts` or over `max_lines`.
- Nothing is ever kept: the changes may be smaller than the run-to-run noise. Try bolder changes,
  or the `noise-aware` policy with `repeats: 3`.
- A run hangs: `runner.timeout` kills it and records a `crash`; lower the timeout.
"""

ITERATIONS_NOTE = """\

Add `--autoresearch-iterations N` to stop after N iterations (0 runs until interrupted), and
`-n 4` (pytest-xdist) to run four workers side by side.
"""

TASK_EXAMPLE = """\

```yaml
artifacts:
  - experiments/my-task/notes.md
runner:
  command: python experiments/my-task/score.py
  timeout: 60
scorer:
  metric: score
  pattern: '^score:\\s*(\\S+)'
  direction: maximize
```
"""

RAMBLE = """\

It is also worth keeping in mind, more or less at all times and in pretty much every situation
that might come up, that there are many different things that could in principle be tried, and
that some of them might work while others might not, which is something that is generally hard to
know in advance, so it is usually a good idea to think about it carefully and at some length
before doing anything at all, and then to think about it again afterwards as well, just in case.
"""

# ---------------------------------------------------------------------------
# Helpers over lines (fenced code blocks are never mistaken for headings)


def heading_index(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line number, level, title) of every heading outside fenced code blocks."""
    out, inside = [], False
    for i, line in enumerate(lines):
        if FENCE_RE.match(line):
            inside = not inside
        elif not inside and (m := HEADING_RE.match(line)):
            out.append((i, len(m.group(1)), m.group(2)))
    return out


def sections(lines: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, title) of every `## ` section; end is exclusive."""
    starts = [(i, title) for i, level, title in heading_index(lines) if level == 2]
    bounds = [i for i, level, _ in heading_index(lines) if level <= 2] + [len(lines)]
    return [(i, min(b for b in bounds if b > i), title) for i, title in starts]


def find_section(lines: list[str], pattern: str) -> tuple[int, int, str] | None:
    return next((s for s in sections(lines) if re.search(pattern, s[2], re.I)), None)


def insert_section(text: str, section: str, after: str | None) -> str:
    """Insert a `## ` section after the section whose title matches `after` (else at the end)."""
    lines = text.splitlines()
    found = find_section(lines, after) if after else None
    at = found[1] if found else len(lines)
    block = section.rstrip("\n").splitlines()
    if at > 0 and lines[at - 1].strip():
        block = [""] + block
    if at < len(lines):
        block = block + [""]
    return "\n".join(lines[:at] + block + lines[at:]) + "\n"


def front_matter_end(lines: list[str]) -> int:
    """Index of the first line after the YAML front matter (0 when there is none)."""
    if lines and lines[0].strip() == "---":
        closing = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if closing is not None:
            return closing + 1
    return 0


def paragraphs(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) of prose paragraphs outside code blocks: no headings, lists or fences."""
    out, start, inside = [], None, False
    body_start = front_matter_end(lines)
    for i, line in enumerate(lines + [""]):
        fence = bool(FENCE_RE.match(line))
        inside ^= fence
        is_prose = i >= body_start and bool(line.strip()) and not (fence or inside or HEADING_RE.match(line))
        is_prose = is_prose and not re.match(r"^\s*(?:[-*+]|\d+[.)])\s+|^\s", line)
        if is_prose and start is None:
            start = i
        elif not is_prose and start is not None:
            out.append((start, i))
            start = None
    return out


def wrap(words: list[str], width: int = 100) -> list[str]:
    out, current = [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return out + [current] if current else out


# ---------------------------------------------------------------------------
# The edit library: each takes (text, rng) and returns (new text, description) or None if it does not apply


def fix_skipped_heading(text: str, rng: random.Random):
    lines, previous = text.splitlines(), 0
    for i, level, title in heading_index(lines):
        if level > previous + 1:
            new_level = 2 if previous <= 2 else previous + 1
            lines[i] = "#" * new_level + " " + title
            return "\n".join(lines) + "\n", f"fix heading level of {title!r} ({'#' * level} -> {'#' * new_level})"
        previous = level
    return None


def add_results_section(text: str, rng: random.Random):
    if find_section(text.splitlines(), r"results"):
        return None
    new = insert_section(text, RESULTS_SECTION, r"reading the output")
    return new, "add missing 'Results file' section (work/results.jsonl fields, report command)"


def add_troubleshooting_section(text: str, rng: random.Random):
    if find_section(text.splitlines(), r"troubleshoot"):
        return None
    return insert_section(text, TROUBLESHOOTING_SECTION, None), "add missing 'Troubleshooting' section"


def remove_todo(text: str, rng: random.Random):
    lines = text.splitlines()
    hit = next((i for i, line in enumerate(lines) if TODO_RE.search(line)), None)
    if hit is None:
        return None
    removed = lines.pop(hit)
    if hit < len(lines) and not lines[hit].strip() and (hit == 0 or not lines[hit - 1].strip()):
        lines.pop(hit)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n", f"remove TODO marker line {removed.strip()[:50]!r}"


def shorten_rambling_paragraph(text: str, rng: random.Random):
    lines = text.splitlines()
    long = [(s, e) for s, e in paragraphs(lines) if len(" ".join(lines[s:e]).split()) > MAX_PARAGRAPH_WORDS]
    if not long:
        return None
    start, end = long[0]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(line.strip() for line in lines[start:end]))
    kept: list[str] = []
    for sentence in sentences:
        if kept and len(" ".join(kept + [sentence]).split()) > SHORTENED_PARAGRAPH_WORDS:
            break
        kept.append(sentence)
    words = " ".join(kept).split()[:SHORTENED_PARAGRAPH_WORDS]
    lines[start:end] = wrap(words)
    return "\n".join(lines) + "\n", f"shorten rambling paragraph at line {start + 1} to {len(words)} words"


def mention_iterations_flag(text: str, rng: random.Random):
    if "--autoresearch-iterations" in text:
        return None
    lines, inside = text.splitlines(), False
    for i, line in enumerate(lines):
        if FENCE_RE.match(line):
            if inside:
                lines[i + 1 : i + 1] = ITERATIONS_NOTE.rstrip("\n").splitlines()
                return "\n".join(lines) + "\n", "mention --autoresearch-iterations and -n after the quick start"
            inside = True
    return None


def add_task_example(text: str, rng: random.Random):
    if re.search(r"^\s*```ya?ml\s*$", text, re.M):
        return None
    found = find_section(text.splitlines(), r"writing a task")
    if not found:
        return None
    lines = text.splitlines()
    lines[found[0] + 1 : found[0] + 1] = TASK_EXAMPLE.rstrip("\n").splitlines()
    return "\n".join(lines) + "\n", "add a minimal task.yaml example to 'Writing a task'"


def delete_section(text: str, rng: random.Random):
    candidates = sections(text.splitlines())
    if not candidates:
        return None
    start, end, title = rng.choice(candidates)
    lines = text.splitlines()
    del lines[start:end]
    return "\n".join(lines).rstrip("\n") + "\n", f"delete section {title!r}"


def insert_todo(text: str, rng: random.Random):
    candidates = sections(text.splitlines())
    if not candidates:
        return None
    start, _, title = rng.choice(candidates)
    lines = text.splitlines()
    lines[start + 1 : start + 1] = ["", "TODO: expand this section with a worked example."]
    return "\n".join(lines) + "\n", f"insert a TODO note under {title!r}"


def remove_code_block(text: str, rng: random.Random):
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if FENCE_RE.match(line)]
    blocks = [(fences[k], fences[k + 1]) for k in range(0, len(fences) - 1, 2)]
    if not blocks:
        return None
    start, end = rng.choice(blocks)
    language = lines[start].strip()[3:] or "plain"
    del lines[start : end + 1]
    return "\n".join(lines) + "\n", f"remove a {language} code block at line {start + 1}"


def add_rambling_paragraph(text: str, rng: random.Random):
    candidates = sections(text.splitlines())
    if not candidates:
        return None
    _, end, title = rng.choice(candidates)
    lines = text.splitlines()
    block = RAMBLE.rstrip("\n").splitlines()
    lines[end:end] = block[1:] + [""] if end < len(lines) else block
    return "\n".join(lines) + "\n", f"add a discursive paragraph to {title!r}"


def drop_front_matter_description(text: str, rng: random.Random):
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i in range(1, front_matter_end(lines)):
        if lines[i].startswith("description:"):
            del lines[i]
            return "\n".join(lines) + "\n", "drop the front matter description"
    return None


def join_paragraph_lines(text: str, rng: random.Random):
    lines = text.splitlines()
    candidates = [(s, e) for s, e in paragraphs(lines) if e - s >= 2 and len(" ".join(lines[s:e])) > 120]
    if not candidates:
        return None
    start, end = rng.choice(candidates)
    lines[start:end] = [" ".join(line.strip() for line in lines[start:end])]
    return "\n".join(lines) + "\n", f"unwrap the paragraph at line {start + 1} into one line"


EDITS: list[Callable[[str, random.Random], tuple[str, str] | None]] = [
    fix_skipped_heading,
    add_results_section,
    add_troubleshooting_section,
    remove_todo,
    shorten_rambling_paragraph,
    mention_iterations_flag,
    add_task_example,
    delete_section,
    insert_todo,
    remove_code_block,
    add_rambling_paragraph,
    drop_front_matter_description,
    join_paragraph_lines,
]


def changed_lines(old: str, new: str) -> int:
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
    return sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))


def rule_based_edit(text: str, seed: int, max_lines: int = DEFAULT_MAX_LINES) -> tuple[str, str] | None:
    """Apply the first applicable edit, in seeded order, that changes 1..max_lines lines."""
    rng = random.Random(seed)
    order = EDITS[:]
    rng.shuffle(order)
    for edit in order:
        result = edit(text, rng)
        if result and 0 < changed_lines(text, result[0]) <= max_lines:
            return result
    return None


def seed_from_env(env: dict[str, str]) -> int:
    parts = [int(env[k]) for k in ("AUTORESEARCH_SEED", "AUTORESEARCH_ITERATION") if env.get(k, "").strip()]
    return parts[0] * 1_000_003 + parts[1] if len(parts) == 2 else (parts[0] if parts else 0)


# ---------------------------------------------------------------------------
# Agent mode


def recent_history(results: str | None, task: str | None) -> list[str]:
    if not results or not Path(results).is_file():
        return []
    rows = []
    for line in Path(results).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (task is None or record.get("task") == task):
            rows.append(f"- {record.get('status')}  score={record.get('score')}  {record.get('description', '')}")
    return rows[-HISTORY_RECORDS:]


def build_prompt(skill: Path, env: dict[str, str]) -> str:
    parts = []
    program = env.get("AUTORESEARCH_PROMPT_FILE")
    if program and Path(program).is_file():
        parts.append(Path(program).read_text(encoding="utf-8").strip())
    score_script = Path(__file__).resolve().parent / "score.py"
    parts.append(
        f"Improve {skill} (a skill document for AI agents using the autoresearch harness) so that it scores\n"
        f"higher on the rubric in {score_script} (run `python {score_script} {skill}` to see every check).\n"
        f"Make ONE focused change, to that file only, of at most {env.get('AUTORESEARCH_MAX_LINES', DEFAULT_MAX_LINES)} "
        f"changed lines. Keep it genuinely useful to a reader, not just to the rubric.\n"
        f"Current baseline score: {env.get('AUTORESEARCH_BASELINE_SCORE', 'unknown')}.\n"
        f"When done, write a one-line description of your change to {env.get('AUTORESEARCH_DESCRIPTION_FILE', '(none)')}."
    )
    history = recent_history(env.get("AUTORESEARCH_RESULTS"), env.get("AUTORESEARCH_TASK"))
    if history:
        parts.append("Recent iterations (do not retry a discarded idea unchanged):\n" + "\n".join(history))
    return "\n\n".join(parts) + "\n"


def run_agent(command: str, skill: Path, env: dict[str, str]) -> int:
    prompt = build_prompt(skill, env)
    before = skill.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="skill-quality-") as tmp:
        prompt_file = Path(tmp) / "prompt.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        agent_env = {
            **env,
            "AUTORESEARCH_SKILL_FILE": str(skill),
            "AUTORESEARCH_PROMPT_FILE": str(prompt_file),
            "AUTORESEARCH_PROMPT": prompt,
        }
        status = subprocess.run(command, shell=True, env=agent_env, stdin=subprocess.DEVNULL).returncode
    description_file = env.get("AUTORESEARCH_DESCRIPTION_FILE")
    if description_file and not (Path(description_file).is_file() and Path(description_file).read_text().strip()):
        after = skill.read_text(encoding="utf-8") if skill.is_file() else ""
        agent = command.split()[0] if command.split() else "agent"
        write_description(description_file, f"{agent} edit: {changed_lines(before, after)} lines changed in {skill.name}")
    return status


# ---------------------------------------------------------------------------
# Entry point


def write_description(path: str | None, description: str) -> None:
    if path:
        Path(path).write_text(description.strip().splitlines()[0] + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    skill = (Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "SKILL.md").resolve()
    if not skill.is_file():
        print(f"error: {skill} not found", file=sys.stderr)
        return 1
    command = env.get("AUTORESEARCH_AGENT_CMD", "").strip()
    if command:
        return run_agent(command, skill, env)
    try:
        seed = seed_from_env(env)
        max_lines = int(env.get("AUTORESEARCH_MAX_LINES") or DEFAULT_MAX_LINES)
    except ValueError as exc:
        print(f"error: AUTORESEARCH_SEED / AUTORESEARCH_ITERATION / AUTORESEARCH_MAX_LINES must be integers: {exc}", file=sys.stderr)
        return 1
    text = skill.read_text(encoding="utf-8")
    result = rule_based_edit(text, seed, max_lines)
    if result is None:
        print(f"error: no edit applies to {skill} within {max_lines} lines", file=sys.stderr)
        return 1
    new_text, description = result
    tmp = skill.with_name(skill.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    os.replace(tmp, skill)
    write_description(env.get("AUTORESEARCH_DESCRIPTION_FILE"), description)
    print(f"mutate: seed {seed}: {description}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
