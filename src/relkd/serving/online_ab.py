"""The online A/B analysis: the sample ratio first, then outcome rates per arm, guardrails, and a verdict.

Input: the exposure records the router logged (relkd.serving.exposures), outcomes joined to them later by
request id (optionally with the row) or by unit id, and a snapshot of the server's per-version statistics
(relkd.serving.server_stats). Steps, in this order:

1. Sample-ratio mismatch: a chi-square test of the distinct units each arm (the unassigned rest included) was
   seen with against the configured shares. A mismatch means the assignment or the logging is broken (units
   lost to errors, a router that changed mid-way), so no comparison of outcomes is made and the verdict is
   ``stop``, saying so.
2. Outcome rate per arm (outcome sum over exposures with an outcome) with a percentile bootstrap that resamples
   units, not requests (a unit's requests are not independent), and the challenger - champion difference.
3. Guardrails from the served versions' Triton statistics: the challenger's error rate and p99 latency against
   the champion's.
4. Verdict: ``promote`` (the difference's interval lies above 0 and every guardrail holds), ``stop`` (a
   guardrail fails or the interval lies below 0) or ``keep`` (no clear difference: keep the champion).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from relkd.serving.assignment import REST
from relkd.serving.config import OnlineConfig

VERDICTS = ("promote", "keep", "stop")
ARMS = ("champion", "challenger")


# ------------------------------------------------------------------------------------------ exposures
def exposure_frame(records: list[dict], experiment: str) -> tuple[pd.DataFrame, dict]:
    """The records of `experiment` as a frame, one row per (request_id, row) (a row sent again after a crash
    keeps its first record), and {duplicates, other_experiments}."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame, {"duplicates": 0, "other_experiments": 0}
    frame = frame.astype({"request_id": str, "row": int, "unit_id": str, "arm": str, "version": int})
    mine = frame["experiment"] == experiment
    frame = frame[mine]
    dup = frame.duplicated(["request_id", "row"], keep="first")
    return frame[~dup].reset_index(drop=True), {"duplicates": int(dup.sum()), "other_experiments": int((~mine).sum())}


def served_versions(frame: pd.DataFrame) -> dict[str, int]:
    """arm -> the one version that served it; ValueError when an arm was served by several (a new version pair
    is a new experiment: give it a new ab.salt)."""
    out = {}
    for arm, versions in frame.groupby("arm")["version"].unique().items():
        if len(versions) > 1:
            raise ValueError(f"arm {arm!r} was served by versions {sorted(int(v) for v in versions)} in one "
                             "experiment; analyse one version pair per experiment: change ab.salt when the versions "
                             "change (re-export), or keep the exposures of each pair in their own folder")
        out[arm] = int(versions[0])
    return out


# ------------------------------------------------------------------------------------------ sample ratio
def srm_check(units: dict[str, int], expected: dict[str, float], alpha: float) -> dict:
    """Chi-square goodness of fit of the units per arm against the expected shares (summing to 1).

    An arm with units but no expected share makes it a mismatch outright; fewer than two arms with a share: no
    test (mismatch False, p None)."""
    from scipy.stats import chisquare

    stray = sorted(a for a, n in units.items() if n and expected.get(a, 0) <= 0)
    arms = [a for a, s in expected.items() if s > 0]
    observed = np.array([units.get(a, 0) for a in arms], dtype=float)
    total = observed.sum()
    out = {"observed": {a: int(units.get(a, 0)) for a in arms}, "expected_share": {a: expected[a] for a in arms},
           "alpha": alpha, "chi2": None, "p_value": None, "mismatch": bool(stray), "stray_arms": stray}
    if len(arms) < 2 or total == 0 or stray:
        return out
    shares = np.array([expected[a] for a in arms])
    stat, p = chisquare(observed, shares / shares.sum() * total)
    out.update(chi2=float(stat), p_value=float(p), mismatch=bool(p < alpha),
               expected={a: float(e) for a, e in zip(arms, shares / shares.sum() * total)})
    return out


# ------------------------------------------------------------------------------------------ outcomes
def _outcome_key(outcomes: pd.DataFrame) -> list[str]:
    if "request_id" in outcomes.columns:
        return ["request_id", "row"] if "row" in outcomes.columns else ["request_id"]
    if "unit_id" in outcomes.columns:
        return ["unit_id"]
    raise ValueError(f"the outcomes have no id column (columns: {list(outcomes.columns)}); give each outcome a "
                     "request_id (the id the request was sent with, optionally with its row) or a unit_id")


