"""The oracle rationale source, a control and never a teacher: the rationale a perfect annotator would write for
an embedded-catalogue pair, from the catalogue's construction.

The catalogue (relkd.data.catalogue) builds every pair for a reason it records beside the pair: its construction
case, the product's brand / category / model / attributes and the facets the query states. From those facts this
module writes one or two sentences in the voice of one of the three MPCoT perspectives (prompts/*.yaml: the
shopper's use, the attribute-by-attribute check, the platform's rules), the perspective and the wording drawn
per pair from a seeded generator (several phrasings per perspective and label, the hard cases' own clauses), so the
rationales vary as a teacher's would while each carries the reason for its pair's label: the two brands of a brand
mismatch, the two models of a model mismatch, the two values of the stated attribute, the two categories, the
accessory's kind. No rationale names its class. It measures what LRKD does with rationales that carry the reasons
(`teacher.annotate.source: oracle`); on any other data there is nothing to write them from.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from relkd.data.catalogue import ATTRIBUTE, BRAND, CASES, CATEGORY, HARD_CASES, MODEL, RELEVANT
from relkd.teacher.prompts import PERSPECTIVES, answer_text

PROVENANCE = ("case", "brand", "category", "model", "attributes", "query_category", "query_brand", "query_model",
              "query_attribute")


@dataclass(frozen=True)
class Facts:
    """What the catalogue knows of one pair: the query's target and stated facets, and the product shown."""

    case: str
    cat: str                   # the query's category
    brand: str                 # the stated brand, "" when unstated
    model: str                 # the stated model, "" when unstated
    attr: tuple[str, str] | None   # the stated (attribute, value)
    p_cat: str                 # the product's category (an accessory: its kind, e.g. "phone case")
    p_brand: str
    p_model: str
    p_attrs: dict[str, str]

    @property
    def label(self) -> str:
        return CASES[self.case]

    @property
    def hard(self) -> bool:
        return self.case in HARD_CASES

    @property
    def p_value(self) -> str:
        """The product's value of the stated attribute ("" when the product has none)."""
        return self.p_attrs.get(self.attr[0], "") if self.attr else ""


def _attrs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in str(text).split("; ") if "=" in part)


def pair_facts(row) -> Facts:
    """The Facts of one prepared row (a mapping with the PROVENANCE columns)."""
    attr = str(row["query_attribute"] or "")
    return Facts(case=str(row["case"]), cat=str(row["query_category"]), brand=str(row["query_brand"] or ""),
                 model=str(row["query_model"] or ""), attr=tuple(attr.split("=", 1)) if "=" in attr else None,
                 p_cat=str(row["category"]), p_brand=str(row["brand"]), p_model=str(row["model"] or ""),
                 p_attrs=_attrs(row["attributes"] or ""))


# -------------------------------------------------------------------------------------- phrasing
def _a(noun: str) -> str:
    """The noun with its indefinite article; plural nouns ("running shoes", "paper filters") take none."""
    low = noun.lower()
    if low.endswith("s") and not low.endswith("ss"):
        return noun
    return ("an " if low[:1] in "aeio" or (low[:1] == "u" and not low.startswith("us")) else "a ") + noun


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _agree(items: list[str]) -> str:
    """The verb after a list: "match" for several subjects or a plural one, "matches" for one."""
    return "match" if len(items) > 1 or _a(items[0].split(" (")[0]) == items[0].split(" (")[0] else "matches"


def _value(f: Facts, value: str) -> str:
    """An attribute value as prose: colours and materials in lower case ("black", "stainless steel")."""
    return value.lower() if f.attr and f.attr[0] in ("colour", "material") else value


def _asked(f: Facts, article: bool = True) -> str:
    """The product the query asks for, with every stated facet: "a Voltaro NX-1203 smartphone in black"."""
    words = " ".join(w for w in (f.brand, f.model, f.cat) if w)
    head = _a(words) if article else words
    return head + (f" in {_value(f, f.attr[1])}" if f.attr else "")


def _stated(f: Facts) -> list[str]:
    """The facets the query states, as "category (camera)", "brand (Lumetta)", ..."""
    out = [f"category ({f.cat})"]
    out += [f"brand ({f.brand})"] if f.brand else []
    out += [f"model ({f.model})"] if f.model else []
    out += [f"{f.attr[0]} ({_value(f, f.attr[1])})"] if f.attr else []
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _named(f: Facts) -> str:
    """The accessory's product as its title names it."""
    return " ".join(w for w in (f.p_brand, f.p_model, f.cat) if w)


