"""Repo-relative globs, as task.yaml's artifacts and protected lists write them: `*` and `?` stay inside one path
component, `**` spans any number of folders, a trailing `/` means everything below that folder. (fnmatch lets `*`
cross `/`.)"""

from __future__ import annotations

import re

_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def glob_regex(glob: str) -> re.Pattern[str]:
    """Compiled (and cached) regex matching the repo-relative paths that `glob` names."""
    if glob not in _GLOB_CACHE:
        pattern = glob + "**" if glob.endswith("/") else glob
        out, i = [], 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
                body = pattern[i + 1:end]
                negated = body.startswith("!")
                # ranges like 0-9 stay ranges; only what regex classes treat specially is escaped; a class
                # never matches "/", so it stays within one folder like * and ?
                members = re.sub(r"([\\\]\[^])", r"\\\1", body[1:] if negated else body)
                out.append(f"[^/{members}]" if negated else f"(?!/)[{members}]")
                i = end + 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        # DOTALL: a file name may hold a newline, and `**` must still cover it (else `data/` would miss it)
        _GLOB_CACHE[glob] = re.compile("".join(out) + r"\Z", re.DOTALL)
    return _GLOB_CACHE[glob]