def join_outcomes(frame: pd.DataFrame, outcomes: pd.DataFrame,
                  column: str = "outcome") -> tuple[pd.DataFrame, dict]:
    """`frame` (exposures) with column `outcome` (NaN where none) and {key, rows, matched, unknown,
    unknown_examples}; outcomes for ids the exposures lack are counted and named, not silently dropped."""
    key = _outcome_key(outcomes)
    if column not in outcomes.columns:
        raise ValueError(f"the outcomes have no column {column!r} (columns: {list(outcomes.columns)}); name the "
                         "outcome column (e.g. click, add_to_cart, judgement) with --outcome-column")
    values = pd.to_numeric(outcomes[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"outcome {outcomes[column].iloc[i]!r} (row {i} of the outcomes) is not a number; outcomes "
                         "are numbers (1/0 for a click or a judgement, a count, an amount)")
    out = outcomes[key].astype({k: str if k != "row" else int for k in key}).assign(outcome=values.astype(float))
    dup = out.duplicated(key)
    if dup.any():
        first = out.loc[dup, key].iloc[0].to_dict()
        raise ValueError(f"the outcomes hold {first} more than once; give one outcome per id (aggregate repeated "
                         "events first, e.g. sum the clicks of a request)")
    exposed = frame[key].astype({k: str if k != "row" else int for k in key}).drop_duplicates()
    known = out.merge(exposed, on=key, how="left", indicator=True)["_merge"].eq("both").to_numpy()
    joined = frame.merge(out, on=key, how="left") if len(frame) else frame.assign(outcome=np.nan)
    unknown = out.loc[~known, key]
    return joined, {"key": key, "rows": int(len(out)), "matched": int(known.sum()), "unknown": int((~known).sum()),
                    "unknown_examples": unknown.head(5).to_dict("records")}


def _bootstrap_rates(sums: np.ndarray, counts: np.ndarray, n_boot: int, rng, chunk: int = 100) -> np.ndarray:
    """`n_boot` rates sum(outcomes) / sum(exposures) over units drawn with replacement."""
    n = len(sums)
    rates = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, (min(chunk, n_boot - start), n))
        rates[start:start + len(idx)] = sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1e-12)
    return rates


def compare_arms(joined: pd.DataFrame, missing: str, n_boot: int, seed: int, alpha: float) -> dict:
    """Per-arm outcome rate with a unit-level bootstrap interval, and challenger - champion."""
    rows = joined[joined["arm"].isin(ARMS)]
    if missing == "zero":
        rows = rows.assign(outcome=rows["outcome"].fillna(0.0))
    with_outcome = rows[rows["outcome"].notna()]
    per_unit = with_outcome.groupby(["arm", "unit_id"])["outcome"].agg(["sum", "count"]).reset_index()
    rng = np.random.default_rng(seed)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    arms, draws = {}, {}
    for arm in ARMS:
        units = per_unit[per_unit["arm"] == arm]
        sums, counts = units["sum"].to_numpy(float), units["count"].to_numpy(float)
        entry = {"units": int(len(units)), "exposures": int(counts.sum()),
                 "without_outcome": int((rows["arm"] == arm).sum() - counts.sum()), "rate": None, "low": None,
                 "high": None}
        if len(units):
            draws[arm] = _bootstrap_rates(sums, counts, n_boot, rng)
            low, high = np.percentile(draws[arm], q)
            entry.update(rate=float(sums.sum() / counts.sum()), low=float(low), high=float(high))
        arms[arm] = entry
    diff = None
    if len(draws) == 2:
        d = draws["challenger"] - draws["champion"]
        low, high = np.percentile(d, q)
        diff = {"diff": arms["challenger"]["rate"] - arms["champion"]["rate"], "low": float(low), "high": float(high),
                "alpha": alpha, "n_boot": n_boot}
    return {"arms": arms, "diff": diff, "missing_outcome": missing}


# ------------------------------------------------------------------------------------------ guardrails
def guardrails(stats: dict | None, versions: dict[str, int], cfg: OnlineConfig) -> dict:
    """The challenger version's error rate and p99 latency against the champion's, from a server_stats snapshot.
    Each check: {champion, challenger, limit, passed (None: not measured)}."""
    checks = {"error_rate": {"champion": None, "challenger": None, "limit": None, "passed": None},
              "p99_ms": {"champion": None, "challenger": None, "limit": None, "passed": None}}
    if not stats or not all(a in versions for a in ARMS):
        return {"checks": checks, "source": None}
    per = {a: stats["versions"].get(str(versions[a]), {}) for a in ARMS}
    e = checks["error_rate"]
    e.update(champion=per["champion"].get("error_rate"), challenger=per["challenger"].get("error_rate"))
    if e["challenger"] is not None:
        e["limit"] = (e["champion"] or 0.0) + cfg.max_error_rate_increase
        e["passed"] = e["challenger"] <= e["limit"] + 1e-12
    p = checks["p99_ms"]
    p.update(champion=per["champion"].get("p99_ms"), challenger=per["challenger"].get("p99_ms"))
    if p["champion"] is not None and p["challenger"] is not None:
        p["limit"] = p["champion"] * cfg.max_p99_ratio
        p["passed"] = p["challenger"] <= p["limit"]
    return {"checks": checks, "source": "Triton statistics (errors since the server started; p99 over its recent "
                                        "window) at " + pd.Timestamp(stats["taken_at"], unit="s").isoformat()}


