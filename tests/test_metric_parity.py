"""val_bpb is the upstream's number: prepare.py's packer and evaluate_bpb against a reference written from
karpathy/autoresearch's prepare.py (@228791f: make_dataloader's best-fit packing, evaluate_bpb's batch loop).

The reference below is deliberately the plain algorithm, as the upstream states it: a list buffer scanned
linearly, refilled a whole tokenizer batch at a time while it holds fewer than buffer_size documents, an
endless stream of batches, batches counted as EVAL_TOKENS // (B * T). Nothing here reads the shared corpus:
the data are generated, so the test runs on a fresh clone."""

from __future__ import annotations

import itertools
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import prepare
from generated_corpus import generated_documents

UPSTREAM_BATCH_SIZE = 128   # the upstream's DEVICE_BATCH_SIZE, and its tokenizer batch
T = 64                      # a short row so that a few hundred rows cover many refills of the buffer
VOCAB = 300


# ---------------------------------------------------------------------------
# The reference: the upstream's algorithm, written plainly
# ---------------------------------------------------------------------------

def reference_rows(doc_batches, row_len, buffer_size):
    """Rows of the upstream's packer over an endless iterator of document batches."""
    buffer = []
    while True:
        row = []
        while len(row) < row_len:
            while len(buffer) < buffer_size:
                buffer.extend(next(doc_batches))
            remaining = row_len - len(row)
            best, best_len = -1, 0
            for i, doc in enumerate(buffer):
                if best_len < len(doc) <= remaining:
                    best, best_len = i, len(doc)
            if best >= 0:
                row.extend(buffer.pop(best))
            else:
                shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                row.extend(buffer.pop(shortest)[:remaining])
        yield row


def reference_doc_batches(tokenizer, path):
    """The upstream's _document_batches + encode for one shard, repeated without end."""
    bos = tokenizer.get_bos_token_id()
    while True:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            texts = pf.read_row_group(rg).column("text").to_pylist()
            for i in range(0, len(texts), UPSTREAM_BATCH_SIZE):
                yield [[bos] + ids for ids in tokenizer.enc.encode_ordinary_batch(texts[i:i + UPSTREAM_BATCH_SIZE])]


def reference_bpb(model, tokenizer, token_bytes, batch_size, seq_len, eval_tokens):
    """The upstream's evaluate_bpb: whole batches, a float32 sum per batch, accumulated as Python floats."""
    rows = reference_rows(reference_doc_batches(tokenizer, val_path()), seq_len + 1, 1000)
    total_nats, total_bytes = 0.0, 0
    for _ in range(eval_tokens // (batch_size * seq_len)):
        packed = torch.tensor(list(itertools.islice(rows, batch_size)), dtype=torch.long)
        x, y = packed[:, :-1], packed[:, 1:]
        loss = model(x, y, reduction="none").view(-1)
        nbytes = token_bytes[y.reshape(-1)]
        total_nats += (loss * (nbytes > 0)).sum().item()
        total_bytes += nbytes.sum().item()
    return total_nats / (math.log(2) * total_bytes)


class Bigram(torch.nn.Module):
    """A fixed model: a random next-token table, so the loss differs per (previous, next) token pair."""

    def __init__(self, vocab_size, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logprobs = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g).mul(3).log_softmax(-1))

    def forward(self, x, y, reduction="mean"):
        loss = -self.logprobs[x, y]
        return loss if reduction == "none" else loss.mean()

# ---------------------------------------------------------------------------
# Generated data: a cache with train shards, a val shard and a tokenizer
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity_cache(tmp_path_factory):
    """A prepared cache: 4,000 train documents, and a val shard of 3,000 in row groups of 1,024 (as upstream)."""
    root = tmp_path_factory.mktemp("parity")
    source = root / "source"
    source.mkdir()
    pq.write_table(pa.table({"text": generated_documents(4000, seed=1)}), source / "train.parquet")
    pq.write_table(pa.table({"text": generated_documents(3000, seed=2)}), source / prepare.VAL_FILENAME)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(root / "cache"))
        prepare.build_from_source(source)
        prepare.train_tokenizer(vocab_size=VOCAB)
    return root / "cache"


@pytest.fixture
def parity(parity_cache, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(parity_cache))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", T)
    tokenizer = prepare.Tokenizer.from_directory()
    return tokenizer, prepare.get_token_bytes()


def val_path():
    return f"{prepare.data_dir()}/{prepare.VAL_FILENAME}"


def val_tokens(tokenizer):
    """Tokens of one pass over the val shard, BOS included."""
    return sum(len(doc) for batch in prepare._token_batches(tokenizer, "val", epochs=1) for doc in batch)

# ---------------------------------------------------------------------------
# The packer
# ---------------------------------------------------------------------------

