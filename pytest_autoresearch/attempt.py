"""What the worker side of an iteration hands to its decision: everything the steps measured (sandbox, candidate,
change set, scores), as one value of plain data. It crosses processes as JSON: under xdist a worker attaches it
to its report and the controller decides, lands and records it (landing.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .sandbox import Content
from .workspace import decode_contents, encode_contents


@dataclass(frozen=True)
class Attempt:
    task_file: str  # the task.yaml (absolute): the controller loads the task from it
    task: str
    iteration: int
    started_at: str  # ISO 8601, UTC
    worker: str
    log: str | None
    description: str = ""
    status: str | None = None  # set when a step ended the iteration before the policy's verdict (errors.Ended)
    reason: str = ""
    baseline_hash: str | None = None
    baseline_scores: tuple[float, ...] = ()
    baseline_from: str | None = None
    new_baseline: dict[str, Any] | None = None  # the baseline's record, when these runs scored it and it lands here
    candidate_hash: str | None = None  # set once the candidate was read: from then on it has a change set
    files_changed: int = 0
    lines_changed: int = 0
    changes: dict[str, Content | None] = field(default_factory=dict)  # each changed path's new content (None: deleted)
    before: dict[str, Content | None] = field(default_factory=dict)  # the baseline's content of those paths
    scores: tuple[float, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    mutator_s: float = 0.0
    runner_s: float = 0.0
    gpu_wait_s: float = 0.0
    duration_s: float = 0.0
    noise: dict[str, float] | None = None  # the history's pooled noise the runs were judged with (noise.Noise)
    early_stop: dict[str, Any] | None = None  # policy.early_stop's evidence, when it stopped the last run
    screen: dict[str, Any] | None = None  # policy.screen's evidence (screen.Screen.judge), when it screened
    workspace: bool = False  # mutator: workspace, the candidate is the workspace itself
    snapshot: tuple[dict[str, Content], dict[str, str], str | None] | None = None  # workspace: a keep's new baseline
    node: str | None = None  # the Ray node that made it (ray_executor.py); None: this machine
    protected: dict[str, str] | None = None  # the workspace's protected files as it began, checked (guard.py)
    head: str | None = None  # git HEAD as it began, with them; both None: made where nothing was checked

    def to_data(self) -> dict[str, Any]:
        data = asdict(self)
        data["changes"], data["before"] = encode_contents(self.changes), encode_contents(self.before)
        if self.snapshot is not None:
            files, protected, head = self.snapshot
            data["snapshot"] = [encode_contents(files), protected, head]
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Attempt:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["changes"], values["before"] = decode_contents(data["changes"]), decode_contents(data["before"])
        values["baseline_scores"], values["scores"] = tuple(data["baseline_scores"]), tuple(data["scores"])
        if data.get("snapshot") is not None:
            files, protected, head = data["snapshot"]
            values["snapshot"] = (decode_contents(files), protected, head)
        return cls(**values)
