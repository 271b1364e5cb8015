"""
One-time data preparation for autoresearch, plus the runtime utilities that train.py imports.

Usage:
    python prepare.py                    # download 10 train shards + the pinned val shard, train the tokenizer
    python prepare.py --num-shards 8     # fewer shards (-1 = all of them)
    python prepare.py --source DIR       # build the shards from a local folder instead of downloading

Data and tokenizer live in ~/.cache/autoresearch (data/, tokenizer/), or in $AUTORESEARCH_CACHE if set.
This file is fixed: agents edit train.py only, so data, tokenizer and metric stay comparable across runs.
"""

import argparse
import bisect
import hashlib
import io
import itertools
import json
import math
import os
import pickle
import random
import re
import shutil
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from http.client import HTTPException
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import rustbpe
import tiktoken
import torch

# ---------------------------------------------------------------------------
# The fixed sizes every run shares (changing one makes results incomparable)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 2048          # context length of the model and of evaluation
TIME_BUDGET = 300           # seconds of training, excluding start-up and compilation
EVAL_TOKENS = 40 * 524288   # validation tokens behind val_bpb (~21M)
VOCAB_SIZE = 8192           # lower it on a small computer; 260 = byte level (256 bytes + 4 special tokens)

# A screen run (the harness's policy.screen, USAGE.md) trains for fewer seconds, told here; the harness kills a
# run past them plus its start-up allowance. Set by hand it makes a smoke run. The harness reads the literal
# above for full runs (runner.budget: prepare.py:TIME_BUDGET), so this stays under an `if`.
if os.environ.get("AUTORESEARCH_TIME_BUDGET"):
    TIME_BUDGET = float(os.environ["AUTORESEARCH_TIME_BUDGET"])

# ---------------------------------------------------------------------------
# Where data comes from, and how it is cut and tokenized
# ---------------------------------------------------------------------------

# Default data: the upstream's pre-shuffled web text, as parquet shards with a `text` column.
BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
MAX_SHARD = 6542                     # the last shard, shard_06542.parquet, is pinned as validation
VAL_FILENAME = "shard_val.parquet"   # ... and stored under this name, whatever the source
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF_S = 2.0             # waits 2, 4, 8, 16 s between attempts: rides out rate limits
DOWNLOAD_TIMEOUT_S = 30

# Local source (--source DIR): documents are cut to the length of typical web pages, so a
# 2048-token row holds a few of them and cropping wastes little.
TEXT_EXTENSIONS = {".txt", ".md", ".markdown", ".rst", ".tex", ".html", ".py", ".c", ".h", ".cpp",
                   ".js", ".ts", ".rs", ".go", ".java", ".sh", ".yaml", ".yml", ".toml"}
MAX_DOC_CHARS = 12_000
SHARD_CHARS = 25_000_000             # ~10 MB of zstd parquet per train shard
ROW_GROUP_SIZE = 1024                # documents per parquet row group, as upstream
VAL_FRACTION = 0.05                  # share of characters pinned as validation when the source has no shard_val.parquet
SHUFFLE_SEED = 1337
PACK_BUFFER = 1000                   # documents the best-fit packer chooses among (more: fuller rows, more RAM)
SOURCE_MANIFEST = "source.json"      # marks data/ as built from a local folder, and from which files

# Tokenizer: byte-level BPE, GPT-4 split pattern except numbers split into runs of at most 2 digits.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
# BPE training reads at most this many characters from the train shards (in shard order; the shards are
# shuffled, so this is a uniform sample). The upstream's figure: on the same shards, the same merges.
TOKENIZER_MAX_CHARS = 1_000_000_000
TOKENIZER_DOC_CHARS = 10_000         # only a document's head: a few huge documents must not dominate the counts
TOKENIZER_PROGRESS_CHARS = 50_000_000
SANITY_TEXT = "Hello world! Numbers: 123, 4567. Unicode: 你好, naïve café 🙂\n\tindented  spaces"


class PrepareError(Exception):
    """A problem the user has to fix; the message is one line naming the file or setting at fault."""


# ---------------------------------------------------------------------------
# Cache paths (read the environment at call time, so tests and users can redirect them)
# ---------------------------------------------------------------------------

