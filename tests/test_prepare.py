"""Specification of prepare.py: data preparation, tokenizer, packing dataloader and the val_bpb metric."""

from __future__ import annotations

import http.server
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prepare

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_VOCAB_SIZE = 512  # the tiny_cache fixture's vocabulary (tests/conftest.py)
FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_texts(path: Path | str) -> list[str]:
    return pq.read_table(path).column("text").to_pylist()


# ---------------------------------------------------------------------------
# Constants and cache location
# ---------------------------------------------------------------------------

def test_constants_are_the_fixed_values():
    assert (prepare.MAX_SEQ_LEN, prepare.TIME_BUDGET) == (2048, 300)
    assert (prepare.EVAL_TOKENS, prepare.VOCAB_SIZE) == (40 * 524288, 8192)


def test_cache_dir_follows_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    assert prepare.data_dir() == str(tmp_path / "data")
    assert prepare.tokenizer_dir() == str(tmp_path / "tokenizer")
    monkeypatch.delenv("AUTORESEARCH_CACHE")
    assert prepare.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_cache):
    return prepare.Tokenizer.from_directory(str(tiny_cache / "tokenizer"))


@pytest.fixture(scope="module")
def token_bytes(tiny_cache):
    return torch.load(tiny_cache / "tokenizer" / "token_bytes.pt")