# One function per perspective: (facts, rng) -> rationale. Each label has several phrasings; the hard cases add
# the clause that says what makes them hard.
def _structured(f: Facts, r: random.Random) -> str:
    label = f.label
    if label == RELEVANT:
        s = r.choice([f"{_cap(_join(_stated(f)))} {'all match' if len(_stated(f)) > 1 else 'matches'} the title.",
                      f"Every attribute the query states matches: {_join(_stated(f))}.",
                      f"Checked one by one, {_join(_stated(f))} agree with the product."])
        if f.hard:
            s += r.choice([f" The query uses another word for {f.cat}, but the product is one.",
                           f" The query's wording differs from the title's, yet the category is still {f.cat}."])
        return s
    if label == BRAND:
        same = [f"category ({f.cat})"] + ([f"{f.attr[0]} ({_value(f, f.attr[1])})"] if f.attr else [])
        s = r.choice([f"{_cap(_join(same))} {_agree(same)}, but the brand is {f.p_brand}, not {f.brand}.",
                      f"The brand differs: the query asks for {f.brand} and the title is {f.p_brand}, "
                      f"although the {_join(same)} {_agree(same)}."])
        if f.hard:
            s += r.choice([f" Apart from the brand name the listing is identical ({f.p_model}).",
                           " Only the brand token separates this title from the requested product."])
        return s
    if label == CATEGORY:
        s = r.choice([f"The category does not match: the query asks for {_a(f.cat)}, the title is {_a(f.p_cat)}.",
                      f"Category first: {_a(f.p_cat)} is not {_a(f.cat)}, so the other attributes do not matter."])
        if f.hard:
            s += r.choice([f" It shares the brand {f.p_brand}, but not the kind of product.",
                           f" {_cap(f.p_cat)} is a related category, still another one."])
        return s
    if label == MODEL:
        s = r.choice([f"Brand ({f.brand}) and category ({f.cat}) match, but the model is {f.p_model}, "
                      f"not the requested {f.model}.",
                      f"The model code differs: {f.p_model} instead of {f.model}, with the same brand {f.brand}."])
        if f.hard:
            s += r.choice([f" {f.p_model} and {f.model} are sibling models one digit apart.",
                           " The two codes differ only in their last digit."])
        return s
    if label == ATTRIBUTE:
        name, want = f.attr
        s = r.choice([f"Brand, model and category fit the query, but the {name} is {_value(f, f.p_value)}, "
                      f"not {_value(f, want)}.",
                      f"The stated {name} does not match: {_value(f, want)} asked, {_value(f, f.p_value)} offered."])
        if f.hard:
            s += r.choice([" Everything else in the title is the requested product.",
                           f" Only the {name} token differs from what was asked."])
        return s
    s = r.choice([f"The product is {_a(f.p_cat)}, not {_a(f.cat)}: its category is an accessory of the query's.",
                  f"Category check: the query wants {_a(f.cat)}, the title sells {_a(f.p_cat)} for one."])
    if f.hard:
        s += f" The title repeats the full {_named(f)} name, but only as what it fits."
    return s


def _intent(f: Facts, r: random.Random) -> str:
    label = f.label
    if label == RELEVANT:
        s = r.choice([f"I want {_asked(f)}, and this product is exactly that.",
                      f"I searched for {_asked(f)}; buying this would give me what I came for."])
        if f.hard:
            s += r.choice([f" I used another word for it, but this {f.cat} does the job I meant.",
                           f" The title calls it differently, but it is the {f.cat} I had in mind."])
        return s
    if label == BRAND:
        s = r.choice([f"I asked for {f.brand}; this {f.cat} would do the job, but it is made by {f.p_brand}.",
                      f"I want a {f.brand} {f.cat}, and this one is a {f.p_brand}, not the brand I trust."])
        if f.hard:
            s += " It looks like the one I want, but the maker is another."
        return s
    if label == CATEGORY:
        s = r.choice([f"I want {_a(f.cat)}; {_a(f.p_cat)} cannot serve that purpose.",
                      f"I am shopping for {_a(f.cat)}, and {_a(f.p_cat)} is something else entirely."])
        if f.hard:
            s += r.choice([f" Even from {f.p_brand}, it is not what I would use.",
                           " It sits near my search, but it does another job."])
        return s
    if label == MODEL:
        s = r.choice([f"I want the {f.brand} {f.model} specifically; the {f.p_model} is a different model.",
                      f"I searched for model {f.model}, and this {f.brand} product is the {f.p_model}."])
        if f.hard:
            s += " The codes are almost the same, so I could easily buy the wrong one."
        return s
    if label == ATTRIBUTE:
        name, want = f.attr
        s = r.choice([f"I need it in {_value(f, want)}; this {f.cat} is {_value(f, f.p_value)}, so it does not meet "
                      "my need.",
                      f"The {name} matters to me: I asked for {_value(f, want)} and this one is "
                      f"{_value(f, f.p_value)}."])
        if f.hard:
            s += " Otherwise it is the very product I want."
        return s
    s = r.choice([f"I want the {f.cat} itself; {_a(f.p_cat)} only goes with it, so it does not give me what I "
                  "searched for.",
                  f"I came for {_a(f.cat)}, and buying {_a(f.p_cat)} would leave me without one."])
    if f.hard:
        s += f" The title names the {_named(f)}, but I would receive only the {f.p_cat}."
    return s