def cache_dir():
    return os.environ.get("AUTORESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")


def data_dir():
    return os.path.join(cache_dir(), "data")


def tokenizer_dir():
    return os.path.join(cache_dir(), "tokenizer")


def shard_name(index):
    return f"shard_{index:05d}.parquet"


def train_shard_paths():
    """Sorted train shards in data/ (everything named shard_NNNNN.parquet; the val shard is not)."""
    directory = data_dir()
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if re.fullmatch(r"shard_\d{5}\.parquet", n))
    return [os.path.join(directory, n) for n in names]


def _atomic_write_bytes(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)

# ---------------------------------------------------------------------------
# Fetching the upstream's shards
# ---------------------------------------------------------------------------

def _fetch_once(url, dest):
    """Stream url into dest.tmp, check it is a whole parquet file, then rename; never leaves dest.tmp behind."""
    tmp = dest + ".tmp"
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, f, 1 << 20)
            size = f.tell()
        # http.client returns a short body without complaint when the connection drops early,
        # so compare with Content-Length, then make sure parquet finds its footer.
        if expected is not None and size != int(expected):
            raise OSError(f"truncated body: {size} of {expected} bytes")
        pq.read_metadata(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_shard(url, dest, attempts=DOWNLOAD_ATTEMPTS, backoff_s=DOWNLOAD_BACKOFF_S):
    name = os.path.basename(dest)
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, dest)
            return
        except (OSError, ValueError, HTTPException) as e:  # URLError/HTTPError/timeouts are OSErrors; ArrowInvalid a ValueError
            error = f"{type(e).__name__}: {e}"
            if attempt < attempts:
                wait = backoff_s * 2 ** (attempt - 1)
                print(f"data: {name} attempt {attempt}/{attempts} failed ({error}); retrying in {wait:g}s")
                time.sleep(wait)
    raise PrepareError(f"{name}: download failed after {attempts} attempts from {url} ({error})")


def download_data(num_shards, download_workers=8, attempts=DOWNLOAD_ATTEMPTS, backoff_s=DOWNLOAD_BACKOFF_S):
    """Download train shards 0..num_shards-1 plus the pinned val shard; shards already present are skipped."""
    base_url = os.environ.get("AUTORESEARCH_DATA_URL", BASE_URL).rstrip("/")
    directory = data_dir()
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, SOURCE_MANIFEST)):
        raise PrepareError(f"{directory} was built with --source; delete it or set AUTORESEARCH_CACHE to download")
    for stale in Path(directory).glob("*.tmp"):  # left by a killed run
        stale.unlink()

    wanted = [(shard_name(i), shard_name(i)) for i in range(min(num_shards, MAX_SHARD))]
    wanted.append((shard_name(MAX_SHARD), VAL_FILENAME))
    todo = [(remote, local) for remote, local in wanted if not os.path.exists(os.path.join(directory, local))]
    print(f"data: {len(wanted) - len(todo)}/{len(wanted)} shards already in {directory}")
    if not todo:
        return
    errors = []
    t0 = time.time()
    with ThreadPoolExecutor(max(1, min(download_workers, len(todo)))) as pool:
        futures = {pool.submit(download_shard, f"{base_url}/{remote}", os.path.join(directory, local), attempts, backoff_s): local
                   for remote, local in todo}
        for done, future in enumerate(as_completed(futures), 1):
            try:
                future.result()
                print(f"data: downloaded {done}/{len(todo)} shards ({futures[future]}, {time.time() - t0:.0f}s)")
            except PrepareError as e:
                errors.append(str(e))
                print(f"data: {e}")
    if errors:
        raise PrepareError(f"{len(errors)} of {len(todo)} shards failed (rerun to resume); first: {errors[0]}")

# ---------------------------------------------------------------------------
# Local source (--source DIR)
# ---------------------------------------------------------------------------

def split_document(text, max_chars=MAX_DOC_CHARS):
    """Cut text into non-empty pieces of at most max_chars: at blank lines, else at line ends, else anywhere."""
    return [piece for piece in _split(text.strip(), max_chars, ("\n\n", "\n", "")) if piece.strip()]


