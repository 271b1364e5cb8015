"""Score SKILL.md against a fixed, deterministic rubric (0 to 1).

Usage: python experiments/skill-quality/score.py [path/to/SKILL.md]

The rubric is a weighted sum of independent checks, each worth 0..1:

  front_matter  0.10  YAML front matter (between `---` lines) with non-empty `name` and `description`
  sections      0.20  fraction of the required `## ` sections present (REQUIRED_SECTIONS)
  commands      0.15  fraction of the key commands/terms mentioned (REQUIRED_TERMS)
  code_blocks   0.10  fences balanced (else 0); min(1, blocks / 4)
  example       0.10  a ```yaml block that parses and is a task.yaml: artifacts, runner, scorer, only v1 keys
  length        0.10  word count in [400, 1600]; linear fall-off outside the band
  no_todo       0.10  no TODO / FIXME / XXX / TBD markers anywhere
  headings      0.05  one `# ` title, no skipped levels, no duplicate headings
  line_length   0.05  lines outside code blocks at most 120 characters; -0.25 per offending line
  paragraphs    0.05  no paragraph or list item over 80 words; -0.5 per rambling paragraph

Output: one `# ...` line explaining each check, then `<check>: <value>` (greppable, the engine records
every `key: number` line as a metric), then the final `score: <value>` line that task.yaml's scorer reads.
Nothing here depends on time, randomness or the environment: the same file always gets the same score.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# ---------------------------------------------------------------------------
# Rubric constants

REQUIRED_SECTIONS = {  # check name -> regex matched against `## ` headings (case-insensitive)
    "when to use": r"when to use",
    "quick start": r"quick ?start",
    "reading the output": r"reading the output",
    "results file": r"results",
    "writing a task": r"writing a task",
    "limits": r"limits",
    "the loop": r"loop|never stop",
    "troubleshooting": r"troubleshoot",
}
REQUIRED_TERMS = [
    "pytest --autoresearch",
    "--autoresearch-iterations",
    "task.yaml",
    "KEPT",
    "DISCARDED",
    "crash",
    "work/logs/",
    "work/results.jsonl",
    "python -m pytest_autoresearch.report",
    "AUTORESEARCH_DESCRIPTION_FILE",
    "never stop",
]
TASK_V1_KEYS = {"name", "description", "artifacts", "protected", "mutation", "mutator", "runner", "scorer", "policy"}
TASK_REQUIRED_KEYS = {"artifacts", "runner", "scorer"}
WORD_BAND = (400, 1600)
MIN_CODE_BLOCKS = 4
MAX_LINE_CHARS = 120
MAX_PARAGRAPH_WORDS = 80
TODO_RE = re.compile(r"\b(TODO|FIXME|XXX|TBD)\b")
FENCE_RE = re.compile(r"^\s*```")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
LIST_ITEM_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")

WEIGHTS = {
    "front_matter": 0.10,
    "sections": 0.20,
    "commands": 0.15,
    "code_blocks": 0.10,
    "example": 0.10,
    "length": 0.10,
    "no_todo": 0.10,
    "headings": 0.05,
    "line_length": 0.05,
    "paragraphs": 0.05,
}


@dataclass(frozen=True)
class Check:
    name: str
    value: float  # 0..1
    weight: float
    detail: str


# ---------------------------------------------------------------------------
# Parsing helpers (all of them ignore the content of fenced code blocks where it matters)


def split_front_matter(text: str) -> tuple[str | None, str]:
    """Return (front matter text or None, body)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, text
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i]), "\n".join(lines[i + 1 :])
    return None, text


def prose_lines(body: str) -> list[str]:
    """Lines outside fenced code blocks (fence lines themselves excluded)."""
    out, inside = [], False
    for line in body.splitlines():
        if FENCE_RE.match(line):
            inside = not inside
            continue
        if not inside:
            out.append(line)
    return out


def code_blocks(body: str) -> list[tuple[str, str]]:
    """(language tag, content) of every closed fenced block."""
    blocks, lang, buf, inside = [], "", [], False
    for line in body.splitlines():
        if FENCE_RE.match(line):
            if inside:
                blocks.append((lang, "\n".join(buf)))
            else:
                lang, buf = line.strip()[3:].strip().lower(), []
            inside = not inside
        elif inside:
            buf.append(line)
    return blocks


def headings(body: str) -> list[tuple[int, str]]:
    return [(len(m.group(1)), m.group(2)) for m in map(HEADING_RE.match, prose_lines(body)) if m]