def _rules(f: Facts, r: random.Random) -> str:
    label = f.label
    if label == RELEVANT:
        if f.hard:
            return r.choice([f"The query's word is not the title's, but the product does the same job as {_a(f.cat)}: "
                             "a functional substitute counts as the requested product.",
                             f"By the substitute rule, a product that does the job of {_a(f.cat)} answers the "
                             f"query, and every stated facet ({_join(_stated(f))}) matches."])
        return r.choice([f"Every stated facet matches ({_join(_stated(f))}), so by the rules this is the requested "
                         "product.",
                         f"No rule is broken: {_join(_stated(f))} as asked, and it is the main product."])
    if label == BRAND:
        return r.choice([f"The rules require a stated brand to match: the query states {f.brand}, the product is "
                         f"{f.p_brand}.",
                         f"A brand the query names must match, and {f.p_brand} is not {f.brand}."]) + (
            " A listing copied under another brand does not pass." if f.hard else "")
    if label == CATEGORY:
        return r.choice([f"A product of another category never answers the query: {_a(f.p_cat)} is not "
                         f"{_a(f.cat)}.",
                         f"The rules start from the category: the query wants {_a(f.cat)}, this is {_a(f.p_cat)}."]) \
            + (f" A related category of the same brand ({f.p_brand}) is still another category." if f.hard else "")
    if label == MODEL:
        return r.choice([f"A stated model must match: {f.model} was asked, {f.p_model} is offered.",
                         f"The query names the model {f.model}; the title's {f.p_model} breaks the model rule."]) + (
            " A neighbouring model code is not the requested one." if f.hard else "")
    if label == ATTRIBUTE:
        name, want = f.attr
        return r.choice([f"A stated attribute must match: the query asks for {name} {_value(f, want)}, the product "
                         f"has {_value(f, f.p_value)}.",
                         f"The {name} rule fails: {_value(f, f.p_value)} is not the {_value(f, want)} the query "
                         "states."]) + (" The rest of the listing is the requested product." if f.hard else "")
    return r.choice([f"{_cap(_a(f.p_cat))} is an accessory, not the {f.cat} the query asks for.",
                     f"The product is {_a(f.p_cat)} for {_a(f.cat)}, and an accessory is not the main product."]) + (
        f" Naming the {_named(f)} in its title does not make it one." if f.hard else "")


WRITERS: dict[str, Callable[[Facts, random.Random], str]] = {
    "user_intent": _intent, "structured_analysis": _structured, "business_rules": _rules}


def oracle_rationale(row, seed: int) -> tuple[str, str]:
    """(perspective, rationale) for one pair; the draw depends on the seed and the pair's id only."""
    r = random.Random(f"{seed}|{row['pair_id']}")
    perspective = r.choice(PERSPECTIVES)
    return perspective, WRITERS[perspective](pair_facts(row), r)


def oracle_rationales(pairs: pd.DataFrame, seed: int) -> list[tuple[str, str]]:
    """(perspective, rationale) for every row of `pairs`, a prepared split of the embedded catalogue."""
    missing = [c for c in ("pair_id", *PROVENANCE) if c not in pairs.columns]
    if missing:
        raise ValueError(f"the oracle writes rationales from the embedded catalogue's construction, and these pairs "
                         f"have no {missing} column(s): it needs data.source: catalogue (use "
                         "teacher.annotate.source: teacher for any other data)")
    unknown = sorted(set(pairs["case"]) - set(CASES))
    if unknown:
        raise ValueError(f"construction case(s) {unknown} are not the catalogue's {sorted(CASES)}")
    return [oracle_rationale(row, seed) for row in pairs.to_dict("records")]


def oracle_records(pairs: pd.DataFrame, seed: int) -> list[dict]:
    """The oracle's rationale for every pair in the annotate stage's record format (relkd.teacher.judge's): its label
    is the gold one, `perspective` says whose voice it took and `source` that it is the control."""
    return [{"pair_id": pair["pair_id"], "perspective": perspective, "sample": 0,
             "text": answer_text(rationale, pair["label"]), "rationale": rationale, "parsed_label": pair["label"],
             "error": None, "probs": None, "scored_label": None, "label": pair["label"], "gold": pair["label"],
             "source": "oracle"}
            for pair, (perspective, rationale) in zip(pairs.to_dict("records"), oracle_rationales(pairs, seed))]
