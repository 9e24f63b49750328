"""The model registry: register a student as an MLflow pyfunc model and gate champion promotion on a policy.

A registered version carries its evaluation metrics as version tags ``metric.<name>`` (per-class F1
as ``metric.f1.<label>``), so the promotion gate reads everything it compares from the registry
itself. Aliases name the roles: ``challenger`` (the version under review) and ``champion`` (the one
served). :func:`decide` is the pure rule; :func:`promote` applies it and records the outcome as
``promotion.*`` tags on the version.

The pyfunc model is the ONNX graph plus the ``tokenizers`` tokenizer of the student folder, logged as MLflow
"models from code" (relkd/serving/student_pyfunc.py travels with the version as a file, nothing is pickled);
it loads with onnxruntime, tokenizers, pandas and numpy only (no torch, no relkd).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from pydantic import Field, ValidationError, model_validator

from relkd.section import ConfigError, Section, format_errors, read_yaml
from relkd import lexical
from relkd.serving import student_pyfunc, triton_model
from relkd.serving.student_pyfunc import StudentPyfunc
from relkd.tracking.runs import flatten, log_metrics, stage_run

REGISTERED_NAME = "relevance-student"
CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG = "metric."
VARIANT_TAG = "variant"
PROMOTION_TAG = "promotion."
# Requirements of the served model (not of relkd): what StudentPyfunc imports at load and predict time.
SERVING_PACKAGES = ("onnxruntime", "tokenizers", "pandas", "numpy")
# Signature example: two pairs of different lengths.
EXAMPLE_PAIRS = (("usb c cable", "Anker USB-C to USB-C cable, 2 m, braided"),
                 ("red running shoes size 10", "Nike Air Zoom Pegasus men's running shoe, red, size 10"))


class RegistryError(ValueError):
    """A registered model, version or alias that the call needs does not exist or is in the wrong role."""


def serving_requirements() -> list[str]:
    """The served model's pip requirements, pinned to the installed versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def _metric_tags(metrics: dict) -> dict[str, str]:
    tags = {}
    for key, value in flatten(metrics).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {key!r} has value {value!r}; registry metrics must be numbers "
                             "(nest per-class values as {'f1': {label: value}})")
        tags[f"{METRIC_TAG}{key}"] = repr(float(value))
    return tags


def log_student(student_dir, onnx_path, metrics: dict, variant: str, registered_name: str = REGISTERED_NAME,
                run_id: str | None = None, experiment: str = "relkd") -> dict:
    """Log the student as an MLflow pyfunc model, register it, and tag the version; returns
    {name, version, run_id, model_uri} (model_uri: ``models:/<name>/<version>``).

    The model goes to run `run_id` (e.g. the training stage's run), else to the active run, else to
    a new ``register`` stage run in `experiment`. `metrics` (nested dicts flattened to dotted keys,
    e.g. {"macro_f1": .8, "accuracy": .8, "f1": {label: f1}}) are logged on that run and stored as
    version tags ``metric.<key>``, which the promotion gate reads; `variant` becomes tag ``variant``.
    """
    student_dir, onnx_path = Path(student_dir), Path(onnx_path)
    if not (student_dir / "relkd_student.json").is_file():
        raise FileNotFoundError(f"{student_dir} is not a student folder (no relkd_student.json); "
                                "write one with relkd.student.model.save_student")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}; export one with relkd.serving.export.export_onnx")
    tags = {VARIANT_TAG: str(variant), **_metric_tags(metrics)}
    artifacts = {"student": str(student_dir.resolve()), "onnx": str(onnx_path.resolve())}

    python_model = StudentPyfunc()
    python_model.load_context(mlflow.pyfunc.PythonModelContext(artifacts=artifacts, model_config={}))
    example = pd.DataFrame({"query": [q for q, _ in EXAMPLE_PAIRS], "title": [t for _, t in EXAMPLE_PAIRS]},
                           dtype=object)
    signature = mlflow.models.infer_signature(example, python_model.predict(None, example))

    def _log() -> tuple[str, str]:
        log_metrics(metrics)
        info = mlflow.pyfunc.log_model(name="student", python_model=student_pyfunc.__file__, artifacts=artifacts,
                                       code_paths=[triton_model.__file__, lexical.__file__], signature=signature,
                                       input_example=example, pip_requirements=serving_requirements())
        return info.model_uri, mlflow.active_run().info.run_id

    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id != run_id:
        raise RegistryError(f"run {active.info.run_id} is active but run_id={run_id!r} was given: end the "
                            "active run first, or pass run_id=None to log into the active run")
    if active is not None:
        logged_uri, used_run = _log()
    elif run_id is not None:
        with mlflow.start_run(run_id=run_id):
            logged_uri, used_run = _log()
    else:
        with stage_run("register", {"variant": variant, "registered_name": registered_name},
                       experiment=experiment, tags={"relkd.variant": variant}):
            logged_uri, used_run = _log()
    mv = mlflow.register_model(logged_uri, registered_name, tags=tags)
    return {"name": registered_name, "version": str(mv.version), "run_id": used_run,
            "model_uri": f"models:/{registered_name}/{mv.version}"}