batch_lists = st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=12), min_size=1, max_size=12)


@settings(deadline=None, max_examples=150)
@given(lengths=batch_lists, row_len=st.integers(1, 48), buffer_size=st.integers(1, 20), rows=st.integers(1, 30))
def test_packer_makes_the_upstreams_rows_from_an_endless_stream(lengths, row_len, buffer_size, rows):
    # document k of the stream is [0, k, k, ...]: rows equal only if every document lands where upstream puts it
    counter = itertools.count()
    def stream():
        for batch in itertools.cycle(lengths):
            yield [[0] + [k] * (n - 1) for n, k in zip(batch, counter)]
    ours = list(itertools.islice(prepare.pack_rows(stream(), row_len, buffer_size), rows))
    counter = itertools.count()
    theirs = list(itertools.islice(reference_rows(stream(), row_len, buffer_size), rows))
    assert ours == theirs


def test_the_buffer_is_refilled_a_whole_batch_at_a_time():
    # buffer_size 2, batches of 3: the first refill brings all three, so the 4-token document is chosen
    # although it arrived after the buffer already held two; refilling one document at a time would not see it
    batches = iter([[[0, 1], [0, 2], [0, 3, 3, 3]], [[0, 4]]])
    assert next(prepare.pack_rows(batches, row_len=4, buffer_size=2)) == [0, 3, 3, 3]

# ---------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("eval_batches", [3, "all but the tail"])
def test_val_bpb_is_the_upstreams_number_at_its_batch_size_and_ours_at_every_batch_size(parity, monkeypatch, eval_batches):
    tokenizer, token_bytes = parity
    held = val_tokens(tokenizer)
    if eval_batches == "all but the tail":
        # as many whole upstream batches as the shard's tokens allow: cropping drops tails, so the last rows
        # need documents from a second pass over the shard, which the upstream's endless loader supplies
        eval_batches = held // (UPSTREAM_BATCH_SIZE * T)
    eval_tokens = eval_batches * UPSTREAM_BATCH_SIZE * T
    assert 0 < eval_tokens <= held
    monkeypatch.setattr(prepare, "EVAL_TOKENS", eval_tokens)
    model = Bigram(tokenizer.get_vocab_size())
    expected = reference_bpb(model, tokenizer, token_bytes, UPSTREAM_BATCH_SIZE, T, eval_tokens)
    for batch_size in (UPSTREAM_BATCH_SIZE, 1, 48, 100, 1000):  # 100: a padded last batch
        assert prepare.evaluate_bpb(model, tokenizer, batch_size) == pytest.approx(expected, rel=1e-6, abs=0)


def test_the_rows_are_the_upstreams_rows(parity, monkeypatch):
    tokenizer, _ = parity
    num_rows = 5 * UPSTREAM_BATCH_SIZE
    ours = prepare.val_rows(tokenizer, T, num_rows).tolist()
    theirs = list(itertools.islice(reference_rows(reference_doc_batches(tokenizer, val_path()), T + 1, 1000), num_rows))
    assert len(ours) == num_rows and ours == theirs


def test_a_small_val_split_is_read_once_and_said(parity, monkeypatch, capsys):
    tokenizer, token_bytes = parity
    held = val_tokens(tokenizer)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", (held // T + 50) * T)  # more than one pass holds
    one_pass = list(prepare.pack_rows(prepare._token_batches(tokenizer, "val", epochs=1), T + 1))
    model = Bigram(tokenizer.get_vocab_size())
    bpb = prepare.evaluate_bpb(model, tokenizer, 128)
    packed = torch.tensor(one_pass)
    loss = model(packed[:, :-1], packed[:, 1:], reduction="none").detach().double()
    nbytes = token_bytes[packed[:, 1:]]
    assert bpb == pytest.approx(float((loss * (nbytes > 0)).sum()) / math.log(2) / int(nbytes.sum()), rel=1e-9)
    assert f"note: val split holds only {len(one_pass) * T:,} of EVAL_TOKENS" in capsys.readouterr().out


def test_training_batches_are_the_upstreams_rows_over_the_train_shards(parity):
    tokenizer, _ = parity
    B = 16
    loader = prepare.make_dataloader(tokenizer, B, T, "train", device="cpu")
    shards = prepare.train_shard_paths()
    assert len(shards) == 1
    rows = reference_rows(reference_doc_batches(tokenizer, shards[0]), T + 1, 1000)
    for _ in range(40):  # 640 rows: past the first epoch of this small shard
        x, y, _ = next(loader)
        expected = torch.tensor(list(itertools.islice(rows, B)))
        assert torch.equal(x, expected[:, :-1]) and torch.equal(y, expected[:, 1:])