# ------------------------------------------------------------------------------------------ verdict
def decide(srm: dict, comparison: dict | None, guards: dict) -> tuple[str, list[str]]:
    """(verdict, reasons) from the sample-ratio check, the outcome comparison and the guardrails."""
    if srm["mismatch"]:
        why = (f"arms {srm['stray_arms']} got units but have no share" if srm["stray_arms"] else
               f"chi-square {srm['chi2']:.2f}, p = {srm['p_value']:.2g} < {srm['alpha']}")
        return "stop", [f"sample ratio mismatch ({why}): units per arm {srm['observed']} do not match the shares "
                        f"{srm['expected_share']}; the assignment or the logging is broken, so no outcome comparison "
                        "is made. Find the cause (errors in one arm, a router changed mid-way) before trusting any "
                        "result"]
    reasons = [f"sample ratio fine (p = {srm['p_value']:.3g})" if srm["p_value"] is not None
               else "sample ratio not tested (fewer than two arms with a share)"]
    failed = [f"guardrail {name}: challenger {_fmt(c['challenger'], '.4g')} > limit {_fmt(c['limit'], '.4g')} "
              f"(champion {_fmt(c['champion'], '.4g')})" for name, c in guards["checks"].items() if c["passed"] is False]
    if failed:
        return "stop", reasons + failed
    unmeasured = [name for name, c in guards["checks"].items() if c["passed"] is None]
    diff = comparison["diff"] if comparison else None
    if diff is None:
        return "keep", reasons + ["no outcomes for both arms: nothing to compare yet; keep the champion"]
    level = f"{1 - diff['alpha']:.0%}"
    text = f"outcome rate challenger - champion {diff['diff']:+.4f}, {level} interval [{diff['low']:+.4f}, " \
           f"{diff['high']:+.4f}]"
    if diff["high"] < 0:
        return "stop", reasons + [f"{text}: the challenger is worse"]
    if diff["low"] > 0:
        if unmeasured:
            return "keep", reasons + [f"{text}, but guardrails {unmeasured} were not measured (no server statistics "
                                      "for a version): not promoted without them"]
        return "promote", reasons + [f"{text}: the challenger is better", "guardrails hold"]
    return "keep", reasons + [f"{text}: no clear difference; keep the champion (or collect more traffic)"]


def online_report(records: list[dict], log_counts: dict, outcomes: pd.DataFrame | None, stats: dict | None,
                  experiment: str, expected: dict[str, float], cfg: OnlineConfig, n_boot: int, seed: int,
                  outcome_column: str = "outcome") -> dict:
    """The whole analysis as a dict (see the module doc); `expected`: each arm's share, the unassigned rest
    included (relkd.serving.assignment.Assigner.expected)."""
    frame, dedup = exposure_frame(records, experiment)
    report = {"experiment": experiment, "log": {**log_counts, **dedup}, "versions": {}, "exposures": {}, "units": {},
              "srm": None, "outcomes": None, "comparison": None, "guardrails": None}
    if frame.empty or not frame["arm"].isin(ARMS).any():
        report.update(verdict="keep", reasons=[f"no exposures of experiment {experiment!r} in champion or challenger "
                                               "arms (no challenger served, e.g. right after a promotion, or no "
                                               "traffic routed): nothing to compare"])
        return report
    report["versions"] = served_versions(frame)
    report["exposures"] = {a: int(n) for a, n in frame["arm"].value_counts().items()}
    first_arm = frame.drop_duplicates("unit_id")
    report["units_in_several_arms"] = int(frame.groupby("unit_id")["arm"].nunique().gt(1).sum())
    report["units"] = {a: int(n) for a, n in first_arm["arm"].value_counts().items()}
    srm = srm_check(report["units"], expected, cfg.srm_alpha)
    if report["units_in_several_arms"]:
        srm["mismatch"] = True
        srm["stray_arms"] = srm["stray_arms"] or [f"{report['units_in_several_arms']} units seen in several arms"]
    report["srm"] = srm
    report["router_metrics"] = _router_counts(stats, experiment)
    report["guardrails"] = guardrails(stats, report["versions"], cfg)
    if not srm["mismatch"] and outcomes is not None:
        joined, report["outcomes"] = join_outcomes(frame, outcomes, outcome_column)
        report["comparison"] = compare_arms(joined, cfg.missing_outcome, n_boot, seed, cfg.alpha)
    report["verdict"], report["reasons"] = decide(srm, report["comparison"], report["guardrails"])
    return report


