"""
The sealed evaluator: scores the model that train.py saved, in a process of its own, running none of train.py's code.

Usage:
    python evaluate.py model.export      # prints val_bpb; a model it refuses ends with `refused: <why>` and exit code 3

train.py ends with save_model(model, ...): torch.export turns the trained model into a graph of ATen operations,
written with its weights into a container of our own (a JSON header, then raw tensor bytes). Loading it executes
nothing from the file: no pickle (torch.export.load unpickles, so a crafted file could run code here), no symbolic
shapes (their expressions go through sympy's eval), no guard code, no node metadata. What the graph may do is then
checked before it runs, and while it runs:

- operations: ATen operators only (plus getitem and autocast regions), none that mutates its inputs, none random;
  the graph changes no buffer and takes one input, a (batch, MAX_SEQ_LEN) int64 tensor of token ids;
- output: one (batch, MAX_SEQ_LEN, vocab) tensor of finite logits; the loss is computed here, from the logits;
- causality: on CAUSALITY_BATCHES scored batches, picked at random, every row is scored again with its tokens from a
  random position t on replaced: its logits before t must not change, nor (for the rows left whole) anywhere. That
  refuses a model that looks ahead in its row, reads other rows of its batch, or is not deterministic.

val_bpb is then prepare.evaluate_bpb on the pinned rows: the same number as the in-process evaluation of the same
weights (tests/test_evaluate.py holds that at toy size on the CPU).
This file is fixed, like prepare.py: the harness runs the workspace's copy, never the candidate's.
"""

import inspect
import operator
import json
import math
import os
import random
import re
import struct
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import EVAL_TOKENS, MAX_SEQ_LEN, Tokenizer, _atomic_write_bytes, evaluate_bpb, val_rows

# ---------------------------------------------------------------------------
# The contract between train.py and this file
# ---------------------------------------------------------------------------

MODEL_FILE = "model.export"           # what train.py must leave in its folder
MAGIC = b"autoresearch-export 1\n"    # the container's first bytes
MAX_MODEL_BYTES = 4 << 30             # a model file larger than this is refused unread (~1B bf16 parameters)
MAX_HEADER_BYTES = 256 << 20          # the JSON header: the graph and the tensor table
MAX_BATCH = 4096                      # rows per call the graph may be exported for
CAUSALITY_BATCHES = 4                 # scored batches checked again with perturbed rows (~5% more work at full size)
WHOLE_ROWS = 2                        # rows per checked batch left unperturbed: determinism and cross-row reads
REFUSED_EXIT_CODE = 3