def _split(text, max_chars, separators):
    if len(text) <= max_chars:
        return [text]
    sep, finer = separators[0], separators[1:]
    if not sep:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    pieces, current = [], ""
    for part in text.split(sep):
        for chunk in _split(part, max_chars, finer):
            joined = current + sep + chunk if current else chunk
            if len(joined) <= max_chars:
                current = joined
            else:
                pieces.append(current)
                current = chunk
    pieces.append(current)
    return pieces


def _source_files(source):
    """Usable files under source in sorted order, skipping hidden files and folders."""
    files = []
    for path in sorted(source.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(source).parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".jsonl") or suffix in TEXT_EXTENSIONS:
            files.append(path)
    return files


def _read_records(path):
    """Texts of one file: a row per parquet row or jsonl line, the whole file otherwise."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise PrepareError(f"{path}: no 'text' column (has {pf.schema_arrow.names})")
        return [t for batch in pf.iter_batches(columns=["text"]) for t in batch.column(0).to_pylist() if t]
    text = path.read_text(encoding="utf-8")
    if suffix != ".jsonl":
        return [text]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise PrepareError(f"{path}:{lineno}: no string field 'text'")
        records.append(record["text"])
    return records


def _write_shard(path, docs):
    tmp = path + ".tmp"
    pq.write_table(pa.table({"text": docs}), tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    os.replace(tmp, path)


def build_from_source(source):
    """
    Build data/ from a local folder: parquet files with a `text` column (a row is a document), .jsonl files
    (field "text"), and text files (a file is a document); documents longer than MAX_DOC_CHARS are split.
    Validation is pinned: a top-level shard_val.parquet if the source has one; otherwise the last units of a
    fixed-seed shuffle of the units (a text file, or a parquet/jsonl row, whole so that no file straddles the
    split) until VAL_FRACTION of the characters. Train documents are shuffled with the same fixed seed.
    """
    src = Path(source).resolve()
    if not src.is_dir():
        raise PrepareError(f"--source {source}: not a directory")
    files = _source_files(src)
    manifest = {"source": str(src), "files": [[str(p.relative_to(src)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    directory = data_dir()
    manifest_path = os.path.join(directory, SOURCE_MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            if json.load(f) == manifest:
                print(f"data: {directory} already built from {src}")
                return
        print(f"data: source changed; rebuilding {directory} and retraining the tokenizer")
        os.remove(manifest_path)
        for stale in train_shard_paths() + [os.path.join(directory, VAL_FILENAME)] + \
                [os.path.join(tokenizer_dir(), n) for n in ("tokenizer.pkl", "token_bytes.pt")]:
            if os.path.exists(stale):
                os.remove(stale)
    elif train_shard_paths():
        raise PrepareError(f"{directory} holds downloaded shards; delete it or set AUTORESEARCH_CACHE to use --source")

    t0 = time.time()
    units, val_docs, skipped = [], None, []
    for path in files:
        try:
            records = _read_records(path)
        except UnicodeDecodeError:
            skipped.append(path.name)
            continue
        if path == src / VAL_FILENAME:
            val_docs = [piece for text in records for piece in split_document(text)]
        elif path.suffix.lower() in (".parquet", ".jsonl"):
            units.extend(split_document(text) for text in records)
        else:
            units.append(split_document(records[0]))
    if skipped:
        print(f"data: skipped {len(skipped)} files that are not UTF-8 text (e.g. {skipped[0]})")
    units = [unit for unit in units if unit]
    rng = random.Random(SHUFFLE_SEED)
    rng.shuffle(units)
    if val_docs is None:
        budget = VAL_FRACTION * sum(len(doc) for unit in units for doc in unit)
        val_docs = []
        while len(units) > 1 and (not val_docs or sum(map(len, val_docs)) < budget):
            val_docs.extend(units.pop())
    train_docs = [doc for unit in units for doc in unit]
    rng.shuffle(train_docs)  # interleave the pieces of long files
    if not train_docs or not val_docs:
        raise PrepareError(f"--source {src}: needs at least 2 documents of text (found {len(train_docs) + len(val_docs)})")

    os.makedirs(directory, exist_ok=True)
    shards, start, chars = 0, 0, 0
    for i, doc in enumerate(train_docs):
        chars += len(doc)
        if chars >= SHARD_CHARS or i == len(train_docs) - 1:
            _write_shard(os.path.join(directory, shard_name(shards)), train_docs[start:i + 1])
            shards, start, chars = shards + 1, i + 1, 0
    _write_shard(os.path.join(directory, VAL_FILENAME), val_docs)
    _atomic_write_bytes(manifest_path, json.dumps(manifest).encode())  # last: an interrupted build is redone
    print(f"data: {len(train_docs):,} train documents in {shards} shards, {len(val_docs):,} val documents, "
          f"from {len(files)} files in {time.time() - t0:.1f}s")

# ---------------------------------------------------------------------------
# BPE: train the merges, record each token's byte count
# ---------------------------------------------------------------------------

def _training_text(max_chars):
    """Heads of train documents, in shard order, until max_chars; prints progress for long runs."""
    t0, chars, next_report = time.time(), 0, TOKENIZER_PROGRESS_CHARS
    for path in train_shard_paths():
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                doc = text[:TOKENIZER_DOC_CHARS]
                chars += len(doc)
                yield doc
                if chars >= next_report:
                    print(f"tokenizer: read {chars / 1e6:.0f}M chars ({chars / 1e6 / (time.time() - t0):.1f}M chars/s)")
                    next_report += TOKENIZER_PROGRESS_CHARS
                if chars >= max_chars:
                    return


def _check_round_trip(enc, text):
    if enc.decode(enc.encode_ordinary(text)) != text:
        raise PrepareError(f"tokenizer: round trip failed on {text[:60]!r}")


def token_byte_lengths(enc):
    """Bytes each token counts for in bits per byte, as the upstream defines them: the UTF-8 length of the
    token's decoded text, 0 for special tokens (which drops them from the metric). A token holding part of a
    UTF-8 character decodes to U+FFFD and counts its 3 bytes, not its raw length: kept, so that val_bpb
    stays comparable with the upstream's figures."""
    specials = set(enc.special_tokens_set)
    lengths = []
    for i in range(enc.n_vocab):
        text = enc.decode([i])
        lengths.append(0 if text in specials else len(text.encode("utf-8")))
    return lengths


