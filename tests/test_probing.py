import numpy as np
import pytest

from relkd.eval.probing import EXCLUDED, probe_keywords, probe_summary, probe_targets, run_probe, run_probes, words

STOP = {"the", "a", "for", "is", "it", "so"}
QUERIES = ["phone charger", "red dress", "laptop bag", "running shoes"]
TITLES = ["USB cable 2m", "Blue summer dress", "Laptop sleeve mentions padding", "Trail running shoes"]
RATIONALES = [
    "The title mentions a cable, so it likely fits the charger need.",
    "The title mentions blue, which implies a colour mismatch.",
    "The title mentions a sleeve; likely a substitute.",
    "Exact match; the title implies the same product, likely.",
]


def test_words_are_lowercase_letters_only():
    assert words("USB-C cable, 2m; doesn't FIT") == {"usb", "c", "cable", "m", "doesn't", "fit"}
    assert words(None) == set()


def test_probe_keywords_exact_on_handmade_rationales():
    top = probe_keywords(RATIONALES, QUERIES, TITLES, top_n=10, min_count=2, stopwords=STOP)
    # "mentions" is in pair 3's title, so pair 3 does not count it; "charger" is in pair 1's query
    assert top == [{"keyword": "title", "count": 4}, {"keyword": "likely", "count": 3},
                   {"keyword": "implies", "count": 2}, {"keyword": "mentions", "count": 2}]
    assert [k["keyword"] for k in probe_keywords(RATIONALES, QUERIES, TITLES, top_n=2, min_count=2,
                                                 stopwords=STOP | {"title"})] == ["likely", "implies"]


def test_probe_targets_mark_pairs_whose_input_holds_the_keyword():
    assert probe_targets("mentions", RATIONALES, QUERIES, TITLES).tolist() == [1, 1, EXCLUDED, 0]
    assert probe_targets("Likely", RATIONALES, QUERIES, TITLES).tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="align"):
        probe_targets("x", RATIONALES, QUERIES[:2], TITLES)


def _synthetic(n=240, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    r = rng.normal(size=(n, d))
    r[:, 0] += 2.5 * y  # r carries the keyword signal
    cls = rng.normal(size=(n, d))  # h_cls does not
    return r, cls, y


def test_probe_on_r_beats_cls_significantly_when_only_r_carries_the_signal():
    r, cls, y = _synthetic()
    res = run_probe(r, cls, y, n_runs=10, seed=0)
    assert res["status"] == "ok" and len(res["f1_r"]) == len(res["f1_cls"]) == 10
    assert res["mean_r"] > 0.75 and res["mean_cls"] < 0.5
    assert res["t"] > 0 and res["p"] < 0.05
    assert res["std_r"] == pytest.approx(np.std(res["f1_r"], ddof=1))
    assert run_probe(r, cls, y, n_runs=10, seed=0) == res  # deterministic for a seed


def test_probe_without_signal_difference_is_not_significant():
    r, _, y = _synthetic()
    res = run_probe(r, r.copy(), y, n_runs=5, seed=1)
    assert res["f1_r"] == res["f1_cls"] and res["p"] == 1.0


def test_probe_skips_rare_keyword_and_drops_excluded_pairs():
    r, cls, y = _synthetic(n=60)
    y = np.zeros(60, dtype=int)
    y[:3] = 1
    res = run_probe(r, cls, y)
    assert res["status"] == "skipped" and "only 3 positive" in res["reason"] and res["f1_r"] is None
    r, cls, y = _synthetic()
    y = y.copy()
    y[:10] = EXCLUDED
    res = run_probe(r, cls, y, n_runs=3)
    assert res["n_excluded"] == 10 and res["n"] == 230 and res["status"] == "ok"


def test_run_probes_and_summary():
    r, cls, y = _synthetic(n=200)
    rationales = ["the shopper likely wants this" if t else "a plain match" for t in y]
    queries, titles = ["query"] * 200, ["some title"] * 200
    results = run_probes(["likely", "plain", "unicorn"], rationales, queries, titles, r, cls, n_runs=4)
    assert [x["keyword"] for x in results] == ["likely", "plain", "unicorn"]
    assert results[2]["status"] == "skipped"
    summary = probe_summary(results)
    assert summary["n_probed"] == 2 and summary["n_skipped"] == 1
    assert summary["mean_f1_r"] == pytest.approx(np.mean([results[0]["mean_r"], results[1]["mean_r"]]))
    assert summary["relative_improvement"] > 0