# ------------------------------------------------------------------------------------------ aliases
def _version(name: str, version) -> "mlflow.entities.model_registry.ModelVersion":
    try:
        return mlflow.MlflowClient().get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"registered model {name!r} has no version {version!r} (versions: "
                            f"{', '.join(versions(name)) or 'none'})") from None


def versions(name: str) -> list[str]:
    """Version numbers of registered model `name`, ascending ([] when it does not exist)."""
    found = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    return [str(v) for v in sorted(int(m.version) for m in found)]


def aliases(name: str) -> dict[str, str]:
    """alias -> version of registered model `name` (e.g. {"champion": "1", "challenger": "2"})."""
    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r}; register one with log_student") from None
    return {alias: str(v) for alias, v in sorted(model.aliases.items())}


def served(name: str) -> dict:
    """What the registry says to serve: {alias: {"version", "variant"}} for champion and challenger (those
    set). Written by `register` and `relkd promote` to registry/aliases.json, the file the `export` stage
    depends on, so moving an alias re-exports on the next `dvc repro`."""
    out = {}
    for alias, version in aliases(name).items():
        if alias in (CHAMPION, CHALLENGER):
            out[alias] = {"version": version, "variant": _version(name, version).tags.get(VARIANT_TAG)}
    return {"name": name, "aliases": out}


def version_metrics(name: str, version) -> dict[str, float]:
    """The ``metric.<key>`` tags of a version as {key: value}."""
    mv = _version(name, version)
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(METRIC_TAG):
            try:
                out[key[len(METRIC_TAG):]] = float(value)
            except ValueError:
                raise RegistryError(f"{name} version {version} has tag {key}={value!r}, not a number; "
                                    "re-register it with numeric metrics") from None
    return out


def pick_challenger(registered: dict[str, dict], champion: str, baseline: str, candidates: list[str] | None,
                    select_by: str) -> str:
    """The variant to name challenger: among `candidates` (None: every registered variant but the baseline) that
    is not the champion's version, the one with the highest `select_by` (a validation metric: the test split
    stays for reporting). `registered` maps variant -> {"version", <metrics>...}."""
    pool = [v for v in (candidates or [v for v in registered if v != baseline]) if registered[v]["version"] != champion]
    if not pool:
        raise RegistryError("no candidate variant to become challenger (each is the champion or none is "
                            "registered); set registry.candidates")
    return max(pool, key=lambda v: registered[v].get(select_by, float("-inf")))


def set_challenger(name: str, version) -> None:
    """Point alias ``challenger`` at `version` (it must exist and must not be the champion)."""
    mv = _version(name, version)
    if aliases(name).get(CHAMPION) == str(mv.version):
        raise RegistryError(f"{name} version {mv.version} is the champion; a challenger must be another version")
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, str(mv.version))


# ------------------------------------------------------------------------------------------ policy
class Guard(Section):
    """A metric the challenger may not lose much on while gaining on the policy's main metric."""

    metric: str = Field(description="metric key (a version tag metric.<key>), e.g. accuracy")
    max_drop: float = Field(0.0, ge=0, description="largest allowed drop vs the champion (absolute)")


