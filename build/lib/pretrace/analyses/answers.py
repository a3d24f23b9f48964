"""Finding a query's answer (and intermediate results) in document text, as a whole token.

Matching rules, so that a number is only found where the text states that number:

- surrounding whitespace and trailing sentence punctuation of the answer are ignored
  ("Paris." is searched as "Paris"); whitespace inside it matches any run of whitespace;
- an answer must not touch a word character on either side ("12" is not in "312", "a12",
  "12a"; "Rome" is not in "Romeo");
- an answer starting with a digit is not the tail of a decimal or grouped number ("3.12",
  "1,12") nor the magnitude of a negative number ("-12", "(-12)"; a binary minus as in
  "5-12" is fine);
- an answer ending with a digit is not the head of a decimal or grouped number ("12.5",
  "12,000");
- a number of four or more digits matches with or without thousands separators ("29,029" and
  "29029" find each other), as Ruis et al. searched number keywords in both forms;
- letters match case-insensitively.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache

import numpy as np

_TRAILING = ".,;:!?"
EXCERPT_CHARS = 300


def normalize_answer(answer: str | None) -> str:
    """The string actually searched for: stripped of spaces and sentence punctuation."""
    if not answer:
        return ""
    text = answer.strip()
    while text and text[-1] in _TRAILING:
        text = text[:-1].rstrip()
    return text


_NUMBER = re.compile(r"(-?)(\d{1,3}(?:,\d{3})+|\d{4,})(\.\d+)?")


def _variants(text: str) -> list[str]:
    """The spellings searched for an answer: a long number with and without thousands separators."""
    number = _NUMBER.fullmatch(text)
    if number is None:
        return [text]
    sign, digits, decimals = number.group(1), number.group(2).replace(",", ""), number.group(3) or ""
    grouped = f"{int(digits):,}"
    return [f"{sign}{digits}{decimals}", f"{sign}{grouped}{decimals}"]


def _body(text: str) -> str:
    forms = [r"\s+".join(re.escape(part) for part in form.split()) for form in _variants(text)]
    return forms[0] if len(forms) == 1 else "(?:" + "|".join(forms) + ")"


@lru_cache(maxsize=4096)
def answer_pattern(answer: str) -> re.Pattern[str] | None:
    """The compiled whole-token pattern of an answer, or None for an empty answer."""
    text = normalize_answer(answer)
    if not text:
        return None
    left = r"(?<!\w)"
    if text[0].isdigit():
        # not "3.12" / "1,12", nor a unary minus ("-12" at the start, after a space or "(")
        left += r"(?<!\d[.,])(?<!(?<![\w)\]])[-\u2212])"
    right = r"(?!\w)"
    if text[-1].isdigit():
        right += r"(?![.,]\d)"
    return re.compile(left + _body(text) + right, re.IGNORECASE)


@lru_cache(maxsize=4096)
def _candidate_pattern(answer: str) -> re.Pattern[str]:
    """The answer alone, without the boundary checks: a literal prefix the regex engine finds fast."""
    text = normalize_answer(answer)
    return re.compile(_body(text), re.IGNORECASE if any(c.isalpha() for c in text) else 0)


def find_answer(text: str, answer: str | None) -> re.Match[str] | None:
    """The first whole-token occurrence of ``answer`` in ``text``, or None."""
    pattern = answer_pattern(answer or "")
    return pattern.search(text) if pattern is not None and text else None


def count_answer(text: str, answer: str | None) -> int:
    """How many whole-token occurrences of ``answer`` the text holds."""
    pattern = answer_pattern(answer or "")
    return sum(1 for _ in pattern.finditer(text)) if pattern is not None and text else 0


def documents_containing(texts: list[str], answers: list[str]) -> np.ndarray:
    """For each answer, how many of ``texts`` contain it (each text counted once).

    The texts are joined once (with a separator no pattern can match across); each distinct
    answer is then located with a plain literal search, and only those candidates are checked
    against the boundary rules. After a hit the search jumps to the next text.
    """
    counts = np.zeros(len(answers), dtype=np.int64)
    if not texts or not answers:
        return counts
    separator = "\n\x00\n"
    joined = separator.join(texts)
    starts = np.cumsum([0] + [len(t) + len(separator) for t in texts[:-1]])
    bounds = starts.tolist() + [len(joined) + 1]
    found: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = normalize_answer(answer)
        if key not in found:
            found[key] = _count_texts(joined, bounds, key) if key else 0
        counts[i] = found[key]
    return counts


def _count_texts(joined: str, bounds: list[int], answer: str) -> int:
    full, candidate = answer_pattern(answer), _candidate_pattern(answer)
    hits, pos = 0, 0
    while (m := candidate.search(joined, pos)) is not None:
        if full.match(joined, m.start()):
            hits += 1
            pos = bounds[bisect.bisect_right(bounds, m.start())]  # the next text
        else:
            pos = m.start() + 1
    return hits


def excerpt(text: str, answer: str | None = None, width: int = EXCERPT_CHARS) -> str:
    """About ``width`` characters of the text: around the answer's first occurrence if any."""
    text = text or ""
    match = find_answer(text, answer)
    start = 0 if match is None else max(0, match.start() - width // 3)
    if start and len(text) - start < width:
        start = max(0, len(text) - width)
    piece = " ".join(text[start : start + width].split())
    return ("…" if start > 0 else "") + piece + ("…" if start + width < len(text) else "")