def _router_counts(stats: dict | None, experiment: str) -> dict | None:
    """Rows per arm the router counted on /metrics (since its server started), for a check against the log."""
    if not stats or not stats.get("router"):
        return None
    out = {}
    for s in stats["router"]:
        if s["name"] == "relkd_ab_requests_total" and s["labels"].get("experiment") == experiment:
            out[s["labels"]["arm"]] = out.get(s["labels"]["arm"], 0) + int(s["value"])
    return out


# ------------------------------------------------------------------------------------------ report
def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def online_markdown(report: dict, outcome_note: str | None = None) -> str:
    """The report as markdown; `outcome_note` (e.g. that the outcomes are simulated) goes on top."""
    v = report["versions"]
    lines = [f"# Online A/B: experiment {report['experiment']!r}", ""]
    if outcome_note:
        lines += [f"> {outcome_note}", ""]
    lines += [f"**Verdict: {report['verdict']}**", ""] + [f"- {r}" for r in report["reasons"]] + [""]
    log = report["log"]
    lines += ["## Exposure log", "",
              f"{log.get('records', 0)} records in {log.get('files', 0)} files; torn last lines skipped "
              f"{log.get('torn', 0)}, corrupt lines {log.get('corrupt', 0)}, records lacking fields "
              f"{log.get('missing_fields', 0)}, repeated (request id, row) {log.get('duplicates', 0)} (first kept), "
              f"records of other experiments {log.get('other_experiments', 0)}.", ""]
    if not report["units"]:
        return "\n".join(lines) + "\n"
    lines += ["| arm | version | units | exposures | router counted |", "|---|---|---|---|---|"]
    counted = report.get("router_metrics") or {}
    for arm in (*ARMS, REST):
        if arm in report["units"] or arm in v:
            lines.append(f"| {arm} | {v.get(arm, '-')} | {report['units'].get(arm, 0)} | "
                         f"{report['exposures'].get(arm, 0)} | {counted.get(arm, '-')} |")
    srm = report["srm"]
    lines += ["", "## Sample ratio (units per arm vs the configured shares)", "",
              f"chi-square {_fmt(srm['chi2'], '.3f')}, p = {_fmt(srm['p_value'], '.4g')} (mismatch below "
              f"{srm['alpha']}): **{'MISMATCH' if srm['mismatch'] else 'fine'}**; expected shares "
              f"{srm['expected_share']}.", ""]
    if report["comparison"]:
        o, c = report["outcomes"], report["comparison"]
        lines += ["## Outcomes", "",
                  f"{o['rows']} outcomes joined on {'+'.join(o['key'])}: {o['matched']} matched an exposure, "
                  f"{o['unknown']} name ids no exposure has"
                  + (f" (e.g. {o['unknown_examples']})" if o["unknown"] else "") + f"; exposures without an "
                  f"outcome are {'counted as 0' if c['missing_outcome'] == 'zero' else 'left out'}.", "",
                  "| arm | units | exposures with outcome | without | rate | interval |", "|---|---|---|---|---|---|"]
        for arm, a in c["arms"].items():
            lines.append(f"| {arm} | {a['units']} | {a['exposures']} | {a['without_outcome']} | {_fmt(a['rate'])} | "
                         f"[{_fmt(a['low'])}, {_fmt(a['high'])}] |")
        if c["diff"]:
            d = c["diff"]
            lines += ["", f"Challenger - champion: {d['diff']:+.4f}, {1 - d['alpha']:.0%} bootstrap interval over "
                          f"units [{d['low']:+.4f}, {d['high']:+.4f}] ({d['n_boot']} resamples).", ""]
    g = report["guardrails"]
    lines += ["## Guardrails (per served version)", "", f"Source: {g['source'] or 'no server statistics'}.", "",
              "| check | champion | challenger | limit | holds |", "|---|---|---|---|---|"]
    for name, ck in g["checks"].items():
        held = "not measured" if ck["passed"] is None else "yes" if ck["passed"] else "NO"
        lines.append(f"| {name} | {_fmt(ck['champion'], '.4g')} | {_fmt(ck['challenger'], '.4g')} | "
                     f"{_fmt(ck['limit'], '.4g')} | {held} |")
    return "\n".join(lines) + "\n"