@settings(deadline=None, max_examples=300)
@given(text=st.text())
def test_any_text_round_trips_and_whole_character_tokens_cover_its_bytes(tokenizer, token_bytes, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # the upstream's byte counts: a token's decoded UTF-8 length, so they add up wherever no token splits a character
    assert token_bytes[ids].tolist() == [len(tokenizer.decode([i]).encode("utf-8")) for i in ids]
    if all("\ufffd" not in tokenizer.decode([i]) for i in ids):
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_a_token_that_splits_a_character_counts_as_the_upstream_counts_it(tokenizer, token_bytes):
    lone_byte = tokenizer.enc.encode_single_token(bytes([0xE4]))  # the first byte of a 3-byte character
    assert int(token_bytes[lone_byte]) == len("\ufffd".encode("utf-8")) == 3


def test_token_bytes_of_an_earlier_definition_are_rewritten(tiny_cache, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    path = cache / "tokenizer" / "token_bytes.pt"
    good = torch.load(path)
    torch.save(good + 1, path)
    prepare.train_tokenizer(vocab_size=TINY_VOCAB_SIZE)
    assert torch.equal(torch.load(path), good)
    assert "rewrote" in capsys.readouterr().out


def test_tokenizer_vocab_bos_and_token_bytes(tokenizer, token_bytes, use_tiny_cache):
    assert tokenizer.get_vocab_size() == TINY_VOCAB_SIZE
    bos = tokenizer.get_bos_token_id()
    assert tokenizer.decode([bos]) == prepare.BOS_TOKEN
    assert tokenizer.encode("hi there", prepend=bos)[0] == bos
    assert tokenizer.encode(["a b", "c"], prepend=prepare.BOS_TOKEN) == [[bos] + tokenizer.encode("a b"), [bos] + tokenizer.encode("c")]
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (TINY_VOCAB_SIZE,)
    special_ids = [tokenizer.enc.encode_single_token(t) for t in prepare.SPECIAL_TOKENS]
    assert token_bytes[special_ids].tolist() == [0] * len(special_ids)
    assert bool((token_bytes[: TINY_VOCAB_SIZE - len(special_ids)] > 0).all())
    assert torch.equal(prepare.get_token_bytes("cpu"), token_bytes)


def test_byte_level_vocab_works_and_below_it_is_refused(tiny_cache, tmp_path, monkeypatch):
    shutil.copytree(tiny_cache / "data", tmp_path / "data")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    prepare.train_tokenizer(vocab_size=260)
    tok = prepare.Tokenizer.from_directory()
    assert tok.get_vocab_size() == 260
    text = "byte level: ünïcödé 🙂"
    assert tok.encode(text) == list(text.encode("utf-8"))
    with pytest.raises(prepare.PrepareError, match="VOCAB_SIZE = 259"):
        prepare.train_tokenizer(vocab_size=259)


def test_missing_tokenizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tokenizer.pkl.*prepare.py"):
        prepare.Tokenizer.from_directory()


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------

BOS = 0
# document i is [BOS, 1000 + i, body...]: the id token tells which document any piece of two or more tokens came from
documents = st.lists(st.lists(st.integers(1, 50), max_size=40), max_size=40).map(
    lambda bodies: [[BOS, 1000 + i, *body] for i, body in enumerate(bodies)])


@FAST
@given(docs=documents, row_len=st.integers(1, 64), buffer_size=st.integers(1, 8), per_batch=st.integers(1, 5))
def test_rows_are_bos_aligned_unpadded_concatenations_of_document_prefixes(docs, row_len, buffer_size, per_batch):
    batches = [docs[i:i + per_batch] for i in range(0, len(docs), per_batch)]
    rows = list(prepare.pack_rows(batches, row_len, buffer_size))
    by_id = {doc[1]: doc for doc in docs}
    used, bare_bos = set(), 0
    for row in rows:
        assert len(row) == row_len and row[0] == BOS
        starts = [i for i, token in enumerate(row) if token == BOS] + [row_len]
        pieces = [row[a:b] for a, b in zip(starts, starts[1:])]
        for k, piece in enumerate(pieces):
            if len(piece) == 1:  # a document cropped to its BOS: can only end a row
                assert k == len(pieces) - 1
                bare_bos += 1
                continue
            doc = by_id[piece[1]]
            assert piece[1] not in used, "a document is used twice"
            used.add(piece[1])
            # whole documents, except that the last one of a row may be cut short
            assert piece == doc if k < len(pieces) - 1 else piece == doc[: len(piece)]
    assert bare_bos <= len(docs) - len(used)
    assert len(rows) * row_len <= sum(map(len, docs))


def test_packing_takes_the_longest_fitting_document_and_crops_the_shortest_when_none_fits():
    docs = [[BOS, 1, 1], [BOS, 2, 2, 2, 2], [BOS, 3], [BOS, 4, 4]]
    rows = list(prepare.pack_rows([docs], row_len=6, buffer_size=10))
    # row 1: longest that fits 6 is the 5-token doc, then 1 slot left: crop the shortest (2 tokens)
    # row 2: 3 + 3 tokens; nothing is left for a third row
    assert rows == [[BOS, 2, 2, 2, 2, BOS], [BOS, 1, 1, BOS, 4, 4]]


def test_dataloader_yields_shifted_bos_aligned_int64_batches(tokenizer, use_tiny_cache):
    loader = prepare.make_dataloader(tokenizer, 3, 64, "train", buffer_size=16, device="cpu")
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (3, 64) and x.dtype == y.dtype == torch.int64
        assert x.device.type == "cpu" and epoch >= 1
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert bool((x[:, 0] == tokenizer.get_bos_token_id()).all())
    x, _, _ = next(prepare.make_dataloader(tokenizer, 2, 16, "val", device="cpu"))
    head = tokenizer.enc.decode_bytes(x[0].tolist()[1:])  # bytes: a crop may split a UTF-8 character
    assert any(doc.encode().startswith(head) for doc in read_texts(use_tiny_cache / "data" / "shard_val.parquet"))
    with pytest.raises(ValueError, match="split"):
        next(prepare.make_dataloader(tokenizer, 2, 16, "test", device="cpu"))


def test_train_loader_cycles_epochs(tokenizer, use_tiny_cache):
    loader = prepare.make_dataloader(tokenizer, 8, 512, "train", buffer_size=4, device="cpu")
    assert any(epoch > 1 for _, (_, _, epoch) in zip(range(200), loader))


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

class RecordingModel(torch.nn.Module):
    """Returns a known loss per target token and records what it was called with."""

    def __init__(self, loss_of_targets):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.loss_of_targets = loss_of_targets
        self.targets, self.modes = [], []

    def forward(self, x, y, reduction="mean"):
        assert reduction == "none"
        self.targets.append(y.clone())
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.loss_of_targets(y)


def test_uniform_model_scores_log2_vocab_over_bytes_per_token(tokenizer, token_bytes, use_tiny_cache, capsys):
    log_v = torch.tensor(math.log(tokenizer.get_vocab_size())).item()  # as float32, like the model's output
    model = RecordingModel(lambda y: torch.full(y.shape, log_v))
    bpb = prepare.evaluate_bpb(model, tokenizer, batch_size=2)
    targets = torch.cat([y.reshape(-1) for y in model.targets])
    nbytes = token_bytes[targets]
    assert bpb == pytest.approx(int((nbytes > 0).sum()) * log_v / math.log(2) / int(nbytes.sum()), rel=1e-9)
    assert model.training and model.modes and set(model.modes) == {(False, False)}
    # the tiny val split is far smaller than EVAL_TOKENS: it is read once, whole, and that is said
    assert len(model.targets) * 2 * prepare.MAX_SEQ_LEN < prepare.EVAL_TOKENS
    assert re.search(r"note: val split holds only [\d,]+ of EVAL_TOKENS", capsys.readouterr().out)


def test_special_token_targets_count_neither_nats_nor_bytes(tokenizer, token_bytes, use_tiny_cache, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 5 * 2 * prepare.MAX_SEQ_LEN)  # 5 batches of 2 rows
    bos = tokenizer.get_bos_token_id()
    # flat (B*T,) losses; BOS targets get a huge loss that must not leak into the metric
    model = RecordingModel(lambda y: (y.float() / 100 + (y == bos).float() * 1e6).reshape(-1))
    bpb = prepare.evaluate_bpb(model.train(False), tokenizer, batch_size=2)
    assert len(model.targets) == 5 and not model.training
    targets = torch.cat([y.reshape(-1) for y in model.targets])
    assert bool((targets == bos).any())
    kept = token_bytes[targets] > 0
    expected = float((targets[kept].double() / 100).sum()) / math.log(2) / int(token_bytes[targets].sum())
    assert bpb == pytest.approx(expected, rel=1e-6)
    assert "note:" not in capsys.readouterr().out


SHORT_T = 32  # a row length that gives the tiny val split hundreds of rows


def positional_loss(y):
    """A loss that differs per token and per position, so scoring any other set of rows would change val_bpb."""
    return y.float() / 100 + torch.arange(y.shape[-1]).float() / 1000


def val_rows(tokenizer, tiny_cache, T, passes):
    """Packed rows of the tiny val split read once (passes=1) or without end (None, the first 10**4 rows),
    built from the parquet file directly (not through evaluate_bpb)."""
    docs = tokenizer.encode(read_texts(tiny_cache / "data" / prepare.VAL_FILENAME), prepend=tokenizer.get_bos_token_id())
    batches = [docs[i:i + 128] for i in range(0, len(docs), 128)]  # the tokenizer batches of one row group
    stream = batches if passes == 1 else itertools.cycle(batches)
    return torch.tensor(list(itertools.islice(prepare.pack_rows(stream, T + 1), 10**4)), dtype=torch.long)


def evaluate(tokenizer, batch_size):
    model = RecordingModel(positional_loss)
    bpb = prepare.evaluate_bpb(model, tokenizer, batch_size=batch_size)
    shapes = {tuple(y.shape) for y in model.targets}
    assert len(shapes) == 1 and len(model.targets[0]) <= batch_size  # one shape: a short last batch is padded
    targets = torch.cat(model.targets)
    padding = (targets == tokenizer.get_bos_token_id()).all(dim=1)  # BOS rows: their targets count nothing
    return bpb, targets[~padding]


@pytest.mark.parametrize("eval_rows", [50, 10**6])  # a prefix of the split, and more than it holds
def test_val_bpb_scores_the_same_rows_whatever_the_batch_size(tokenizer, tiny_cache, use_tiny_cache, monkeypatch,
                                                             capsys, eval_rows):
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", SHORT_T)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", eval_rows * SHORT_T + SHORT_T // 2)  # a partial row is not scored
    # a split that holds the scored rows is repeated without end, as the upstream's loader does; a smaller one is read once
    one_pass = val_rows(tokenizer, tiny_cache, SHORT_T, passes=1)
    assert 50 < len(one_pass) < 10**6
    expected = (one_pass if eval_rows > len(one_pass) else val_rows(tokenizer, tiny_cache, SHORT_T, passes=None))[:eval_rows, 1:]
    results = {b: evaluate(tokenizer, b) for b in (1, 3, 7, 128, 10**6)}  # 10**6: beyond the whole set
    for bpb, targets in results.values():
        assert torch.equal(targets, expected)
        assert bpb == pytest.approx(results[1][0], rel=1e-12)
    out = capsys.readouterr().out
    if eval_rows < len(one_pass):
        assert "note:" not in out
    else:  # the note gives the tokens really scored
        assert out.count(f"note: val split holds only {len(one_pass) * SHORT_T:,} of EVAL_TOKENS") == len(results)


def test_val_rows_are_packed_once_then_loaded_and_repacked_when_an_input_changes(tiny_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache, ignore=shutil.ignore_patterns("val_rows-*"))  # other tests' rows
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", SHORT_T)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 50 * SHORT_T)
    tokenizer = prepare.Tokenizer.from_directory()
    first = prepare.evaluate_bpb(RecordingModel(positional_loss), tokenizer, batch_size=7)
    kept = list((cache / "tokenizer").glob("val_rows-*.pt"))
    assert len(kept) == 1
    packs = []
    real_pack_rows = prepare.pack_rows
    monkeypatch.setattr(prepare, "pack_rows", lambda *a, **k: packs.append(a) or real_pack_rows(*a, **k))
    again = RecordingModel(positional_loss)
    assert prepare.evaluate_bpb(again, tokenizer, batch_size=7) == first and packs == []  # loaded, not packed
    assert torch.equal(torch.cat(again.targets)[:50], val_rows(tokenizer, tiny_cache, SHORT_T, passes=None)[:50, 1:])
    # any input of the rows changes the file they are kept in: row length, count, buffer, val shard, tokenizer
    path = prepare._val_rows_path(tokenizer, SHORT_T, 50)
    assert prepare._val_rows_path(tokenizer, SHORT_T + 1, 50) != path
    assert prepare._val_rows_path(tokenizer, SHORT_T, 51) != path
    monkeypatch.setattr(prepare, "PACK_BUFFER", 999)
    assert prepare._val_rows_path(tokenizer, SHORT_T, 50) != path
    monkeypatch.setattr(prepare, "PACK_BUFFER", 1000)
    val_shard = cache / "data" / prepare.VAL_FILENAME
    pq.write_table(pa.table({"text": ["another val split"] * 3}), val_shard)
    assert prepare._val_rows_path(tokenizer, SHORT_T, 50) != path
    shutil.copy(tiny_cache / "data" / prepare.VAL_FILENAME, val_shard)
    assert prepare._val_rows_path(tokenizer, SHORT_T, 50) == path
    retrained = prepare.Tokenizer(tiktoken_with_one_token_fewer(tokenizer))
    assert prepare._val_rows_path(retrained, SHORT_T, 50) != path


def tiktoken_with_one_token_fewer(tokenizer):
    import tiktoken
    enc = tokenizer.enc
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab - len(prepare.SPECIAL_TOKENS) - 1)}
    specials = {name: len(ranks) + i for i, name in enumerate(prepare.SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="fewer", pat_str=enc._pat_str, mergeable_ranks=ranks, special_tokens=specials)


def test_default_eval_set_is_whole_batches_of_the_default_batch_size():
    assert prepare.EVAL_TOKENS % (128 * prepare.MAX_SEQ_LEN) == 0  # so B=128 needs no final partial batch


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_a_clear_error(tokenizer, use_tiny_cache, batch_size):
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        prepare.evaluate_bpb(RecordingModel(positional_loss), tokenizer, batch_size=batch_size)


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------

def parquet_bytes(tmp_path: Path, name: str, texts: list[str]) -> bytes:
    path = tmp_path / f"served_{name}"
    pq.write_table(pa.table({"text": texts}), path)
    return path.read_bytes()


class ShardServer:
    """Loopback HTTP server; `plans[name]` lists how successive requests are answered (the last one repeats):
    "ok", "500", "truncated" (Content-Length says more than is sent) or "unsized" (no length, half the body)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.plans, self.hits = files, {}, Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.hits[name] += 1
                plan = server.plans.get(name, ["ok"])
                mode = plan[min(server.hits[name], len(plan)) - 1]
                body = server.files.get(name)
                if body is None or mode == "500":
                    self.send_response(404 if body is None else 500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                if mode != "unsized":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if mode == "ok" else body[: len(body) // 2])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def shard_server(tmp_path, monkeypatch):
    files = {f"data/shard_{i:05d}.parquet": parquet_bytes(tmp_path, str(i), [f"train doc {i}"] * 3) for i in (0, 1)}
    files[f"data/shard_{prepare.MAX_SHARD:05d}.parquet"] = parquet_bytes(tmp_path, "val", ["val doc"])
    server = ShardServer(files)
    server.thread.start()
    monkeypatch.setenv("AUTORESEARCH_DATA_URL", server.url)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_download_fetches_train_shards_and_pins_the_last_as_val(shard_server, tmp_path):
    prepare.download_data(num_shards=2, download_workers=3, attempts=2, backoff_s=0)
    data = tmp_path / "cache" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["shard_00000.parquet", "shard_00001.parquet", "shard_val.parquet"]
    assert read_texts(data / "shard_00001.parquet") == ["train doc 1"] * 3
    assert read_texts(data / "shard_val.parquet") == ["val doc"]
    hits = sum(shard_server.hits.values())
    prepare.download_data(num_shards=2, attempts=2, backoff_s=0)  # resumable: nothing is fetched again
    assert sum(shard_server.hits.values()) == hits == 3


@pytest.mark.parametrize("failure", ["truncated", "unsized", "500"])
def test_a_failed_response_is_retried(shard_server, tmp_path, failure, capsys):
    shard_server.plans["data/shard_00001.parquet"] = [failure, "ok"]
    prepare.download_data(num_shards=2, attempts=3, backoff_s=0)
    assert shard_server.hits["data/shard_00001.parquet"] == 2
    assert read_texts(tmp_path / "cache" / "data" / "shard_00001.parquet") == ["train doc 1"] * 3
    assert "shard_00001.parquet attempt 1/3 failed" in capsys.readouterr().out


@pytest.mark.parametrize("failure", ["truncated", "500"])
def test_a_shard_that_never_arrives_is_a_clear_error_leaving_nothing_half_written(shard_server, tmp_path, failure):
    shard_server.plans["data/shard_00001.parquet"] = [failure]
    with pytest.raises(prepare.PrepareError, match=r"shard_00001\.parquet: download failed after 3 attempts"):
        prepare.download_data(num_shards=2, attempts=3, backoff_s=0)
    assert shard_server.hits["data/shard_00001.parquet"] == 3
    assert sorted(p.name for p in (tmp_path / "cache" / "data").iterdir()) == ["shard_00000.parquet", "shard_val.parquet"]


# ---------------------------------------------------------------------------
# Local source
# ---------------------------------------------------------------------------

def test_cli_builds_from_a_parquet_source_with_a_vocab_edited_like_the_readme_says(tmp_path, make_corpus_slice):
    source = make_corpus_slice(tmp_path / "source", train_rows=200, val_rows=20)
    script = tmp_path / "prepare.py"
    edited, count = re.subn(r"^VOCAB_SIZE = 8192\b", "VOCAB_SIZE = 400", (REPO_ROOT / "prepare.py").read_text(), flags=re.M)
    assert count == 1
    script.write_text(edited)
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(script), "--source", str(source)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "done: ready to train" in run.stdout and "vocab_size: 400" in run.stdout
    data = tmp_path / "cache" / "data"
    assert read_texts(data / "shard_val.parquet") == [p for t in read_texts(source / "shard_val.parquet") for p in prepare.split_document(t)]
    train = read_texts(data / "shard_00000.parquet")
    assert sorted(train) == sorted(p for t in read_texts(source / "train.parquet") for p in prepare.split_document(t))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
        assert prepare.Tokenizer.from_directory().get_vocab_size() == 400


def write_text_source(root: Path) -> Path:
    paragraphs = [f"Paragraph {i} " + "word " * 400 for i in range(40)]  # ~80k chars: must be split
    files = {
        "big.md": "\n\n".join(paragraphs),
        "notes/a.txt": "alpha text file",
        "notes/b.rst": "beta text file",
        "code/c.py": "print('gamma')\n",
        "records.jsonl": "\n".join(json.dumps({"text": f"record {i}", "id": i}) for i in range(30)),
        ".git/hidden.txt": "hidden text",
        "image.png": "not text",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


def built_docs(cache: Path) -> tuple[list[str], list[str]]:
    data = cache / "data"
    return [t for p in sorted(data.glob("shard_0*.parquet")) for t in read_texts(p)], read_texts(data / "shard_val.parquet")


def test_text_folder_source_is_split_deterministic_and_pins_whole_files_as_val(tmp_path, monkeypatch, capsys):
    source = write_text_source(tmp_path / "source")
    built = []
    for run in ("one", "two"):
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / run))
        prepare.build_from_source(source)
        built.append(built_docs(tmp_path / run))
    assert built[0] == built[1]
    train, val = built[0]
    everything = train + val
    assert train and val and all(0 < len(doc) <= prepare.MAX_DOC_CHARS for doc in everything)
    assert "alpha text file" in everything and "print('gamma')" in everything and "record 7" in everything
    assert not any("hidden" in doc or "not text" in doc or "caf" in doc for doc in everything)
    assert sum(doc.startswith("Paragraph") for doc in everything) > 1
    big_in_val = any(doc.startswith("Paragraph") for doc in val)
    assert all(doc.startswith("Paragraph") == big_in_val for doc in val) or not any(doc.startswith("Paragraph") for doc in train)
    assert "skipped 1 files that are not UTF-8" in capsys.readouterr().out


def test_rebuilding_an_unchanged_source_is_skipped_and_a_changed_one_rebuilt(tmp_path, monkeypatch, capsys):
    source = write_text_source(tmp_path / "source")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    prepare.build_from_source(source)
    prepare.build_from_source(source)
    assert "already built" in capsys.readouterr().out
    (source / "notes" / "new.txt").write_text("delta text file")
    prepare.build_from_source(source)
    assert "source changed" in capsys.readouterr().out
    assert "delta text file" in sum(built_docs(tmp_path / "cache"), [])


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "fine"}\n{"body": "no text"}\n', r"bad\.jsonl:2: no string field 'text'"),
    ("bad.jsonl", '{"text": "fine"}\nnot json\n', r"bad\.jsonl:2: invalid JSON"),
    ("bad.parquet", None, r"bad\.parquet: no 'text' column"),
])
def test_bad_source_files_are_named_in_a_one_line_error(tmp_path, monkeypatch, name, content, message):
    source = write_text_source(tmp_path / "source")
    if content is None:
        pq.write_table(pa.table({"body": ["x"]}), source / name)
    else:
        (source / name).write_text(content)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(prepare.PrepareError, match=message):
        prepare.build_from_source(source)


def test_source_and_download_refuse_to_mix_in_one_cache(tmp_path, monkeypatch):
    source = write_text_source(tmp_path / "source")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    prepare.build_from_source(source)
    with pytest.raises(prepare.PrepareError, match="built with --source"):
        prepare.download_data(num_shards=1)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "downloaded"))
    (tmp_path / "downloaded" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "downloaded" / "data" / "shard_00000.parquet")
    with pytest.raises(prepare.PrepareError, match="holds downloaded shards"):
        prepare.build_from_source(source)


@FAST
@given(text=st.text(alphabet=st.sampled_from("ab \n\t"), max_size=400), max_chars=st.integers(1, 50))
def test_split_document_keeps_every_visible_character_in_bounded_pieces(text, max_chars):
    pieces = prepare.split_document(text, max_chars)
    assert all(0 < len(p) <= max_chars and p.strip() for p in pieces)
    assert "".join("".join(p.split()) for p in pieces) == "".join(text.split())