def paragraphs(body: str) -> list[str]:
    """Prose paragraphs and list items; headings and blank lines separate them."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in prose_lines(body) + [""]:
        starts_new = not line.strip() or HEADING_RE.match(line) or LIST_ITEM_RE.match(line)
        if starts_new and current:
            out.append(current)
            current = []
        if line.strip() and not HEADING_RE.match(line):
            current.append(line)
    return [" ".join(p) for p in out]


# ---------------------------------------------------------------------------
# Checks: each returns (value in 0..1, detail)


def check_front_matter(text: str) -> tuple[float, str]:
    front, _ = split_front_matter(text)
    if front is None:
        return 0.0, "no front matter"
    try:
        meta = yaml.safe_load(front)
    except yaml.YAMLError:
        return 0.0, "front matter is not valid YAML"
    if not isinstance(meta, dict):
        return 0.0, "front matter is not a mapping"
    present = [k for k in ("name", "description") if isinstance(meta.get(k), str) and meta[k].strip()]
    return len(present) / 2, f"has {present or 'none'} of ['name', 'description']"


def check_sections(body: str) -> tuple[float, str]:
    titles = [title.lower() for level, title in headings(body) if level == 2]
    missing = [name for name, rx in REQUIRED_SECTIONS.items() if not any(re.search(rx, t) for t in titles)]
    value = 1 - len(missing) / len(REQUIRED_SECTIONS)
    return value, f"missing {missing}" if missing else "all required sections present"


def check_commands(body: str) -> tuple[float, str]:
    missing = [term for term in REQUIRED_TERMS if term not in body]
    value = 1 - len(missing) / len(REQUIRED_TERMS)
    return value, f"missing {missing}" if missing else "all key commands mentioned"


def check_code_blocks(body: str) -> tuple[float, str]:
    fences = sum(1 for line in body.splitlines() if FENCE_RE.match(line))
    if fences % 2:
        return 0.0, f"{fences} fence lines: unbalanced"
    n = fences // 2
    return min(1.0, n / MIN_CODE_BLOCKS), f"{n} code blocks (want >= {MIN_CODE_BLOCKS})"


def check_example(body: str) -> tuple[float, str]:
    for lang, content in code_blocks(body):
        if lang not in ("yaml", "yml"):
            continue
        try:
            task = yaml.safe_load(content)
        except yaml.YAMLError:
            continue
        if isinstance(task, dict) and TASK_REQUIRED_KEYS <= task.keys() and task.keys() <= TASK_V1_KEYS:
            return 1.0, "has a valid task.yaml example"
    return 0.0, "no ```yaml block with artifacts/runner/scorer and only v1 keys"


def check_length(text: str) -> tuple[float, str]:
    words = len(text.split())
    low, high = WORD_BAND
    if words < low:
        value = words / low
    elif words > high:
        value = max(0.0, 1 - (words - high) / high)
    else:
        value = 1.0
    return value, f"{words} words (band {low}..{high})"


def check_no_todo(text: str) -> tuple[float, str]:
    hits = TODO_RE.findall(text)
    return (0.0, f"{len(hits)} markers: {sorted(set(hits))}") if hits else (1.0, "no TODO markers")


def check_headings(body: str) -> tuple[float, str]:
    found = headings(body)
    problems = []
    if sum(1 for level, _ in found if level == 1) != 1:
        problems.append("want exactly one '# ' title")
    previous = 0
    for level, title in found:
        if level > previous + 1:
            problems.append(f"skipped level at {title!r}")
        previous = level
    titles = [title.lower() for _, title in found]
    if len(set(titles)) != len(titles):
        problems.append("duplicate headings")
    return (0.0, "; ".join(problems)) if problems else (1.0, "heading structure ok")


def check_line_length(body: str) -> tuple[float, str]:
    long_lines = sum(1 for line in prose_lines(body) if len(line) > MAX_LINE_CHARS)
    return max(0.0, 1 - 0.25 * long_lines), f"{long_lines} lines over {MAX_LINE_CHARS} chars"


def check_paragraphs(body: str) -> tuple[float, str]:
    rambling = sum(1 for p in paragraphs(body) if len(p.split()) > MAX_PARAGRAPH_WORDS)
    return max(0.0, 1 - 0.5 * rambling), f"{rambling} paragraphs over {MAX_PARAGRAPH_WORDS} words"


def run_checks(text: str) -> list[Check]:
    _, body = split_front_matter(text)
    results = {
        "front_matter": check_front_matter(text),
        "sections": check_sections(body),
        "commands": check_commands(body),
        "code_blocks": check_code_blocks(body),
        "example": check_example(body),
        "length": check_length(text),
        "no_todo": check_no_todo(text),
        "headings": check_headings(body),
        "line_length": check_line_length(body),
        "paragraphs": check_paragraphs(body),
    }
    return [Check(name, value, WEIGHTS[name], detail) for name, (value, detail) in results.items()]


def score_text(text: str) -> float:
    return round(sum(c.value * c.weight for c in run_checks(text)), 6)


# ---------------------------------------------------------------------------
# Script


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "SKILL.md"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    print(f"# rubric for {path.name}")
    for c in run_checks(text):
        print(f"# {c.name} (weight {c.weight:.2f}): {c.detail}")
        print(f"{c.name}: {c.value:.6f}")
    print("---")
    print(f"score: {score_text(text):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