def _write_token_bytes(enc, path):
    buffer = io.BytesIO()
    torch.save(torch.tensor(token_byte_lengths(enc), dtype=torch.int32), buffer)
    _atomic_write_bytes(path, buffer.getvalue())


def train_tokenizer(vocab_size=VOCAB_SIZE, max_chars=TOKENIZER_MAX_CHARS):
    """Train BPE on the train shards; save tokenizer.pkl (a tiktoken Encoding) and token_bytes.pt."""
    directory = tokenizer_dir()
    pkl_path = os.path.join(directory, "tokenizer.pkl")
    bytes_path = os.path.join(directory, "token_bytes.pt")
    if os.path.exists(pkl_path) and os.path.exists(bytes_path):
        with open(pkl_path, "rb") as f:
            trained = pickle.load(f)
        if trained.n_vocab == vocab_size:
            if torch.load(bytes_path).tolist() != token_byte_lengths(trained):  # written by an earlier definition
                _write_token_bytes(trained, bytes_path)
                print(f"tokenizer: rewrote {bytes_path} with the upstream's byte counts")
            print(f"tokenizer: already trained at {directory} (vocab_size: {trained.n_vocab})")
            return
        print(f"tokenizer: found vocab_size {trained.n_vocab}, VOCAB_SIZE is {vocab_size}; retraining")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise PrepareError(f"VOCAB_SIZE = {vocab_size} is below byte level; it must be at least {min_vocab}")
    if not train_shard_paths() or not os.path.exists(os.path.join(data_dir(), VAL_FILENAME)):
        raise PrepareError(f"{data_dir()}: needs train shards and {VAL_FILENAME}; download them or use --source")

    print(f"tokenizer: training BPE to vocab_size {vocab_size} on at most {max_chars / 1e6:.0f}M chars")
    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(_training_text(max_chars), vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = {bytes(piece): rank for piece, rank in bpe.get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    enc = tiktoken.Encoding(name="autoresearch", pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens=specials)
    if enc.n_vocab != vocab_size:  # tiny corpora run out of pairs to merge
        print(f"tokenizer: note: the text only supports {len(ranks) - 256} merges; vocab_size is {enc.n_vocab}, not {vocab_size}")

    _check_round_trip(enc, SANITY_TEXT)
    for doc in itertools.islice(_training_text(1_000_000), 100):
        _check_round_trip(enc, doc)

    os.makedirs(directory, exist_ok=True)
    _write_token_bytes(enc, bytes_path)
    _atomic_write_bytes(pkl_path, pickle.dumps(enc))
    print(f"tokenizer: trained in {time.time() - t0:.1f}s, vocab_size: {enc.n_vocab}, saved to {directory}")

# ---------------------------------------------------------------------------
# What train.py uses at run time: the tokenizer and its byte counts
# ---------------------------------------------------------------------------

class Tokenizer:
    """The trained tiktoken encoding, plus BOS handling and threaded batch encoding."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)

    @classmethod
    def from_directory(cls, directory=None):
        path = os.path.join(directory or tokenizer_dir(), "tokenizer.pkl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no tokenizer; run `python prepare.py` first")
        with open(path, "rb") as f:
            return cls(pickle.load(f))

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        """Token ids of a string, or a list of id lists for a list of strings; prepend is a token id or name."""
        if isinstance(prepend, str):
            prepend = self.enc.encode_single_token(prepend)
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        if isinstance(text, list):
            return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]
        raise TypeError(f"encode takes a str or a list of str, not {type(text).__name__}")

    def decode(self, ids):
        return self.enc.decode(ids)

    def fingerprint(self):
        """A digest of every token's bytes in id order: the same for equal encodings, wherever they were loaded."""
        digest = hashlib.sha256()
        for i in range(self.enc.n_vocab):
            piece = self.enc.decode_single_token_bytes(i)
            digest.update(len(piece).to_bytes(4, "little") + piece)
        return digest.hexdigest()


def get_token_bytes(device="cpu"):
    """int32 tensor [vocab]: UTF-8 byte length of each token, 0 for special tokens."""
    return torch.load(os.path.join(tokenizer_dir(), "token_bytes.pt"), map_location=device)

# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned best-fit packing (the upstream's algorithm, one packer for training and val)
# ---------------------------------------------------------------------------

def pack_rows(doc_batches, row_len, buffer_size=PACK_BUFFER):
    """
    Pack documents into rows of exactly row_len tokens, no padding. doc_batches yields lists of documents
    (token lists, each starting with BOS): the tokenizer's batches, read as whole batches.

    Before each document is placed, whole batches are added to the buffer while it holds fewer than
    buffer_size documents (so it holds up to buffer_size + one batch - 1). The row is then extended by the
    longest buffered document that still fits (the oldest among equals); when none fits, the shortest (the
    oldest among equals) is cropped to fill the row and its tail dropped. Every row starts with BOS and only
    its last document can be cut short. When doc_batches runs out the buffer is drained; the unfinished last
    row is dropped. This is the upstream's make_dataloader packing, document for document.
    """
    batches = iter(doc_batches)
    lengths, buffer = [], []  # sorted by length, ties in arrival order: "longest that fits" is a bisection
    exhausted = False
    while True:
        row = []
        while len(row) < row_len:
            while len(buffer) < buffer_size and not exhausted:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                for doc in batch:
                    i = bisect.bisect_right(lengths, len(doc))
                    lengths.insert(i, len(doc))
                    buffer.insert(i, doc)
            if not buffer:
                return  # out of documents: drop the unfinished row
            space = row_len - len(row)
            fits = bisect.bisect_right(lengths, space)
            if fits:
                i = bisect.bisect_left(lengths, lengths[fits - 1])  # the oldest of the longest that fit
                row.extend(buffer.pop(i))
            else:
                i = 0  # the shortest, oldest first
                row.extend(buffer.pop(0)[:space])
            lengths.pop(i)
        yield row


def _document_batches(split, epochs=None, docs_per_batch=128):
    """(texts, epoch) from the train shards or the val shard, cycling forever unless epochs is given.
    A batch is at most docs_per_batch documents of one parquet row group, as the upstream reads them."""
    paths = train_shard_paths() if split == "train" else [os.path.join(data_dir(), VAL_FILENAME)]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise FileNotFoundError(f"{data_dir()}: no {split} data; run `python prepare.py` first")
    for epoch in itertools.count(1) if epochs is None else range(1, epochs + 1):
        for path in paths:
            pf = pq.ParquetFile(path)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), docs_per_batch):
                    yield texts[i:i + docs_per_batch], epoch


