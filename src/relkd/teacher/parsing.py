"""Strict parsing of a teacher's answer into a rationale and a label: an unclear label is an error, never a guess.

The grammar the prompts ask for (``prompts.answer_text`` writes exactly this)::

    answer     := [ "Reasoning:" ] rationale NEWLINE label_line [ trailing ]
    label_line := [ markdown ] key [ markdown ] ":" [ markdown ] label_text
    key        := "Label" | "Final label" | "Answer" | "Final answer"      (any case)
    markdown   := any run of "*", "_", "#", ">", "-", "`" and spaces       (e.g. "**Label:**", "- Label:")

* The label line is the FIRST line of the text that starts with a key: the answer ends there (generation
  stops at the end of that line, see :func:`answer_end`), and lines after it are ``trailing`` and ignored
  (a small model that keeps writing after its answer often starts another pair and another label).
* When the label line has nothing after the colon, ``label_text`` is the next non-empty line
  ("**Label:**" on one line, the class on the next).
* ``rationale`` is everything before the label line, with a leading "Reasoning:" (or "Rationale:") key
  removed and all whitespace collapsed to single spaces. It may be empty ("Label: exact" alone): the label
  is still returned and ``error`` is None; callers that need a rationale (SFT targets, chosen answers)
  check for an empty one themselves.
* ``label_text`` names a class when, after normalising both (lowercase; every run of punctuation, quotes,
  brackets, underscores, hyphens and spaces becomes one space), it EQUALS one class name, or it STARTS
  WITH a class name followed by a non-letter ("brand mismatch, because ...") and names no other class
  anywhere. Text naming two classes ("brand mismatch or model mismatch") is ambiguous; text naming none,
  or not starting with one ("it is a brand mismatch", "not exact"), is unknown. Nothing is ever matched
  fuzzily, and the rationale is never searched for a label.

``Parsed.error`` is None or one of ``"no label line"``, ``"unknown label '<text>'"``,
``"ambiguous label '<text>'"`` (``<text>`` is the label text as written, cut to 60 characters).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

REASONING_KEY = "Reasoning:"
LABEL_KEY = "Label:"

_MD = r"[\s*_#>`\-]*"
_LABEL_LINE = re.compile(rf"^{_MD}(?:final\s+label|final\s+answer|label|answer){_MD}:{_MD}(?P<rest>.*)$",
                         re.IGNORECASE)
_REASONING = re.compile(rf"^{_MD}(?:reasoning|rationale){_MD}:{_MD}", re.IGNORECASE)
_NON_WORD = re.compile(r"[\W_]+")
_TEXT_CUT = 60


@dataclass(frozen=True)
class Parsed:
    """One parsed answer: ``label`` is a class name from the label set, or None with ``error`` saying why."""

    rationale: str
    label: str | None
    error: str | None


def normalise(text: str) -> str:
    """Lowercase, every run of non-alphanumeric characters as one space, stripped."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _class_table(labels: Sequence[str]) -> dict[str, str]:
    if not labels:
        raise ValueError("parse needs the label set; got an empty one")
    table: dict[str, str] = {}
    for label in labels:
        key = normalise(label)
        if not key:
            raise ValueError(f"label {label!r} has no letters or digits; fix the dataset's label set")
        if key in table:
            raise ValueError(f"labels {table[key]!r} and {label!r} are the same after normalising "
                             f"({key!r}); the parser could not tell them apart, rename one")
        table[key] = label
    return table


