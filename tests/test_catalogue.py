"""The embedded catalogue: deterministic, balanced, and every label provable from the row itself."""
import io
import re

import pytest

from relkd.config import ConfigError, parse_params
from relkd.data import schema
from relkd.data.catalogue import CASES, CATEGORIES, HARD_CASES, LABELS, LANGUAGES, QUERY_WORDS, generate_catalogue
from relkd.data.config import CatalogueConfig

SEED = 13


@pytest.fixture(scope="module")
def df():
    return generate_catalogue(CatalogueConfig(), SEED)  # the default: 200 queries x 4 pairs


def gen(seed=SEED, **kw):
    return generate_catalogue(CatalogueConfig(**kw), seed)


def has(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words (case-insensitive): "1L" is not in "1.5L"."""
    return re.search(rf"(?<![\w.]){re.escape(phrase.lower())}(?![\w.])", text.lower()) is not None


def value(facet: str) -> str:
    return facet.split("=", 1)[1]


def tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


# ------------------------------------------------------------------------------- shape and ids
def test_label_set_and_languages():
    assert LABELS == ("strongly relevant", "brand mismatch", "category mismatch", "model mismatch",
                      "attribute mismatch", "accessory mismatch")
    assert set(LANGUAGES) == {"en", "es", "fr", "pt"}
    assert set(CASES.values()) == set(LABELS)
    assert len(CATEGORIES) >= 12


def test_canonical_columns_and_ids(df):
    assert list(df.columns[:len(schema.COLUMNS)]) == list(schema.COLUMNS)
    for extra in ("product_id", "case", "hard", "brand", "category", "model"):
        assert extra in df.columns
    assert df["pair_id"].str.fullmatch(r"cat-\d{6}").all() and df["pair_id"].is_unique
    assert df["query_id"].str.fullmatch(r"q\d{5}").all()
    assert df["hard"].dtype == bool
    assert set(df["case"]) <= set(CASES)
    # One query id is one query text, and no two ids share a text (splits group on either).
    assert (df.groupby("query_id")["query"].nunique() == 1).all()
    assert df.drop_duplicates("query_id")["query"].str.casefold().is_unique


@pytest.mark.parametrize("n, k", [(300, 4), (7, 1), (25, 12)])
def test_size_is_queries_times_pairs(n, k):
    out = gen(n_queries=n, pairs_per_query=k)
    assert len(out) == n * k
    assert out["query_id"].nunique() == n
    assert (out.groupby("query_id").size() == k).all()


def test_no_duplicate_pairs(df):
    assert not df.duplicated(["query", "title"]).any()
    big = gen(n_queries=2000, pairs_per_query=8, languages={"en": 1.0})
    assert not big.duplicated(["query", "title"]).any()


# --------------------------------------------------------------------------------- determinism
def test_same_seed_same_frame_byte_identical(df):
    again = generate_catalogue(CatalogueConfig(), SEED)
    assert again.equals(df)
    a, b = io.BytesIO(), io.BytesIO()
    df.to_parquet(a, index=False)
    again.to_parquet(b, index=False)
    assert a.getvalue() == b.getvalue()


def test_language_key_order_does_not_matter():
    a = gen(n_queries=40, languages={"en": 0.5, "es": 0.5})
    b = gen(n_queries=40, languages={"es": 0.5, "en": 0.5})
    assert a.equals(b)


def test_different_seed_different_frame(df):
    other = generate_catalogue(CatalogueConfig(), SEED + 1)
    assert len(other) == len(df)
    assert not other.equals(df)
    assert set(other["query"]) != set(df["query"])
    assert set(other["title"]) != set(df["title"])


# ------------------------------------------------------------------------------------- balance
def test_all_labels_present_and_balanced(df):
    share = df["label"].value_counts(normalize=True)
    assert set(share.index) == set(LABELS)
    assert share.min() >= 0.08, share.to_dict()
    assert share.max() <= 0.30, share.to_dict()


def test_no_query_has_a_single_label(df):
    assert (df.groupby("query_id")["label"].nunique() >= 2).all()


def test_queries_state_varied_facets(df):
    q = df.drop_duplicates("query_id")
    for col in ("query_brand", "query_model", "query_attribute"):
        stated = (q[col] != "").mean()
        assert 0.1 < stated < 0.95, (col, stated)  # some queries name the facet, some do not
    assert q["query_category"].nunique() >= 12


# ----------------------------------------------------------------------------------- languages
def test_single_language():
    out = gen(n_queries=60, languages={"en": 1.0})
    assert set(out["locale"]) == {"en"}


def test_two_languages_even_mix():
    out = gen(n_queries=300, languages={"en": 0.5, "es": 0.5})
    share = out.drop_duplicates("query_id")["locale"].value_counts(normalize=True)
    assert set(share.index) == {"en", "es"}
    assert 0.4 < share["en"] < 0.6


def test_default_mix_follows_weights(df):
    share = df.drop_duplicates("query_id")["locale"].value_counts(normalize=True)
    weights = CatalogueConfig().languages
    total = sum(weights.values())
    assert set(share.index) == set(weights)
    for lang, w in weights.items():
        assert abs(share[lang] - w / total) < 0.08, (lang, share.to_dict())


def test_zero_weight_language_never_drawn():
    out = gen(n_queries=80, languages={"pt": 2.0, "fr": 0.0})
    assert set(out["locale"]) == {"pt"}


def test_queries_use_their_language_category_words():
    out = gen(n_queries=200, languages={"en": 1, "es": 1, "fr": 1, "pt": 1})
    assert set(out["locale"]) == set(LANGUAGES)
    for row in out.drop_duplicates("query_id").itertuples():
        plain, subs = QUERY_WORDS[row.query_category][row.locale]
        assert any(w in row.query for w in plain + subs), (row.locale, row.query)
    # The same facet is worded per language: Spanish and French colours are not English words.
    es = out[(out["locale"] == "es") & out["query_attribute"].str.startswith("colour=")]
    assert len(es) and not any(has(q, value(a)) for q, a in zip(es["query"], es["query_attribute"]))


# ------------------------------------------------------------------------------ label by facets
def expected_label(row) -> str:
    """The label from the stored facets alone, most fundamental difference first."""
    if row.category not in CATEGORIES:
        return "accessory mismatch"
    if row.category != row.query_category:
        return "category mismatch"
    if row.query_brand and row.brand != row.query_brand:
        return "brand mismatch"
    if row.query_model and row.model != row.query_model:
        return "model mismatch"
    if row.query_attribute and row.query_attribute not in row.attributes.split("; "):
        return "attribute mismatch"
    return "strongly relevant"


@pytest.mark.parametrize("rate", [0.0, 0.35, 1.0])
def test_labels_follow_from_facets(rate):
    out = gen(n_queries=400, languages={"en": 1, "es": 1, "fr": 1, "pt": 1}, hard_case_rate=rate)
    wrong = [(r.query, r.title, r.label) for r in out.itertuples() if expected_label(r) != r.label]
    assert not wrong, wrong[:5]
    assert (out["case"].map(CASES) == out["label"]).all()


def test_titles_carry_the_evidence(df):
    for r in df.itertuples():
        t = r.title
        if r.label != "accessory mismatch":  # a product title names its brand, model and attributes
            assert has(t, r.brand) and has(t, r.model), t
            assert all(has(t, value(a)) for a in r.attributes.split("; ")), (t, r.attributes)
        if r.label == "strongly relevant":
            for stated in (r.query_brand, r.query_model):
                assert not stated or has(t, stated), (r.query, t)
            assert not r.query_attribute or has(t, value(r.query_attribute)), (r.query, t)
        elif r.label == "brand mismatch":
            assert r.query_brand and not has(t, r.query_brand), (r.query, t)
        elif r.label == "category mismatch":
            assert not any(has(t, noun) for noun in CATEGORIES[r.query_category]["nouns"]), (r.query, t)
        elif r.label == "model mismatch":
            assert has(t, r.query_brand) and not has(t, r.query_model), (r.query, t)
            assert re.fullmatch(r"[A-Z]{2}-\d{4}", r.model) and r.model[:2] == r.query_model[:2]
        elif r.label == "attribute mismatch":
            assert r.query_attribute and not has(t, value(r.query_attribute)), (r.query, t)
            assert r.query_category == r.category
            for stated in (r.query_brand, r.query_model):
                assert not stated or has(t, stated), (r.query, t)
        elif r.label == "accessory mismatch":  # an accessory word and the product's name
            assert r.category not in CATEGORIES and has(t, r.category), t
            assert has(t, r.brand), t
            assert r.query_brand in ("", r.brand)


# ---------------------------------------------------------------------------------- hard cases
def test_hard_cases_at_default_rate(df):
    assert (df["hard"] == df["case"].isin(HARD_CASES)).all()
    assert 0.2 < df["hard"].mean() < 0.5
    assert set(df.loc[df["hard"], "case"]) == set(HARD_CASES)


def test_no_hard_cases_at_rate_zero():
    out = gen(hard_case_rate=0.0)
    assert not out["hard"].any()
    assert not out["case"].isin(HARD_CASES).any()
    assert set(out["label"]) == set(LABELS)


def test_model_near_is_one_digit_apart(df):
    near = df[df["case"] == "model_near"]
    assert len(near)
    for r in near.itertuples():
        diff = [i for i, (a, b) in enumerate(zip(r.model, r.query_model)) if a != b]
        assert len(r.model) == len(r.query_model) and len(diff) == 1, (r.model, r.query_model)
        assert r.model[diff[0]].isdigit()


def test_brand_near_differs_only_by_brand(df):
    near = df[df["case"] == "brand_near"]
    assert len(near)
    for r in near.itertuples():
        assert r.brand != r.query_brand and has(r.title, r.brand)
        assert not r.query_model or r.model == r.query_model  # the clone keeps the model code


def test_attribute_near_changes_one_token(df):
    near = df[df["case"] == "attribute_near"]
    assert len(near)
    by_id = {}
    for r in df[df["label"] == "strongly relevant"].itertuples():
        by_id.setdefault(r.query_id, []).append(r)
    compared = 0
    for r in near.itertuples():
        for rel in by_id.get(r.query_id, []):
            if rel.model == r.model:   # the target itself, or a variant of it
                a, b = r.title.split(), rel.title.split()
                if len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1:
                    compared += 1
    assert compared > 0


def test_accessory_named_repeats_the_full_name(df):
    named = df[df["case"] == "accessory_named"]
    assert len(named)
    for r in named.itertuples():
        assert has(r.title, r.model) and has(r.title, r.brand) and has(r.title, r.category)
        assert any(has(r.title, n) for n in CATEGORIES[r.query_category]["nouns"])


def test_substitute_queries_are_lexically_apart_from_their_titles():
    out = gen(languages={"en": 1, "es": 1, "fr": 1, "pt": 1})
    sub = out[out["case"] == "substitute"]
    assert set(sub["locale"]) == set(LANGUAGES)
    for r in sub.itertuples():
        allowed = tokens(f"{r.query_brand} {r.query_model} {r.query_attribute}")
        shared = tokens(r.query) & tokens(r.title)
        assert shared <= allowed, (r.query, r.title, shared - allowed)


def test_substitute_words_never_share_a_word_with_title_nouns():
    for category, spec in CATEGORIES.items():
        nouns = tokens(" ".join(spec["nouns"]))
        for lang, (_, subs) in QUERY_WORDS[category].items():
            for word in subs:
                assert not tokens(word) & nouns, (category, lang, word)


def test_brand_names_are_distinct_words():
    brands = {b for spec in CATEGORIES.values() for b in spec["brands"]}
    for a in brands:
        assert not any(a != b and a.lower() in b.lower() for b in brands)


# ---------------------------------------------------------------------------------- validation
def test_unknown_language_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.catalogue\.languages") as e:
        parse_params({"data": {"catalogue": {"languages": {"xx": 1}}}})
    assert "xx" in str(e.value)


@pytest.mark.parametrize("bad, key", [
    ({"languages": {"en": 0}}, "languages"),
    ({"languages": {}}, "languages"),
    ({"hard_case_rate": 1.5}, "hard_case_rate"),
    ({"pairs_per_query": 0}, "pairs_per_query"),
])
def test_bad_catalogue_values_name_the_key(bad, key):
    with pytest.raises(ConfigError, match=rf"data\.catalogue\.{key}"):
        parse_params({"data": {"catalogue": bad}})


def test_every_language_is_accepted():
    p = parse_params({"data": {"catalogue": {"languages": {lang: 1 for lang in LANGUAGES}}}})
    assert set(p.data.catalogue.languages) == set(LANGUAGES)
