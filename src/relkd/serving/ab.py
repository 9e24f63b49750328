"""Champion/challenger comparison: deterministic traffic split, A/B report on shared inputs, its markdown.

The paper's online A/B sends 10% of traffic to the new student (the challenger) and 10% to the control
student (the champion); the remaining traffic is not part of the test. Offline, both arms (and,
optionally, more, such as the LLM-tiered teacher) score the same inputs, and the report says how far
they agree, how tiers move, how much each filters (tiers 0-1), and, where gold labels exist, whether
the challenger is better with a paired bootstrap interval and McNemar's test.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from relkd.eval.metrics import classification_report
from relkd.eval.stats import agreement, bootstrap_diff_ci, mcnemar
from relkd.serving.assignment import REST, Assigner
from relkd.serving.triton_model import N_TIERS  # the served tier scale: 0 = irrelevant .. 4 = exact

FILTERED_TIERS = (0, 1)  # dropped before ranking
REQUIRED_ARMS = ("champion", "challenger")
COLUMNS = ("id", "label", "tier", "probs")


def traffic_split(ids: Sequence[Hashable], salt: str,
                  shares: Mapping[str, float] | None = None, rest: str = REST) -> list[str]:
    """The arm of each id: sha256(salt, id) mapped to [0, 1) and cut into consecutive share intervals (arms in
    name order).

    Deterministic (the same id and salt always land in the same arm, across processes and machines)
    and independent across salts (a new experiment reshuffles). Ids beyond the shares get `rest`.
    Default shares are the paper's: 10% challenger, 10% champion. The rule is relkd.serving.assignment's,
    the one the live router applies.
    """
    assign = Assigner(salt, shares, rest)
    return [assign(i) for i in ids]


def _check_arm(name: str, df: pd.DataFrame, labels: Sequence[Hashable], n_tiers: int) -> None:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"arm {name!r} lacks columns {missing}; each arm needs {list(COLUMNS)}, one row per input")
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"arm {name!r} has id {dup!r} more than once; pass one row per input")
    unknown = sorted(set(df["label"]) - set(labels), key=str)
    if unknown:
        raise ValueError(f"arm {name!r} predicts labels {unknown} outside the label set {list(labels)}")
    tiers = df["tier"].to_numpy()
    if len(tiers) and (tiers.min() < 0 or tiers.max() >= n_tiers):
        raise ValueError(f"arm {name!r} has tiers outside 0..{n_tiers - 1} (min {tiers.min()}, max {tiers.max()})")


def ab_report(arms: Mapping[str, pd.DataFrame], labels: Sequence[Hashable], y_true=None, seed: int = 0,
              n_boot: int = 1000, n_tiers: int = N_TIERS) -> dict:
    """Compare arms scored on the same inputs; ``champion`` and ``challenger`` are required.

    Each frame has columns id, label (predicted class name), tier (0..n_tiers-1) and probs (one
    probability per label, in label order). `y_true` maps id -> gold label (a dict or a Series
    indexed by id); ids it lacks, or maps to None/NaN, are unlabelled and only count towards the
    label-free parts. Differences are challenger - champion.
    """
    for name in REQUIRED_ARMS:
        if name not in arms:
            raise ValueError(f"arms must include {list(REQUIRED_ARMS)}; got {list(arms)}")
    labels = list(labels)
    for name, df in arms.items():
        _check_arm(name, df, labels, n_tiers)
    ids = arms["champion"]["id"].tolist()
    aligned = {}
    for name, df in arms.items():
        if len(df) != len(ids) or set(df["id"]) != set(ids):
            raise ValueError(f"arm {name!r} scored {len(df)} inputs, the champion {len(ids)}, and their ids "
                             "differ: score every arm on the same inputs")
        aligned[name] = df.set_index("id").loc[ids]
    names = list(aligned)
    pred = {k: v["label"].tolist() for k, v in aligned.items()}
    tier = {k: v["tier"].to_numpy(dtype=np.int64) for k, v in aligned.items()}
    probs = {}
    for k, v in aligned.items():
        p = np.stack([np.asarray(x, dtype=np.float64) for x in v["probs"]])
        if p.shape != (len(ids), len(labels)):
            raise ValueError(f"arm {k!r}: probs must hold {len(labels)} values per row (one per label), got {p.shape}")
        probs[k] = p

    champ, chall = tier["champion"], tier["challenger"]
    shift = np.zeros((n_tiers, n_tiers), dtype=np.int64)
    np.add.at(shift, (champ, chall), 1)
    report = {
        "n": len(ids),
        "arms": names,
        "labels": labels,
        "agreement": agreement(pred["champion"], pred["challenger"]),
        "pairwise_agreement": {f"{a} vs {b}": agreement(pred[a], pred[b]) for a, b in combinations(names, 2)},
        "mean_prob_tv": float(0.5 * np.abs(probs["challenger"] - probs["champion"]).sum(axis=1).mean()),
        "tier_shift": shift.tolist(),  # rows: champion tier, columns: challenger tier
        "tier_share": {k: (np.bincount(t, minlength=n_tiers) / len(t)).tolist() for k, t in tier.items()},
        "filtered_share": {k: float(np.isin(t, FILTERED_TIERS).mean()) for k, t in tier.items()},
        "labelled": None,
    }

    if y_true is not None:
        gold = pd.Series(y_true) if not isinstance(y_true, pd.Series) else y_true
        gold = gold.reindex(ids)
        has = gold.notna().to_numpy()
        if has.any():
            y = gold[has].tolist()
            sub = {k: [p for p, h in zip(v, has) if h] for k, v in pred.items()}
            per_arm = {}
            for k in names:
                rep = classification_report(y, sub[k], labels)
                per_arm[k] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}
            report["labelled"] = {
                "n": int(has.sum()),
                "metrics": per_arm,
                "diff_ci": {m: bootstrap_diff_ci(y, sub["champion"], sub["challenger"], metric=m, labels=labels,
                                                 n_boot=n_boot, seed=seed) for m in ("accuracy", "macro_f1")},
                # b01: champion wrong, challenger right; b10: the reverse.
                "mcnemar": mcnemar(y, sub["champion"], sub["challenger"]),
            }
    return report


def ab_markdown(report: dict) -> str:
    """The A/B report as markdown: agreement, tier shift, filtered shares, labelled comparison."""
    n_tiers = len(report["tier_shift"])
    lines = [f"# Champion vs challenger ({report['n']} inputs)", "",
             f"- label agreement: {report['agreement']:.2%}",
             f"- mean total variation between class distributions: {report['mean_prob_tv']:.4f}"]
    if len(report["arms"]) > 2:
        lines += [f"- agreement {k}: {v:.2%}" for k, v in report["pairwise_agreement"].items()]
    lines += ["", "## Filtered (tiers 0-1) and tier mix", "",
              "| arm | filtered | " + " | ".join(f"tier {t}" for t in range(n_tiers)) + " |",
              "|---|---|" + "---|" * n_tiers]
    for arm in report["arms"]:
        shares = " | ".join(f"{s:.1%}" for s in report["tier_share"][arm])
        lines.append(f"| {arm} | {report['filtered_share'][arm]:.1%} | {shares} |")
    lines += ["", "## Tier shift (rows: champion tier, columns: challenger tier)", "",
              "| champion \\ challenger | " + " | ".join(str(t) for t in range(n_tiers)) + " |",
              "|---|" + "---|" * n_tiers]
    lines += [f"| {t} | " + " | ".join(str(c) for c in row) + " |" for t, row in enumerate(report["tier_shift"])]
    lab = report["labelled"]
    if lab is None:
        lines += ["", "No labelled inputs: accuracy and significance not computed."]
        return "\n".join(lines) + "\n"
    lines += ["", f"## Labelled inputs ({lab['n']})", "", "| arm | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} |" for k, v in lab["metrics"].items()]
    lines += ["", "| challenger - champion | diff | CI (paired bootstrap) |", "|---|---|---|"]
    for m, ci in lab["diff_ci"].items():
        level = 1 - ci["alpha"]
        lines.append(f"| {m} | {ci['diff']:+.4f} | [{ci['low']:+.4f}, {ci['high']:+.4f}] ({level:.0%}, "
                     f"{ci['n_boot']} resamples) |")
    mc = lab["mcnemar"]
    lines += ["", f"McNemar (exact): challenger right where champion wrong {mc['b01']}, the reverse {mc['b10']}, "
                  f"p = {mc['p_value']:.4g}"]
    return "\n".join(lines) + "\n"
