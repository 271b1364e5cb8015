"""policy.screen ({seconds: 100, noise_sd: 0.00068, promote_z: 0.5}): a shorter run first, and a full one only
for the candidates it finds promising.

Each candidate is first run for `seconds` (the runner is told through AUTORESEARCH_TIME_BUDGET and killed past
it plus runner.startup_allowance) and its score compared with the baseline's at the same budget; the baseline's
screen run is paid once per baseline and a keep's own screen run stands in for the next one (run.py). The
candidate is promoted to the policy's full runs when its gain, in standard errors of a difference of two screen
runs, z = gain / (noise_sd * sqrt(2)), reaches promote_z; otherwise it is discarded on the screen alone.

What the threshold promises: the screen never keeps anything (a keep needs the full runs' evidence, at the
policy's confidence), so false keeps stay as the policy states them. What it costs is power: a candidate whose
true gain at the screen's budget is g is screened out with probability Phi(promote_z - g / (noise_sd * sqrt 2)):
with promote_z 0.5, 69 % of no-effect candidates, and 18 % of those gaining 2 * sqrt(2) screen sds. Whether a
gain at the short budget is a gain at the full one (the two budgets' rank agreement) is the assumption the
research benchmark states (BENCHMARKS.md §13) and the GPU issue measures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KEYS = ("seconds", "noise_sd", "promote_z")
DEFAULT_PROMOTE_Z = 0.5
ENV = "AUTORESEARCH_TIME_BUDGET"  # the seconds a screen run may train; unset for a full run


@dataclass(frozen=True)
class Screen:
    seconds: float
    noise_sd: float  # one screen run's score sd, measured at `seconds` on the task's machine
    promote_z: float = DEFAULT_PROMOTE_Z

    def judge(self, baseline: float, candidate: float, direction: str) -> dict[str, Any]:
        """The screen's evidence on one candidate run against the baseline's, `promoted` among it; a score that
        is no finite number is never promoted."""
        sign = 1.0 if direction == "maximize" else -1.0
        gain = sign * (candidate - baseline)  # positive = better, whatever the direction
        z = gain / (self.noise_sd * math.sqrt(2.0)) if math.isfinite(gain) else -math.inf
        return {"test": "screen", "seconds": self.seconds, "baseline": baseline, "candidate": candidate,
                "gain": gain if math.isfinite(gain) else None, "z": z if math.isfinite(z) else None,
                "promote_z": self.promote_z, "promoted": z >= self.promote_z}


def build(spec: Any) -> Screen:
    """policy.screen from task.yaml; ValueError "policy.screen.<key>: why" on a bad value."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"policy.screen: must be a mapping with seconds and noise_sd, got {spec!r}")
    for key in spec:
        if key not in KEYS:
            raise ValueError(f"policy.screen.{key}: unknown key (expected one of: {', '.join(KEYS)})")
    values = {}
    for key, low in (("seconds", 0.0), ("noise_sd", 0.0)):
        if key not in spec:
            raise ValueError(f"policy.screen.{key}: missing (a screen needs seconds and the noise_sd at them)")
        values[key] = _number(spec[key], key, low)
    promote_z = _number(spec.get("promote_z", DEFAULT_PROMOTE_Z), "promote_z", None)
    return Screen(values["seconds"], values["noise_sd"], promote_z)


def _number(value: Any, key: str, above: float | None) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (above is not None and value <= above):
        bound = f" > {above:g}" if above is not None else ""
        raise ValueError(f"policy.screen.{key}: must be a finite number{bound}, got {value!r}")
    return float(value)
