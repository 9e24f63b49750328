"""The online A/B without a server: the assignment's shares, the exposure log's durability rules, the sample-ratio
check, the outcome comparison and the verdict on planted outcomes, and the promotion evidence."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from relkd.serving.assignment import REST, Assigner, PAPER_SHARES
from relkd.serving.config import OnlineConfig
from relkd.serving.exposures import FIELDS, ExposureLog, check_writable, read_folder, read_lines
from relkd.serving.online_ab import online_markdown, online_report, srm_check
from relkd.tracking.registry import evidence_check

CFG = OnlineConfig()
HEALTHY = {"taken_at": 0.0, "model": "m", "router": [],
           "versions": {"1": {"success": 1000, "fail": 0, "error_rate": 0.0, "p50_ms": 5.0, "p99_ms": 20.0},
                        "2": {"success": 1000, "fail": 0, "error_rate": 0.0, "p50_ms": 5.0, "p99_ms": 22.0}}}


def test_shares_are_binomial_on_10000_units_and_sticky():
    assign = Assigner("exp-1")  # the paper's 10% / 10%
    units = [f"user-{i}" for i in range(10_000)]
    arms = [assign(u) for u in units]
    assert arms == [Assigner("exp-1")(u) for u in units]  # another instance (process, server) agrees
    counts = pd.Series(arms).value_counts()
    for arm, share in assign.expected().items():
        sd = np.sqrt(10_000 * share * (1 - share))
        assert abs(counts[arm] - 10_000 * share) < 4 * sd, (arm, counts[arm])
    assert set(counts.index) == {"champion", "challenger", REST}
    other = [Assigner("exp-2")(u) for u in units]
    assert 0.2 < np.mean([a != b for a, b in zip(arms, other)]) < 0.45  # a new salt reshuffles
    with pytest.raises(ValueError, match="sum to at most 1"):
        Assigner("s", {"champion": 0.6, "challenger": 0.6})


def test_srm_flags_a_planted_45_55_split_and_not_a_fair_one():
    fair = pd.Series([Assigner("srm")(f"u{i}") for i in range(20_000)]).value_counts().to_dict()
    assert not srm_check(fair, Assigner("srm").expected(), alpha=0.001)["mismatch"]
    both = fair["champion"] + fair["challenger"]
    planted = {**fair, "champion": round(0.45 * both), "challenger": both - round(0.45 * both)}
    check = srm_check(planted, Assigner("srm").expected(), alpha=0.001)
    assert check["mismatch"] and check["p_value"] < 1e-6
    half = {"champion": 0.5, "challenger": 0.5}
    assert srm_check({"champion": 4500, "challenger": 5500}, half, 0.001)["mismatch"]
    assert not srm_check({"champion": 450, "challenger": 550}, half, 0.001)["mismatch"]  # p = 0.0016: too few units
    assert not srm_check({"champion": 496, "challenger": 504}, half, 0.001)["mismatch"]
    stray = srm_check({"champion": 10, "challenger": 0, "other": 3}, half, 0.001)
    assert stray["mismatch"] and stray["stray_arms"] == ["other"]


def planted(seed: int, lift: float, n_units: int = 40_000, base: float = 0.3, salt: str = "exp") -> tuple:
    """Exposures of `n_units` users (1-3 requests each) split 10/10 by the real assignment, and one outcome per
    request: Bernoulli(base), the challenger's Bernoulli(base + lift)."""
    rng = np.random.default_rng(seed)
    assign, versions = Assigner(salt), {"champion": 1, "challenger": 2, REST: 1}
    records, outcomes = [], []
    for u in range(n_units):
        arm = assign(f"u{u}")
        for k in range(rng.integers(1, 4)):
            rid = f"r{u}-{k}"
            records.append({"ts": 0.0, "request_id": rid, "row": 0, "unit_id": f"u{u}", "unit_from": "UNIT_ID",
                            "experiment": salt, "arm": arm, "version": versions[arm], "label": "exact", "tier": 4,
                            "score": 0.9, "latency_ms": 1.0})
            if arm != REST:
                p = base + (lift if arm == "challenger" else 0.0)
                outcomes.append({"request_id": rid, "outcome": float(rng.random() < p)})
    return records, pd.DataFrame(outcomes), assign.expected()