TENSOR_DTYPES = {name: getattr(torch, name) for name in
                 ("float32", "bfloat16", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}
# torch.export's node targets that a language model needs; anything else (custom ops, Python callables) is refused
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
OTHER_TARGETS = {"_operator.getitem", "torch.ops.higher_order.wrap_with_autocast"}
# argument kinds of the serialized graph that could carry code or symbolic shapes (sympy parses those with eval)
REFUSED_ARGUMENTS = {"as_sym_int", "as_sym_ints", "as_sym_bool", "as_sym_bools", "as_sym_float", "as_sym_floats",
                     "as_custom_obj", "as_operator", "as_string_to_argument", "as_expr", "expr_str"}
RANDOM_OP = re.compile(r"rand|bernoulli|dropout|normal|multinomial|uniform|exponential|poisson|geometric|cauchy")


class Refused(Exception):
    """A model the evaluator will not score; str() is the one-line reason."""

# ---------------------------------------------------------------------------
# Saving (runs in train.py's process)
# ---------------------------------------------------------------------------

class _Logits(nn.Module):
    """What is exported: token ids -> logits, under the training's autocast when it had one."""

    def __init__(self, model, autocast_dtype):
        super().__init__()
        self.model, self.autocast_dtype = model, autocast_dtype

    def forward(self, idx):
        if self.autocast_dtype is None:
            return self.model(idx)
        with torch.autocast(device_type=idx.device.type, dtype=self.autocast_dtype):
            return self.model(idx)


def _tensor_bytes(t):
    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def save_model(model, batch_size, path=MODEL_FILE, autocast_dtype=None):
    """Export `model` (idx (batch_size, MAX_SEQ_LEN) int64 -> logits (batch_size, MAX_SEQ_LEN, vocab)) and write it
    to path, atomically. Its attention must be exportable (SDPA, masks as tensors): FlexAttention's block masks are not
    serializable. Returns the file's size in bytes."""
    from torch._export.serde.serialize import serialize
    device = next(model.parameters()).device
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        example = torch.zeros(batch_size, MAX_SEQ_LEN, dtype=torch.long, device=device)
        program = torch.export.export(_Logits(model, autocast_dtype), (example,), strict=False)
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    skip = {k: False for k in ("serialize_state_dict", "serialize_constants", "serialize_example_inputs")
            if k in inspect.signature(serialize).parameters}  # we write the tensors ourselves, without pickle
    graph = json.loads(serialize(program, **skip).exported_program)
    table, chunks, offset = {}, [], 0
    for kind, tensors in (("state", program.state_dict), ("constant", program.constants)):
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"save_model: {name} is a {type(t).__name__}, not a tensor: only tensors can be saved")
            data = _tensor_bytes(t)
            kind = "parameter" if isinstance(t, nn.Parameter) else kind
            table[name] = {"kind": kind, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                           "offset": offset, "nbytes": len(data)}
            chunks.append(data)
            offset += len(data)
    header = json.dumps({"program": graph, "tensors": table, "batch": batch_size, "seq_len": MAX_SEQ_LEN,
                         "device": device.type}).encode()
    payload = b"".join([MAGIC, struct.pack("<Q", len(header)), header, *chunks])
    _atomic_write_bytes(os.fspath(path), payload)
    return len(payload)

# ---------------------------------------------------------------------------
# Loading (runs here, on an untrusted file)
# ---------------------------------------------------------------------------

def _check_serialized(value):
    """Refuse what the deserializer would turn into code or symbolic shapes; drop node metadata (stack traces and
    module paths that code generation copies into comments), in place."""
    if isinstance(value, dict):
        if "target" in value and "inputs" in value:  # a node
            target = value["target"]
            if not isinstance(target, str) or not (ATEN_TARGET.fullmatch(target) or target in OTHER_TARGETS):
                raise Refused(f"the graph calls {str(target)[:80]!r}: only ATen operators may run")
            value["metadata"] = {}
        for key, item in value.items():
            if key in REFUSED_ARGUMENTS:
                raise Refused(f"the graph holds a {key} argument (symbolic shapes and custom objects are not allowed)")
            if key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values", "range_constraints") and item:
                raise Refused(f"the graph holds {key}: export with static shapes")
            _check_serialized(item)
    elif isinstance(value, list):
        for item in value:
            _check_serialized(item)