class PromotionPolicy(Section):
    """When a challenger may replace the champion (registry/policy.yaml)."""

    metric: str = Field("macro_f1", min_length=1,
                        description="the metric a challenger must improve on (the paper reports accuracy and "
                        "macro-F1; macro-F1 weighs the rare mismatch classes equally)")
    min_gain: float = Field(0.0, description="required absolute gain on `metric` over the champion "
                            "(0: at least equal)")
    guards: list[Guard] = Field(default_factory=list, description="metrics that must not drop by more "
                                "than max_drop vs the champion")
    per_class_metric: str = Field("f1", min_length=1, description="per-class metric prefix: version tags "
                                  "metric.<per_class_metric>.<label>")
    per_class_floor: float | None = Field(None, ge=0, le=1, description="minimum per-class value every "
                                          "label must reach (also for the first model); None: no floor")
    min_ci_low: float | None = Field(None, description="when the gate measures both versions on the same rows: "
                                     "the lower end of the 95% paired bootstrap interval of the gain on `metric` "
                                     "must reach this (e.g. 0: the challenger is not worse beyond noise); None: "
                                     "the point gain and min_gain decide")

    @model_validator(mode="after")
    def _distinct_guards(self) -> "PromotionPolicy":
        names = [g.metric for g in self.guards]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"guards name metric(s) {dup} more than once; keep one guard per metric")
        return self

    @classmethod
    def load(cls, path) -> "PromotionPolicy":
        """Read and validate a policy YAML file; ConfigError names each unknown key or bad value."""
        raw = read_yaml(path, "promotion policy", " (the repository keeps one in registry/policy.yaml)")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(format_errors(err, f"invalid promotion policy {path}:")) from None


