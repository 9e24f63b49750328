"""Row screening (bad rows -> rejects with a reason) and the dataset validation gate (great-expectations)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from relkd.data.schema import DataError
from relkd.data.splits import query_key


def _invalid_utf8(s: pd.Series) -> pd.Series:
    # read_table keeps undecodable bytes as lone surrogates; str.encode fails exactly on those.
    def bad(v) -> bool:
        if isinstance(v, bytes):
            try:
                v.decode("utf-8")
                return False
            except UnicodeDecodeError:
                return True
        try:
            str(v).encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True
    return s.map(bad)


def screen(df: pd.DataFrame, labels: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (kept, rejects). Every input row ends in exactly one of the two; a reject
    carries `reason`, naming the offending value where there is one."""
    reason = pd.Series("", index=df.index, dtype=object)

    def flag(mask: pd.Series, why) -> None:
        new = mask & (reason == "")
        reason[new] = why if isinstance(why, str) else why[new]

    for col in ("query", "title"):
        flag(_invalid_utf8(df[col]), f"invalid UTF-8 in {col} (re-encode the source file as UTF-8)")
    for col in ("query", "title"):
        empty = df[col].map(lambda v: pd.isna(v) or not str(v).strip()).astype(bool)
        flag(empty, f"empty {col}")
    raw = df["raw_label"] if "raw_label" in df else df["label"]
    raw_missing = raw.map(lambda v: pd.isna(v) or not str(v).strip()).astype(bool)
    flag(raw_missing, "missing label")
    unmapped = df["label"].isna()
    flag(unmapped, raw.map(lambda v: f"unknown label {str(v)!r} (add it to data.table.labels, "
                                     "or widen data.table.thresholds)"))
    unknown = ~unmapped & ~df["label"].isin(labels)
    flag(unknown, df["label"].map(lambda v: f"label {str(v)!r} is not in the label set {list(labels)}"))
    ok = reason == ""
    dup = ok & pd.DataFrame({"q": query_key(df["query"]), "t": df["title"]}).duplicated(keep="first")
    flag(dup, "duplicate (query, title) pair; the first occurrence is kept")
    ok = reason == ""
    rejects = df[~ok].assign(reason=reason[~ok])
    for c in ("query", "title"):  # a reject file must be writable: keep bad bytes visible, escaped
        rejects[c] = rejects[c].map(lambda v: v.encode("utf-8", "backslashreplace").decode("utf-8")
                                    if isinstance(v, str) else v)
    return df[ok].reset_index(drop=True), rejects.reset_index(drop=True)


@dataclass
class GateReport:
    success: bool
    failures: list[dict] = field(default_factory=list)

    def text(self) -> str:
        if self.success:
            return "validation gate: passed"
        lines = ["validation gate: FAILED"]
        for f in self.failures:
            rows = ", ".join(map(str, f["rows"][:20])) + (" ..." if len(f["rows"]) > 20 else "")
            lines.append(f"- {f['split']}: {f['check']} ({f['detail']}); rows: {rows or '-'}")
        return "\n".join(lines)


def _expectations(labels, cfg):
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="query"),
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="query", min_value=1, max_value=cfg.max_query_chars),
        gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1, max_value=cfg.max_title_chars),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels)),
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows_per_split),
    ]


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # progress bars are cosmetic; older/newer layouts differ
        pass
    return ctx


def _run(ctx, name: str, df: pd.DataFrame, expectations) -> list[dict]:
    import great_expectations as gx

    batch = (ctx.data_sources.add_pandas(f"src_{name}").add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df}))
    res = batch.validate(gx.ExpectationSuite(name=f"relkd_{name}", expectations=expectations),
                         result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["pair_id"]})
    failures = []
    for r in res.results:
        if r.success:
            continue
        cfg = r.expectation_config
        rows = [u.get("pair_id") for u in (r.result.get("unexpected_index_list") or [])]
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
        detail = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        if r.result.get("observed_value") is not None:
            detail += f", observed {r.result['observed_value']}"
        failures.append({"split": name, "check": cfg.type, "detail": detail, "rows": rows})
    return failures


def gate(splits: dict[str, pd.DataFrame], labels, cfg) -> GateReport:
    """Check each split and the splits together; the caller stops the stage on failure."""
    ctx = _context()
    failures = []
    for name, df in splits.items():
        failures += _run(ctx, name, df, _expectations(labels, cfg))
    import great_expectations.expectations as gxe

    every = pd.concat([d.assign(split=s, query_key=query_key(d["query"])) for s, d in splits.items()],
                      ignore_index=True)
    failures += _run(ctx, "across_splits", every, [
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_key", "title"]),
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
    ])
    # A query must live in one split only: one row per (query, split), then the query must be unique.
    per_query = every.drop_duplicates(["query_key", "split"])
    failures += [dict(f, check="query in two splits") for f in _run(
        ctx, "query_disjoint", per_query, [gxe.ExpectColumnValuesToBeUnique(column="query_key")])]
    return GateReport(success=not failures, failures=failures)


def check_reject_rate(n_in: int, n_rejected: int, max_rate: float) -> None:
    rate = n_rejected / max(n_in, 1)
    if rate > max_rate:
        raise DataError(f"{n_rejected} of {n_in} rows rejected ({rate:.1%} > data.validation.max_reject_rate="
                        f"{max_rate}); check the column mapping and the rejects file, or raise the limit")