def _read_container(path):
    """(header, {name: tensor}) of a model file, every size and offset checked before anything is read."""
    size = os.path.getsize(path)
    if size > MAX_MODEL_BYTES:
        raise Refused(f"{path} is {size / 2**30:.1f} GiB, over the evaluator's {MAX_MODEL_BYTES / 2**30:.0f} GiB")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise Refused(f"{path} is not a model saved by evaluate.save_model (bad magic)")
        (header_len,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
        if header_len > min(MAX_HEADER_BYTES, size):
            raise Refused(f"{path}: header of {header_len:,} bytes is larger than allowed or than the file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Refused(f"{path}: header is not JSON ({e})") from None
        data_start = len(MAGIC) + 8 + header_len
        data = f.read()
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict) or not isinstance(header.get("program"), dict):
        raise Refused(f"{path}: header lacks its program or tensor table")
    tensors = {}
    for name, entry in header["tensors"].items():
        try:
            dtype, shape = TENSOR_DTYPES[entry["dtype"]], [int(n) for n in entry["shape"]]
            offset, nbytes, kind = int(entry["offset"]), int(entry["nbytes"]), entry["kind"]
        except (KeyError, TypeError, ValueError):
            raise Refused(f"{path}: tensor {name[:80]!r} has a bad table entry") from None
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if min(shape, default=0) < 0 or nbytes != expected or offset < 0 or offset + nbytes > len(data) or kind not in ("parameter", "state", "constant"):
            raise Refused(f"{path}: tensor {name[:80]!r} does not fit its shape or the file (data at byte {data_start + offset:,})")
        raw = torch.frombuffer(bytearray(data[offset:offset + nbytes]), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        tensors[name] = (kind, raw.view(dtype).reshape(shape))
    return header, tensors


def load_model(path, device):
    """The exported program of a model file, checked. Raises Refused with the reason."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize
    header, tensors = _read_container(path)
    program_json = header["program"]
    if program_json.get("guards_code"):
        raise Refused("the graph carries guard code: export with static shapes")
    _check_serialized(program_json)
    state = {n: nn.Parameter(t.to(device), requires_grad=False) if kind == "parameter" else t.to(device)
             for n, (kind, t) in tensors.items() if kind != "constant"}
    constants = {n: t.to(device) for n, (kind, t) in tensors.items() if kind == "constant"}
    try:
        program = deserialize(SerializedArtifact(json.dumps(program_json).encode(), state, constants, b""))
    except Exception as e:  # a malformed graph: the deserializer's own error, in one line
        raise Refused(f"the graph cannot be loaded: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    _check_program(program)
    return program


def _check_program(program):
    """What the loaded graph may do: see the module docstring."""
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise Refused("the graph writes its buffers or inputs: a model must be a pure function of its tokens")
    if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
        raise Refused(f"the graph takes {len(signature.user_inputs)} inputs and returns {len(signature.user_outputs)} "
                      "outputs: it must map token ids to logits")
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise Refused(f"the graph has a {node.op} node ({node.target}): only operators may run")
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                if target.namespace != "aten":
                    raise Refused(f"the graph calls {target}: only ATen operators may run")
                if target._schema.is_mutable:
                    raise Refused(f"the graph calls {target}, which writes its arguments")
                if RANDOM_OP.search(target._schema.name):
                    raise Refused(f"the graph calls {target}, which is random")
            elif not (target is operator.getitem or
                      target is torch.ops.higher_order.wrap_with_autocast):
                raise Refused(f"the graph calls {getattr(target, '__name__', target)}: only operators may run")

# ---------------------------------------------------------------------------
# Scoring: evaluate_bpb over the program, with the causality checks on a few batches
# ---------------------------------------------------------------------------

class SealedModel(nn.Module):
    """The loaded program as evaluate_bpb calls a model: (x, y, reduction='none') -> per-token losses, the loss
    computed here from its logits. Batches whose index is in `checked` are run again perturbed (see check_causal)."""

    def __init__(self, program, vocab_size, checked, rng):
        super().__init__()
        self.graph_module = program.graph_module
        signature = program.graph_signature
        values = {**program.state_dict, **program.constants}
        self.inputs = [values[spec.target] for spec in signature.input_specs if spec.target is not None]
        self.anchor = nn.Parameter(torch.zeros(1, device=self.inputs[0].device if self.inputs else "cpu"), requires_grad=False)
        self.vocab_size, self.checked, self.rng = vocab_size, set(checked), rng
        self.calls, self.rows_checked = 0, 0

    def logits(self, idx):
        out = self.graph_module(*self.inputs, idx)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (*idx.shape, self.vocab_size) or not logits.is_floating_point():
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise Refused(f"the model returned {shape}, not logits of shape {(*idx.shape, self.vocab_size)}")
        return logits

    def forward(self, x, y, reduction="none"):
        logits = self.logits(x)
        # as the in-process evaluation computes it (train.py's GPT.forward): the same number for the same weights
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                               reduction="none").view(y.shape)
        if not torch.isfinite(loss).all():  # the losses, not the logits: a pass over (B, T), not (B, T, vocab)
            raise Refused("the model's logits give a NaN or infinite loss")
        if self.calls in self.checked:
            self.rows_checked += check_causal(self.logits, x, logits, self.vocab_size, self.rng)
        self.calls += 1
        return loss if reduction == "none" else loss.mean()


def check_causal(run, x, logits, vocab_size, rng):
    """Score x again with each row's tokens from a random position t on replaced by random tokens (WHOLE_ROWS rows
    stay whole): logits before t must be exactly the same. Returns the rows checked; raises Refused."""
    B, T = x.shape
    cuts = [T if r < WHOLE_ROWS else rng.randrange(1, T) for r in rng.sample(range(B), B)]
    noise = torch.randint(vocab_size, (B, T), generator=torch.Generator().manual_seed(rng.getrandbits(63))).to(x.device)
    position = torch.arange(T, device=x.device)
    cut = torch.tensor(cuts, device=x.device)[:, None]
    # every token from the cut on replaced; the first one always by another token (x + 1 + something, mod vocab)
    shifted = (x + 1 + noise % max(vocab_size - 1, 1)) % vocab_size
    perturbed = torch.where(position > cut, noise, torch.where(position == cut, shifted, x))
    again = run(perturbed)
    for r, t in enumerate(cuts):
        if not torch.equal(logits[r, :t], again[r, :t]):
            where = int((logits[r, :t] != again[r, :t]).any(dim=-1).nonzero()[0])
            if t == T:
                raise Refused(f"the model is not deterministic or reads other rows of its batch: row {r}, left whole, "
                              f"changed at position {where} when other rows changed")
            raise Refused(f"the model is not causal: in row {r}, the logits at position {where} changed when the tokens "
                          f"from position {t} on changed")
    return B


def evaluate_file(path, device=None):
    """val_bpb of a saved model, with what the evaluation measured. Raises Refused."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.time()
    program = load_model(path, device)
    inputs = program.graph_signature.user_inputs
    spec = program.graph_module.graph.find_nodes(op="placeholder")[-1].meta.get("val")
    if spec is None or spec.dtype != torch.long or spec.dim() != 2 or spec.shape[1] != MAX_SEQ_LEN or not 1 <= spec.shape[0] <= MAX_BATCH:
        shape = None if spec is None else (tuple(spec.shape), str(spec.dtype))
        raise Refused(f"the graph's input {inputs[0]} is {shape}: it must be (batch, {MAX_SEQ_LEN}) int64 token ids, batch <= {MAX_BATCH}")
    batch = int(spec.shape[0])
    tokenizer = Tokenizer.from_directory()
    rng = random.SystemRandom()  # the model cannot know which batches are checked
    num_batches = -(-len(val_rows(tokenizer, MAX_SEQ_LEN, EVAL_TOKENS // MAX_SEQ_LEN)) // batch)
    checked = rng.sample(range(num_batches), min(CAUSALITY_BATCHES, num_batches))
    model = SealedModel(program, tokenizer.get_vocab_size(), checked, rng)
    load_seconds = time.time() - t0
    val_bpb = evaluate_bpb(model, tokenizer, batch)
    if not math.isfinite(val_bpb):
        raise Refused(f"val_bpb is {val_bpb}")
    return {"val_bpb": val_bpb, "eval_seconds": time.time() - t0, "load_seconds": load_seconds,
            "batch": batch, "rows_checked": model.rows_checked, "device": device.type}


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else MODEL_FILE
    try:
        result = evaluate_file(path)
    except Refused as e:
        print(f"refused: {e}", flush=True)
        sys.exit(REFUSED_EXIT_CODE)
    except FileNotFoundError as e:
        print(f"refused: {e.filename or e}: no such file (train.py must end by saving {MODEL_FILE})", flush=True)
        sys.exit(REFUSED_EXIT_CODE)
    print(f"evaluation: {path} | batch {result['batch']} x {MAX_SEQ_LEN} | {result['device']} | loaded in "
          f"{result['load_seconds']:.1f}s | causality checked on {result['rows_checked']} rows")
    print(f"val_bpb:          {result['val_bpb']:.6f}")
    print(f"eval_seconds:     {result['eval_seconds']:.1f}", flush=True)


if __name__ == "__main__":
    main()
