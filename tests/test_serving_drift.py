import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from relkd.serving.drift import DriftThresholds, drift_check, guess_language, profile, total_variation

QUERIES = {
    "en": ["red running shoes for men", "cheap usb c cable", "kettle with auto shut-off", "laptop sale"],
    "es": ["zapatillas rojas para hombre", "cable usb barato", "hervidor con apagado", "portátil oferta"],
    "fr": ["chaussures rouges pour homme", "câble usb pas cher", "bouilloire avec arrêt", "ordinateur promo"],
}
TITLES = ["Nike Air Zoom Pegasus 40 running shoe", "Anker USB-C cable 2 m", "Philips 1.7 l kettle",
          "Lenovo IdeaPad 15 inch laptop 16 GB RAM"]


def _traffic(n, seed, langs=(0.6, 0.2, 0.2), tiers=(0.1, 0.1, 0.2, 0.3, 0.3), repeat=1, locale=False):
    rng = np.random.default_rng(seed)
    lang = rng.choice(list(QUERIES), size=n, p=langs)
    df = pd.DataFrame({
        "query": [" ".join([QUERIES[lg][rng.integers(4)]] * repeat) for lg in lang],
        "title": [TITLES[i] for i in rng.integers(0, 4, n)],
        "tier": rng.choice(5, size=n, p=tiers),
    })
    if locale:
        df["locale"] = lang
    return df


def test_guess_language():
    assert guess_language("zapatillas rojas para hombre") == "es"
    assert guess_language("chaussures pour homme pas cher") == "fr"
    assert guess_language("tênis masculino com frete grátis") == "pt"
    assert guess_language("shoes for men with free shipping") == "en"
    assert guess_language("iphone 13") == "other"  # no evidence either way
    assert guess_language("комплект постельного белья") == "other"
    assert guess_language("") == "other"


def test_profile_reports_lengths_languages_and_tiers():
    df = pd.DataFrame({"query": ["ab cd", "efgh"], "title": ["x", "y z"], "tier": [0, 4],
                       "locale": ["us", "es"]})
    p = profile(df)
    assert p["n"] == 2
    assert p["lengths"]["query"]["chars"] == {"mean": 4.5, "p50": 4.5, "p95": pytest.approx(4.95)}
    assert p["lengths"]["query"]["words"]["mean"] == 1.5
    assert p["lengths"]["title"]["chars"]["mean"] == 2.0
    assert p["language_source"] == "locale" and p["language"] == {"es": 0.5, "us": 0.5}
    assert p["tier"] == {"0": 0.5, "4": 0.5}
    assert profile(df.drop(columns="locale"))["language_source"] == "heuristic"
    with pytest.raises(ValueError, match="empty"):
        profile(df.iloc[:0])


def test_no_warning_for_a_batch_from_the_same_distribution():
    ref = profile(_traffic(3000, seed=0))
    assert drift_check(ref, profile(_traffic(1000, seed=1))) == []
    assert drift_check(ref, ref) == []


def test_warnings_name_the_shifted_measures():
    ref = profile(_traffic(3000, seed=0))
    longer = drift_check(ref, profile(_traffic(1000, seed=1, repeat=2)))
    assert {w["metric"] for w in longer} == {"query.chars.mean", "query.words.mean"}
    w = next(w for w in longer if w["metric"] == "query.words.mean")
    assert w["value"] == pytest.approx(1.0, abs=0.1) and w["threshold"] == 0.3
    assert str(w["reference"]) in w["message"] and str(w["batch"]) in w["message"]

    spanish = drift_check(ref, profile(_traffic(1000, seed=1, langs=(0.1, 0.8, 0.1))))
    assert [w["metric"] for w in spanish] == ["language"]
    assert spanish[0]["value"] > 0.2

    filtered = drift_check(ref, profile(_traffic(1000, seed=1, tiers=(0.5, 0.3, 0.1, 0.05, 0.05))))
    assert [w["metric"] for w in filtered] == ["tier"]
    assert filtered[0]["reference"]["4"] == pytest.approx(0.3, abs=0.03)

    # A looser threshold silences the same shift.
    assert drift_check(ref, profile(_traffic(1000, seed=1, tiers=(0.5, 0.3, 0.1, 0.05, 0.05))),
                       {"tier_tvd": 0.9}) == []


def test_language_mixes_measured_differently_are_not_compared():
    ref = profile(_traffic(500, seed=0, locale=True))
    out = drift_check(ref, profile(_traffic(500, seed=1)))
    assert [w["metric"] for w in out] == ["language"] and out[0]["value"] is None
    assert "measured differently" in out[0]["message"]


def test_thresholds_are_validated():
    with pytest.raises(ValidationError):
        DriftThresholds(tier_tvd=0)
    with pytest.raises(ValidationError):
        drift_check({}, {}, {"length_change": 0.5})  # a misspelt knob is an error, not a silent default


def test_total_variation():
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}) == pytest.approx(0.2)


def test_the_detector_knows_every_language_the_catalogue_writes():
    from relkd.data.catalogue import LANGUAGES as WRITTEN
    from relkd.serving.drift import LANGUAGES

    assert set(WRITTEN) <= set(LANGUAGES)