def match_label(text: str, labels: Sequence[str]) -> tuple[str | None, str | None]:
    """The class that ``text`` names, as ``(label, None)``, or ``(None, error)`` (see the module grammar)."""
    table = _class_table(labels)
    norm = normalise(text)
    shown = text.strip()
    shown = shown if len(shown) <= _TEXT_CUT else shown[:_TEXT_CUT] + "..."
    if norm in table:
        return table[norm], None
    named = {key for key in table if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", norm)}
    if len(named) > 1:
        return None, f"ambiguous label '{shown}'"
    # Normalised text is words and single spaces, so "followed by a non-letter" is "followed by a space":
    # "brand mismatch, because ..." and "exact (E)" lead with a class, "exactly" does not.
    leading = [key for key in named if norm.startswith(key + " ")]
    if len(leading) == 1:
        return table[leading[0]], None
    return None, f"unknown label '{shown}'"


def _rationale(lines: list[str]) -> str:
    text = " ".join(" ".join(lines).split())
    return _REASONING.sub("", text, count=1).strip()


def _first_label_line(lines: list[str]) -> tuple[int, str] | None:
    """(index, normalised text after the colon) of the first label line among `lines`, or None."""
    for i, line in enumerate(lines):
        m = _LABEL_LINE.match(line.rstrip("\r\n"))
        if m:
            return i, normalise(m.group("rest"))
    return None


def answer_end(text: str) -> int | None:
    """The length of the answer in `text`: up to the end of its first complete label line (the newline
    included), or None while no label line is complete. A label line is complete once a newline follows
    text after its colon, or, for a bare "**Label:**", once a newline follows the next non-empty line.
    Generation stops there, and every backend cuts its outputs there, so a budget of new tokens is a cap,
    not the way an answer ends."""
    lines = text.splitlines(keepends=True)
    first = _first_label_line(lines)
    if first is None:
        return None
    i, rest = first
    pos = sum(len(line) for line in lines[:i + 1])
    if rest:
        return pos if lines[i].endswith(("\n", "\r")) else None
    for nxt in lines[i + 1:]:
        pos += len(nxt)
        if nxt.strip():
            return pos if nxt.endswith(("\n", "\r")) else None
    return None


def awaits_label(text: str) -> bool:
    """True when `text` (an answer being written) has reached its first label line but no label text yet:
    it ends in "Label:" (or "**Label:** "), or in a bare label line and blank lines after it. This is where
    a guided decoder chooses the label (hf_decoding.label_choice, with sampling.label_choice)."""
    lines = text.splitlines(keepends=True)
    first = _first_label_line(lines)
    return first is not None and not first[1] and not any(nxt.strip() for nxt in lines[first[0] + 1:])


def label_key_end(text: str) -> int | None:
    """Where the label key of `text`'s first label line ends ("...\nLabel:" or "...\n**Label:**", without the
    spaces after it), or None when no line is a label line: where a label chosen from the label set is written
    (" " + label) by an engine that cannot stop there itself."""
    pos = 0
    for line in text.splitlines(keepends=True):
        m = _LABEL_LINE.match(line.rstrip("\r\n"))
        if m:
            return len(text[:pos + m.start("rest")].rstrip(" \t"))
        pos += len(line)
    return None


def cut_answer(text: str) -> str:
    """`text` up to the end of its first complete label line (see :func:`answer_end`), without the newline."""
    end = answer_end(text)
    return text if end is None else text[:end].rstrip("\r\n")


def error_kind(error: str | None) -> str | None:
    """The kind of a ``Parsed.error`` without the quoted text: "no label line", "unknown label" or
    "ambiguous label" (None for a parsed answer), to count why answers failed."""
    return None if error is None else error.split(" '", 1)[0]


def parse(text: str, labels: Sequence[str]) -> Parsed:
    """Parse a generated answer against the dataset's label set (see the module grammar)."""
    _class_table(labels)  # a bad label set is the caller's error, whatever the text says
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if _LABEL_LINE.match(line)]
    if not hits:
        return Parsed(_rationale(lines), None, "no label line")
    at = hits[0]
    rest = _LABEL_LINE.match(lines[at]).group("rest").strip()
    if not normalise(rest):
        rest = next((line.strip() for line in lines[at + 1:] if line.strip()), "")
    label, error = match_label(rest, labels)
    return Parsed(_rationale(lines[:at]), label, error)
