"""Shared fixtures: `research` (a real inner `pytest --autoresearch` session in pytester's folder), and a tiny
prepared cache (data shards + tokenizer) built from generated documents, so that every test runs on a fresh
clone with nothing beside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoresearch_helpers import REPO_ROOT, plugin_args
from generated_corpus import generated_documents

TINY_TRAIN_ROWS = 300
TINY_VAL_ROWS = 200
TINY_VOCAB_SIZE = 512


@pytest.fixture
def research(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Run `pytest --autoresearch ...` in process inside pytester's folder (its own rootdir)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini("[pytest]\n")  # pin the rootdir to the tmp repo

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess(*plugin_args(), "--autoresearch", "-p", "no:cacheprovider", *args)
    return run


@pytest.fixture
def commit_all(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """commit_all(message): `git init` pytester's folder (once) and commit everything in it, as t <t@t>, the
    identity the inner session's --autoresearch-commit uses too."""
    for key in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{key}_NAME", "t")
        monkeypatch.setenv(f"GIT_{key}_EMAIL", "t@t")

    def commit(message: str) -> None:
        if not (pytester.path / ".git").exists():
            assert subprocess.run(["git", "init", "-q"], cwd=pytester.path).returncode == 0
        for args in (["add", "-A"], ["commit", "-qm", message]):
            assert subprocess.run(["git", *args], cwd=pytester.path, capture_output=True).returncode == 0
    return commit


def write_corpus_slice(dest: Path, train_rows: int = TINY_TRAIN_ROWS, val_rows: int = TINY_VAL_ROWS) -> Path:
    """A --source folder of generated documents: train.parquet (train_rows) and shard_val.parquet (val_rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": generated_documents(train_rows, seed=1)}), dest / "train.parquet")
    pq.write_table(pa.table({"text": generated_documents(val_rows, seed=2)}), dest / "shard_val.parquet")
    return dest


@pytest.fixture(scope="session")
def make_corpus_slice():
    """write_corpus_slice(dest, train_rows, val_rows), for tests that need their own source folder."""
    return write_corpus_slice


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of parquet files usable as `prepare.py --source`: 300 train and 200 val documents."""
    return write_corpus_slice(tmp_path_factory.mktemp("tiny_source"))


@pytest.fixture(scope="session")
def tiny_cache(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared cache folder (data/ + tokenizer/ with vocab 512), built once per session.

    Point prepare at it with AUTORESEARCH_CACHE (the `use_tiny_cache` fixture does); treat it as read-only.
    """
    import prepare

    cache = tmp_path_factory.mktemp("tiny_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache))
        prepare.build_from_source(tiny_source)
        prepare.train_tokenizer(vocab_size=TINY_VOCAB_SIZE)
    return cache


@pytest.fixture
def use_tiny_cache(tiny_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sets AUTORESEARCH_CACHE to the tiny cache for one test."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tiny_cache))
    return tiny_cache
