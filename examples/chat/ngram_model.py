"""A word n-gram model: counts which word follows each run of words in a text, then samples.

It is the smallest honest text model: no neural network, no understanding. Trained on
one text, it continues a prompt with words that followed the prompt's last words in that
text, backing off to shorter contexts when the longer ones were never seen. Sampling uses
a `random.Random` seeded by the caller, so the same prompt and seed give the same text.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,!?;:]", re.IGNORECASE)
SENTENCE_END = {".", "!", "?"}
FUNCTION_WORDS = set(
    "a an and are about as at be but by can do does for from how i in is it me my of on or so "
    "than that the then there this to was we what when where which who why will with you your".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-case words and punctuation marks: "Hello, Ray!" -> ["hello", ",", "ray", "!"]."""
    return _TOKEN.findall(text.lower())


def detokenize(tokens: list[str], sentence_start: bool = True, spelling: dict[str, str] | None = None) -> str:
    """Tokens back to a sentence-cased text: no space before punctuation, each word spelled
    as in `spelling` ("gpu" -> "GPU"; default: as it is).

    `sentence_start=False` leaves the first word as it is (a continuation mid-sentence).
    """
    words: list[str] = []
    capital = sentence_start
    for token in tokens:
        word = (spelling or {}).get(token, token)
        if capital and word[0].isalpha():
            word = word[0].upper() + word[1:]
        if token in SENTENCE_END or token in {",", ";", ":"}:
            if words:
                words[-1] += word
            else:
                words.append(word)
            capital = token in SENTENCE_END
            continue
        capital = False
        words.append(word)
    return " ".join(words)


class NGramModel:
    def __init__(self, text: str, order: int = 3) -> None:
        if order < 2:
            raise ValueError("order must be at least 2 (a context of one word)")
        self.order = order
        spelled = _TOKEN.findall(text)
        tokens = [token.lower() for token in spelled]
        if not tokens:
            raise ValueError("the training text has no words")
        # each word as the text spells it most often mid-sentence ("GPU", "Ray", "I")
        forms = Counter(spelled[i] for i in range(1, len(spelled)) if spelled[i - 1] not in SENTENCE_END)
        self.spelling = {form.lower(): form for form, _ in reversed(forms.most_common())}
        self.unigrams = Counter(tokens)
        # next-token counts for each context of 1 .. order-1 tokens, read left to right
        self.next: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for i in range(1, len(tokens)):
            for size in range(1, order):
                if i - size >= 0:
                    self.next[tuple(tokens[i - size : i])][tokens[i]] += 1
        self.starts = Counter(tokens[i] for i in range(1, len(tokens)) if tokens[i - 1] in SENTENCE_END)
        self.starts[tokens[0]] += 1

    def rarest_known(self, words: list[str]) -> str | None:
        """The word of `words` the text used least (the most telling one), or None if it knows none.

        Function words ("what", "the") are never chosen, and a plural it never saw counts
        as its singular ("gpus" as "gpu").
        """
        known = []
        for word in words:
            if word not in self.unigrams and word.endswith("s"):
                word = word[:-1]
            if word.isalnum() and word not in FUNCTION_WORDS and word in self.unigrams:
                known.append(word)
        return min(known, key=lambda w: (self.unigrams[w], known.index(w))) if known else None

    def continue_from(self, context: list[str], rng: random.Random, max_words: int) -> list[str]:
        """Sample up to `max_words` tokens after `context`, stopping at the end of a sentence."""
        history = list(context)
        generated: list[str] = []
        while sum(token.isalnum() for token in generated) < max_words:
            token = self._sample(history, rng)
            generated.append(token)
            history.append(token)
            if token in SENTENCE_END and len(generated) > 1:
                break
        return generated

    def _sample(self, history: list[str], rng: random.Random) -> str:
        for size in range(min(self.order - 1, len(history)), 0, -1):
            counts = self.next.get(tuple(history[-size:]))
            if counts:
                return _weighted(counts, rng)
        return _weighted(self.starts, rng)


    def text(self, tokens: list[str], sentence_start: bool = True) -> str:
        """Tokens as text, each word spelled as the training text spells it."""
        return detokenize(tokens, sentence_start, self.spelling)


def _weighted(counts: Counter[str], rng: random.Random) -> str:
    words = sorted(counts)  # a fixed order, so a seed means the same choice on every machine
    return rng.choices(words, weights=[counts[w] for w in words])[0]
