"""Built-in mutators, each runnable as `python -m pytest_autoresearch.mutators.<name>` in a sandbox.

- `hparams`: LLM-free; nudges one or two UPPER_CASE constants of the artifact, learning from results.jsonl.
- `constants` (a library, not a mutator): finds UPPER_CASE constants in source and rewrites their values.
"""
