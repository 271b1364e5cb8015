"""Records the engine wrote, told apart from lines anyone else appended to results.jsonl.

Each record the engine appends ends with `"sig": "<hex>"`, an HMAC-SHA256 of the line's text before it under a
key kept beside the results file (`<results>.key`, mode 0600, made when the engine first uses the file). A line
without a valid signature (a mutator's forgery, an edit by hand) is ignored, and so is a signed line repeated.
The lines the file already held when its key was made were written before signatures existed: they count as
the engine's (the key file says how many bytes that is).

The key is a file like the results: it keeps out a command that writes the results file but never reads the
key. A command running as the same user without isolation can read it (USAGE's trust model says so); under
`isolation: bwrap` the key is hidden with the rest of the storage.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

from .errors import naming
from .files import temp_prefix

SIGNED = re.compile(rb'^(\{.*), "sig": "([0-9a-f]{32})"\}$')


class Signer:
    def __init__(self, results: Path, create: bool = True) -> None:
        self.results = Path(results)
        self.create = create  # False for readers only (the report): no key, then every record counts
        self.path = Path(str(results) + ".key")
        self._key: tuple[bytes, int] | None = None

    def key(self) -> tuple[bytes, int] | None:
        """(the key, how many leading bytes of the results file predate it); made now, adopting what the file
        holds, when there is none (a reader that may not create one gets None: every record counts then)."""
        if self._key is None:
            if not self.path.exists():
                if not self.create:
                    return None
                self._make()
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._key = (bytes.fromhex(data["key"]), int(data["adopted_bytes"]))
        return self._key

    def _make(self) -> None:
        """Write a new key, unless another process got there first (a hard link never replaces a file: the
        first key made stays the one every worker signs with)."""
        adopted = self.results.stat().st_size if self.results.exists() else 0
        tmp = self.path.with_name(temp_prefix(self.path) + "key.tmp")
        with naming(self.path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"key": secrets.token_hex(32), "adopted_bytes": adopted}, f)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass
            finally:
                tmp.unlink(missing_ok=True)

    def sign(self, text: str) -> str:
        """A record's JSON text (one object) with its signature as the last key."""
        key, _ = self.key()
        return f'{text[:-1]}, "sig": "{_mac(key, text.encode("utf-8"))}"}}'


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()[:32]


def verified(key: tuple[bytes, int] | None, offset: int, line: bytes, seen: set[bytes]) -> bytes | None:
    """The record's text without its signature when the engine wrote this line (at `offset` of the file), else
    None. `seen` collects the signatures met so far: a signed line copied again is no new record."""
    if key is None:
        return line
    secret, adopted = key
    found = SIGNED.match(line)
    if found is None:
        return line if offset + len(line) <= adopted else None
    body, signature = found.group(1) + b"}", found.group(2)
    if signature in seen or not hmac.compare_digest(_mac(secret, body).encode(), signature):
        return None
    seen.add(signature)
    return body
