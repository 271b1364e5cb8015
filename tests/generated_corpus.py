"""Generated text for tests: deterministic, offline, the same on every clone."""

from __future__ import annotations

import random

SYLLABLES = ["ka", "lo", "mi", "ter", "an", "su", "ro", "vel", "di", "on", "pra", "es", "tu", "ni", "gar", "be",
             "th", "qu", "ix", "ol", "re", "ma", "sen", "cy"]
ACCENTED = ["café", "naïve", "über", "façade", "你好", "🙂", "Ωmega"]


def generated_documents(n: int, seed: int) -> list[str]:
    """n documents of pseudo-English: a few hundred made-up words drawn with Zipf-like frequencies, sentences
    and paragraphs, an occasional non-ASCII word, lengths from a sentence to ~12,000 characters (a heavy
    tail, like web pages). Deterministic in (n, seed): every clone, every machine, the same text."""
    words_rng = random.Random(0)
    words = sorted({"".join(words_rng.choice(SYLLABLES) for _ in range(words_rng.randint(1, 4))) for _ in range(600)})
    words_rng.shuffle(words)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        target = min(12_000, int(rng.paretovariate(1.1) * 150))
        paragraphs, size = [], 0
        while size < target:
            sentences = []
            for _ in range(rng.randint(1, 6)):
                sentence = rng.choices(words, weights, k=rng.randint(3, 18))
                if rng.random() < 0.05:
                    sentence[rng.randrange(len(sentence))] = rng.choice(ACCENTED)
                if rng.random() < 0.1:
                    sentence.insert(rng.randrange(len(sentence)), str(rng.randint(0, 2026)))
                sentences.append(" ".join(sentence).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
            paragraphs.append(" ".join(sentences))
            size += len(paragraphs[-1])
        docs.append("\n\n".join(paragraphs))
    return docs