def analyse(records, outcomes, expected, stats=HEALTHY, seed=0, **kw):
    counts = {"files": 1, "records": len(records), "torn": 0, "corrupt": 0, "missing_fields": 0}
    return online_report(records, counts, outcomes, stats, "exp", expected, CFG.model_copy(update=kw), 300, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verdict_finds_a_five_point_better_challenger_and_not_an_identical_one(seed):
    records, outcomes, expected = planted(seed, lift=0.05)
    better = analyse(records, outcomes, expected, seed=seed)
    assert not better["srm"]["mismatch"]
    assert better["verdict"] == "promote", better["reasons"]
    d = better["comparison"]["diff"]
    assert d["low"] > 0 and d["low"] < 0.05 < d["high"]
    records, outcomes, expected = planted(seed + 100, lift=0.0)
    same = analyse(records, outcomes, expected, seed=seed)
    assert same["verdict"] == "keep", same["reasons"]
    assert same["comparison"]["diff"]["low"] < 0 < same["comparison"]["diff"]["high"]


def test_a_sample_ratio_mismatch_stops_before_any_comparison():
    records, outcomes, expected = planted(0, lift=0.05, n_units=20_000)
    # A challenger that failed for a third of its units: those units have no exposure.
    lost = {r["unit_id"] for r in records if r["arm"] == "challenger" and int(r["unit_id"][1:]) % 3 == 0}
    report = analyse([r for r in records if r["unit_id"] not in lost], outcomes, expected)
    assert report["verdict"] == "stop" and report["srm"]["mismatch"]
    assert report["comparison"] is None and "sample ratio mismatch" in report["reasons"][0]
    assert "MISMATCH" in online_markdown(report)


def test_guardrails_stop_or_withhold_a_better_challenger():
    records, outcomes, expected = planted(1, lift=0.05, n_units=20_000)
    slow = json.loads(json.dumps(HEALTHY))
    slow["versions"]["2"]["p99_ms"] = 45.0  # > 1.5 x 20
    report = analyse(records, outcomes, expected, stats=slow)
    assert report["verdict"] == "stop" and any("p99_ms" in r for r in report["reasons"])
    failing = json.loads(json.dumps(HEALTHY))
    failing["versions"]["2"].update(fail=30, error_rate=0.029)
    assert analyse(records, outcomes, expected, stats=failing)["verdict"] == "stop"
    unmeasured = analyse(records, outcomes, expected, stats=None)
    assert unmeasured["verdict"] == "keep" and "not measured" in unmeasured["reasons"][-1]


def test_outcomes_for_unknown_ids_are_counted_and_bad_outcomes_refused():
    records, outcomes, expected = planted(2, lift=0.0, n_units=2_000)
    extra = pd.DataFrame({"request_id": ["nobody-1", "nobody-2"], "outcome": [1.0, 0.0]})
    report = analyse(records, pd.concat([outcomes, extra]), expected)
    assert report["outcomes"]["unknown"] == 2 and report["outcomes"]["matched"] == len(outcomes)
    assert {"request_id": "nobody-1"} in report["outcomes"]["unknown_examples"]
    assert "2 name ids no exposure has" in online_markdown(report)
    with pytest.raises(ValueError, match="'yes'.*not a number"):
        analyse(records, outcomes.assign(outcome=["yes"] + [1.0] * (len(outcomes) - 1)), expected)
    with pytest.raises(ValueError, match="more than once"):
        analyse(records, pd.concat([outcomes, outcomes.iloc[:1]]), expected)
    with pytest.raises(ValueError, match="no id column"):
        analyse(records, outcomes.rename(columns={"request_id": "rid"}), expected)
    # Unit-level outcomes (e.g. a purchase per user), and missing outcomes counted as 0.
    units = pd.DataFrame({"unit_id": sorted({r["unit_id"] for r in records}), "outcome": 1.0})
    by_unit = analyse(records, units.iloc[::2], expected, missing_outcome="zero")
    assert by_unit["outcomes"]["key"] == ["unit_id"]
    assert 0.3 < by_unit["comparison"]["arms"]["champion"]["rate"] < 0.7


def test_one_record_per_request_and_row_counts_a_resent_row_once():
    records, outcomes, expected = planted(3, lift=0.0, n_units=3_000)
    again = [dict(r, ts=1.0) for r in records[:50]]  # in flight at a crash, sent again with the same request id
    report = analyse(records + again, outcomes, expected)
    assert report["log"]["duplicates"] == 50
    assert sum(report["exposures"].values()) == len(records)


def test_exposure_log_rotates_and_a_torn_last_line_is_skipped(tmp_path):
    log = ExposureLog(tmp_path / "exp", rotate_bytes=600, fsync=True)
    rec = dict.fromkeys(FIELDS, 1)
    for k in range(10):
        log.write([dict(rec, request_id=f"r{k}", row=j) for j in range(2)])
    log.close()
    files = sorted((tmp_path / "exp").glob("exposures-*.jsonl"))
    assert len(files) > 1 and all(f.read_bytes().endswith(b"\n") for f in files)
    # A crash mid-write: half a record at the end of the last file, and a line from elsewhere in another.
    with open(files[-1], "ab") as f:
        f.write(b'{"request_id": "r99", "ro')
    with open(files[0], "ab") as f:
        f.write(b'{"not": "a record"}\n')
    records, counts = read_folder(tmp_path / "exp")
    assert len(records) == 20 and counts == {"files": len(files), "records": 20, "torn": 1, "corrupt": 0,
                                             "missing_fields": 1}
    assert read_lines(files[-1])[1] == {"torn": 1, "corrupt": 0}
    # A new writer never appends to an old file.
    ExposureLog(tmp_path / "exp").write([rec])
    assert len(list((tmp_path / "exp").glob("exposures-*.jsonl"))) == len(files) + 1


def test_an_unwritable_exposure_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable.*refuses"):
        check_writable(tmp_path / "file" / "exposures")
    fresh = tmp_path / "a" / "b"
    assert check_writable(fresh) == fresh and not (tmp_path / "a").exists()  # the check leaves nothing behind
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            check_writable(locked)


def test_promotion_evidence_names_versions_and_verdict():
    evidence = {"verdict": "promote", "versions": {"champion": 1, "challenger": 2}, "experiment": "e",
                "reasons": ["better"]}
    assert evidence_check(evidence, "2", "1")[0]
    ok, why = evidence_check(evidence, "3", "1")
    assert not ok and "v2 vs champion v1, not v3" in why
    ok, why = evidence_check({**evidence, "verdict": "keep"}, "2", "1")
    assert not ok and "'keep'" in why


def test_paper_shares_are_the_default():
    assert Assigner("x").shares == PAPER_SHARES and CFG.srm_alpha == 0.001


def test_the_order_shares_are_given_in_does_not_move_a_unit():
    """router.json stores the shares with sorted keys; the offline split takes them as params order them."""
    units = [f"u{i}" for i in range(2000)]
    one = Assigner("e", {"champion": 0.3, "challenger": 0.2})
    other = Assigner("e", {"challenger": 0.2, "champion": 0.3})
    assert [one(u) for u in units] == [other(u) for u in units]