def _token_batches(tokenizer, split, epochs=None, reading=None):
    """Batches of BOS-prefixed token lists, in file order; reading["epoch"] follows the pass being read."""
    bos = tokenizer.get_bos_token_id()
    for texts, epoch in _document_batches(split, epochs):
        if reading is not None:
            reading["epoch"] = epoch
        yield tokenizer.encode(texts, prepend=bos)


def _batches(rows, B, T, device, reading):
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    pinned = device.type == "cuda"
    while True:
        batch = list(itertools.islice(rows, B))
        if len(batch) < B:
            return
        packed = torch.tensor(batch, dtype=torch.long)
        # A fresh pinned buffer per batch: torch's caching host allocator does not hand it out again until
        # its non_blocking copy has finished, so the next batch can't overwrite data still in flight.
        host = torch.empty((2, B, T), dtype=torch.long, pin_memory=pinned)
        host[0].copy_(packed[:, :-1])
        host[1].copy_(packed[:, 1:])
        xy = host.to(device, non_blocking=pinned)
        yield xy[0], xy[1], reading["epoch"]


def make_dataloader(tokenizer, B, T, split, buffer_size=PACK_BUFFER, device=None):
    """
    Infinite iterator of (x, y, epoch): int64 (B, T) tensors, y = x shifted by one, rows packed by pack_rows
    from the split's documents, cycling over its shards. device defaults to CUDA if available, else CPU.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    reading = {"epoch": 1}
    rows = pack_rows(_token_batches(tokenizer, split, reading=reading), T + 1, buffer_size)
    return _batches(rows, B, T, device, reading)

# ---------------------------------------------------------------------------
# Evaluation (the fixed metric)
# ---------------------------------------------------------------------------

def _val_token_batches(tokenizer, min_tokens):
    """The val shard's token batches, cycled like the upstream's loader if one pass holds at least
    min_tokens tokens; a smaller split is read once (see evaluate_bpb)."""
    passed = 0
    for batch in _token_batches(tokenizer, "val", epochs=1):
        passed += sum(map(len, batch))
        yield batch
    if passed >= min_tokens:
        yield from _token_batches(tokenizer, "val")


def _val_rows_path(tokenizer, T, num_rows):
    """Where the packed val rows for this tokenizer, val shard, T, num_rows and PACK_BUFFER are kept: the name
    holds a digest of all five, so a retrained tokenizer or a rebuilt shard never meets stale rows."""
    digest = hashlib.sha256(tokenizer.fingerprint().encode())
    with open(os.path.join(data_dir(), VAL_FILENAME), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"{T}:{num_rows}:{PACK_BUFFER}".encode())
    return os.path.join(tokenizer_dir(), f"val_rows-{digest.hexdigest()[:16]}.pt")


def val_rows(tokenizer, T, num_rows):
    """The rows val_bpb scores, of T + 1 tokens, as a (rows, T + 1) int64 tensor: at most num_rows, whatever
    the batch size (see evaluate_bpb). Packed once and then kept beside the tokenizer: tokenizing and packing
    ~21 M tokens takes seconds of host time that every experiment's evaluation would otherwise wait for."""
    path = _val_rows_path(tokenizer, T, num_rows)
    try:
        return torch.load(path).long()
    except FileNotFoundError:
        pass
    rows = list(itertools.islice(pack_rows(_val_token_batches(tokenizer, num_rows * T), T + 1, PACK_BUFFER), num_rows))
    packed = torch.tensor(rows, dtype=torch.int32).reshape(len(rows), T + 1)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    _atomic_write_bytes(path, buffer.getvalue())
    return packed.long()


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """
    Bits per byte on the validation shard: independent of vocabulary size, so tokenizers are comparable.
    Sums per-token cross-entropy (nats) and UTF-8 bytes over targets that are not special tokens, then
    divides. model(x, y, reduction='none') must return per-token losses of shape (B, T) or (B*T,).

    The rows: pack_rows over the val shard's documents with buffer PACK_BUFFER, read as the upstream's
    dataloader reads them (row groups in 128-document tokenizer batches, the shard repeated when it ends),
    into rows of MAX_SEQ_LEN + 1 tokens; the first EVAL_TOKENS // MAX_SEQ_LEN of them are scored. These are
    the upstream's rows at its default DEVICE_BATCH_SIZE (128 divides them), and they are the same rows at
    every batch_size here: rows are counted, not batches, and the last batch may be short. (Repeating means
    that a split of fewer than PACK_BUFFER documents has copies of them in the buffer at once, as upstream.)

    A small val split, one whose documents hold fewer tokens (BOS included) than the scored rows do,
    (EVAL_TOKENS // MAX_SEQ_LEN) * MAX_SEQ_LEN, is read once instead of repeated: every row it packs into
    is scored, no document counts twice, and a note says how many tokens that was. (The upstream would
    score some documents twice; small splits occur at toy sizes, where no upstream figure exists.)
    """
    if batch_size < 1:
        raise ValueError(f"evaluate_bpb: batch_size must be at least 1, not {batch_size}")
    device = next(model.parameters()).device
    token_bytes = get_token_bytes(device)
    num_rows = EVAL_TOKENS // MAX_SEQ_LEN
    rows = val_rows(tokenizer, MAX_SEQ_LEN, num_rows)
    bos = tokenizer.get_bos_token_id()
    accumulate = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total_nats = torch.zeros((), dtype=accumulate, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    done = len(rows)
    if done == 0:
        raise ValueError(f"{data_dir()}: {VAL_FILENAME} holds less than one row of {MAX_SEQ_LEN + 1} tokens")
    try:
        for start in range(0, done, batch_size):
            batch = rows[start:start + batch_size]
            if start and len(batch) < batch_size:
                # pad a short last batch with BOS rows, whose targets count nothing: every batch then has one
                # shape, and a compiled model is not compiled again for the last one
                batch = torch.cat([batch, torch.full((batch_size - len(batch), MAX_SEQ_LEN + 1), bos)])
            x, y = torch.stack((batch[:, :-1], batch[:, 1:])).to(device)  # contiguous, like the dataloader's
            loss = model(x, y, reduction="none").reshape(-1)
            nbytes = token_bytes[y.reshape(-1)]
            total_nats += torch.where(nbytes > 0, loss, 0.0).sum(dtype=accumulate)
            total_bytes += nbytes.sum()
    finally:
        model.train(was_training)
    if done < num_rows:
        print(f"note: val split holds only {done * MAX_SEQ_LEN:,} of EVAL_TOKENS={EVAL_TOKENS:,} tokens; val_bpb uses those")
    return total_nats.item() / (math.log(2) * total_bytes.item())

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch or build the data shards and train the tokenizer, once")
    parser.add_argument("--num-shards", type=int, default=10, help="train shards to download (-1 = all); the val shard is always fetched")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--source", metavar="DIR", help="build the shards from a local folder of parquet/jsonl/text files instead")
    args = parser.parse_args(argv)
    if args.num_shards < 1 and args.num_shards != -1:
        parser.error("--num-shards must be -1 (all) or at least 1")

    print(f"cache: {cache_dir()}")
    try:
        if args.source:
            build_from_source(args.source)
        else:
            download_data(MAX_SHARD if args.num_shards == -1 else args.num_shards, args.download_workers)
        train_tokenizer()
        rows = val_rows(Tokenizer.from_directory(), MAX_SEQ_LEN, EVAL_TOKENS // MAX_SEQ_LEN)  # packed once, here
        print(f"val rows: {len(rows):,} of {MAX_SEQ_LEN + 1} tokens, kept beside the tokenizer")
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print("done: ready to train")


if __name__ == "__main__":
    main()