# ------------------------------------------------------------------------------------------ the gate
@dataclass(frozen=True)
class Decision:
    """Outcome of the promotion gate: one reason per check, each starting with 'pass:' or 'fail:'."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    version: str | None = None
    champion: str | None = None  # the champion the challenger was compared with (None: there was none)


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(policy: PromotionPolicy, challenger: dict[str, float], champion: dict[str, float] | None) -> Decision:
    """Apply `policy` to the challenger's and champion's metrics (None: no champion yet).

    Without a champion the first model becomes champion, provided it carries the policy's metric (the
    issue's rule: something must be served; a per-class floor it misses is reported as a note, not a
    failure, and every later challenger must meet it). With one, the challenger must gain at least min_gain on the metric,
    stay within each guard's max_drop, meet the floor, and cover the champion's label set.
    """
    reasons: list[str] = []
    ok = True

    def check(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        reasons.append(("pass: " if passed else "fail: ") + text)

    m = policy.metric
    if m not in challenger:
        check(False, f"challenger has no {m} (its metrics: {', '.join(sorted(challenger)) or 'none'}); "
                     "register it with that metric")
    elif champion is None:
        check(True, f"no champion yet: the first model becomes champion ({m} {_fmt(challenger[m])})")
    elif m not in champion:
        check(True, f"champion has no {m}: {m} {_fmt(challenger[m])} is not compared")
    else:
        gain = challenger[m] - champion[m]
        check(gain >= policy.min_gain - 1e-12,
              f"{m} {_fmt(challenger[m])} vs champion {_fmt(champion[m])}: gain {gain:+.4f} "
              f"{'>=' if gain >= policy.min_gain - 1e-12 else '<'} min_gain {_fmt(policy.min_gain)}")

    if champion is not None:
        for g in policy.guards:
            if g.metric not in challenger:
                check(False, f"guard {g.metric}: the challenger has no {g.metric}")
            elif g.metric not in champion:
                check(True, f"guard {g.metric}: the champion has no {g.metric}, not compared")
            else:
                drop = champion[g.metric] - challenger[g.metric]
                passed = drop <= g.max_drop + 1e-12
                check(passed, f"guard {g.metric} {_fmt(challenger[g.metric])} vs champion "
                              f"{_fmt(champion[g.metric])}: drop {drop:+.4f} {'<=' if passed else '>'} "
                              f"max_drop {_fmt(g.max_drop)}")

    prefix = f"{policy.per_class_metric}."
    mine = {k[len(prefix):]: v for k, v in challenger.items() if k.startswith(prefix)}
    if policy.per_class_floor is not None and champion is None:
        low = sorted(label for label, value in mine.items() if value < policy.per_class_floor)
        reasons.append(f"note: first champion; below per_class_floor {_fmt(policy.per_class_floor)}: "
                       f"{', '.join(prefix + x for x in low) or 'none'}")
    elif policy.per_class_floor is not None:
        if not mine:
            check(False, f"per-class floor {_fmt(policy.per_class_floor)}: the challenger has no "
                         f"{prefix}<label> metrics")
        for label, value in sorted(mine.items()):
            if value < policy.per_class_floor:
                check(False, f"{prefix}{label} {_fmt(value)} < per_class_floor {_fmt(policy.per_class_floor)}")
        if mine and min(mine.values()) >= policy.per_class_floor:
            worst = min(mine, key=mine.get)
            check(True, f"per-class {policy.per_class_metric} >= floor {_fmt(policy.per_class_floor)} "
                        f"(lowest: {prefix}{worst} {_fmt(mine[worst])})")
    if champion is not None:
        theirs = {k[len(prefix):] for k in champion if k.startswith(prefix)}
        if mine and theirs and set(mine) != theirs:
            check(False, f"label sets differ: challenger {sorted(mine)} vs champion {sorted(theirs)}")
    return Decision(promote=ok, reasons=reasons)


def measure_on_rows(name: str, version, rows: pd.DataFrame) -> tuple[dict[str, float], list[str], list[str]]:
    """A registered version's metrics on `rows` (query, title, label): (metrics in the tag layout — accuracy,
    macro_f1, f1.<label> — its predicted labels, the label set). The version's own ONNX model scores them,
    as served."""
    from relkd.eval.metrics import classification_report

    missing = [c for c in ("query", "title", "label") if c not in rows.columns]
    if missing:
        raise RegistryError(f"the gate's rows lack column(s) {missing} (have {list(rows.columns)}); pass labelled "
                            "query/title/label rows, e.g. data/prepared/test.parquet")
    out = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(rows[["query", "title"]])
    labels = [c.removeprefix("prob.") for c in out.columns if c.startswith("prob.")]
    pred = [str(x) for x in out["label"]]
    report = classification_report([str(x) for x in rows["label"]], pred, labels)
    metrics = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
               **{f"f1.{k}": v["f1"] for k, v in report["per_class"].items()}}
    return metrics, pred, labels


def _decide_on_rows(name: str, policy: PromotionPolicy, version: str, champ: str, rows: pd.DataFrame,
                    n_boot: int, seed: int) -> Decision:
    from relkd.eval.stats import bootstrap_diff_ci

    mine, pred_mine, labels = measure_on_rows(name, version, rows)
    theirs, pred_theirs, labels_theirs = measure_on_rows(name, champ, rows)
    d = decide(policy, mine, theirs)
    reasons = [f"note: both versions scored on the same {len(rows)} current rows (not their registered tags)",
               *d.reasons]
    ok = d.promote
    m = policy.metric
    if m in ("accuracy", "macro_f1") and sorted(labels) == sorted(labels_theirs):
        ci = bootstrap_diff_ci(list(rows["label"].astype(str)), pred_theirs, pred_mine, metric=m, labels=labels,
                               n_boot=n_boot, seed=seed)
        text = f"{m} gain {ci['diff']:+.4f}, 95% paired bootstrap CI [{ci['low']:+.4f}, {ci['high']:+.4f}]"
        if policy.min_ci_low is None:
            reasons.append(f"note: {text}")
        else:
            passed = ci["low"] >= policy.min_ci_low - 1e-12
            ok = ok and passed
            reasons.append(("pass: " if passed else "fail: ") + f"{text}; lower end "
                           f"{'>=' if passed else '<'} min_ci_low {_fmt(policy.min_ci_low)}")
    return Decision(ok, reasons)


def evidence_check(evidence: dict, version: str, champion: str | None) -> tuple[bool, str]:
    """Whether an online A/B report (online.json of relkd.serving.online_ab) supports promoting `version` over
    `champion`, and why."""
    versions = evidence.get("versions") or {}
    about = (str(versions.get("challenger")), str(versions.get("champion")))
    if about != (str(version), str(champion)):
        return False, (f"online A/B evidence is about challenger v{about[0]} vs champion v{about[1]}, not v{version} "
                       f"vs v{champion}: run the online A/B of these versions (`dvc repro ab_online` or `relkd ab "
                       "online`) and pass its online.json")
    verdict = evidence.get("verdict")
    reasons = "; ".join(evidence.get("reasons") or [])
    if verdict != "promote":
        return False, f"online A/B verdict is {verdict!r}, not 'promote' (experiment {evidence.get('experiment')!r}: " \
                      f"{reasons})"
    return True, f"online A/B verdict promote (experiment {evidence.get('experiment')!r}: {reasons})"


def promote(name: str, policy: PromotionPolicy, version=None, dry_run: bool = False,
            rows: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0,
            evidence: dict | None = None) -> Decision:
    """Run the gate for `version` (default: the ``challenger`` alias) against the ``champion``.

    With `rows` (labelled query/title/label rows of the current data, e.g. the test split), both versions
    are scored on those same rows and the gate decides on those figures, with the paired bootstrap interval
    of the gain on the policy's metric in its reasons (and checked against ``min_ci_low``): a champion
    registered on an earlier data version carries test metrics of another split, not comparable with the
    challenger's. Without rows the versions' metric tags are compared (the first champion always).

    Promoted: alias ``champion`` moves to the version, ``challenger`` is removed if it pointed there,
    and the version gets tags promotion.decision=promoted, .reasons, .previous_champion, .time (the
    replaced champion gets promotion.superseded_by). Refused: aliases stay; the version gets
    promotion.decision=refused, .reasons, .champion, .time. A dry run changes nothing.

    `evidence`: an online A/B report (relkd.serving.online_ab, online.json); its verdict must be ``promote`` for
    this version against this champion, on top of the policy.
    """
    current = aliases(name)
    if version is None:
        if CHALLENGER not in current:
            raise RegistryError(f"{name} has no {CHALLENGER!r} alias (aliases: {current or 'none'}); set one with "
                                "set_challenger(name, version) or pass version")
        version = current[CHALLENGER]
    version = str(_version(name, version).version)
    champ = current.get(CHAMPION)
    if champ == version:
        raise RegistryError(f"{name} version {version} is already the champion")
    if rows is not None and champ is not None:
        decision = _decide_on_rows(name, policy, version, champ, rows, n_boot, seed)
    else:
        decision = decide(policy, version_metrics(name, version),
                          version_metrics(name, champ) if champ is not None else None)
    if evidence is not None:
        passed, text = evidence_check(evidence, version, champ)
        decision = Decision(decision.promote and passed, [*decision.reasons, ("pass: " if passed else "fail: ") + text])
    decision = Decision(decision.promote, decision.reasons, version=version, champion=champ)
    if dry_run:
        return decision

    client = mlflow.MlflowClient()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {"decision": "promoted" if decision.promote else "refused", "reasons": "; ".join(decision.reasons),
            "time": now}
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if current.get(CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
        tags["previous_champion"] = champ if champ is not None else "none"
        if champ is not None:
            client.set_model_version_tag(name, champ, f"{PROMOTION_TAG}superseded_by", version)
    else:
        tags["champion"] = champ if champ is not None else "none"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"{PROMOTION_TAG}{key}", value)
    return decision


__all__ = [
    "CHALLENGER", "CHAMPION", "Decision", "Guard", "PromotionPolicy", "REGISTERED_NAME", "RegistryError",
    "aliases", "decide", "evidence_check", "log_student", "pick_challenger", "promote", "served", "serving_requirements",
    "set_challenger", "version_metrics", "versions",
]
