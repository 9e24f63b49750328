"""Stage `register`: every trained student -> ONNX (verified) -> MLflow model, registered under one name;
the baseline becomes champion when there is none; the best candidate gets the `challenger` alias."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.common import read_labels, read_split, seed_dir, served_seed, setup, stage_command
from relkd.io import write_json
from relkd.tracking import configure


def sample_pairs(prepared: str) -> list[tuple[str, str]]:
    """Short and long validation pairs: the exporter traces on them and checks other padded shapes."""
    valid = read_split(prepared, "valid")
    order = valid.assign(n=valid["query"].str.len() + valid["title"].str.len()).sort_values("n")
    picks = [order.iloc[0], order.iloc[len(order) // 2], order.iloc[-1]]
    return [(r["query"], r["title"]) for r in picks]


def export_student(folder: Path, onnx: Path, max_length: int, samples: list[tuple[str, str]], threads: int) -> dict:
    """One saved student -> its verified ONNX file (in a worker process of :func:`export_all`)."""
    import torch

    from relkd.serving.export import export_onnx
    from relkd.student.model import InferenceWrapper, load_student

    torch.set_num_threads(threads)
    model, tokenizer = load_student(folder)
    return export_onnx(InferenceWrapper(model), tokenizer, onnx, max_length, samples)


def export_all(jobs: dict[str, tuple[Path, Path]], max_length: int, samples, workers: int) -> dict[str, dict]:
    """Every student's export check, by name: the exporter's tracing runs on one core, so `workers` processes
    (spawned: no forked torch threads) export side by side, each on cores / workers torch threads."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return {name: export_student(folder, onnx, max_length, samples, os.cpu_count() or 1)
                for name, (folder, onnx) in jobs.items()}
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(export_student, folder, onnx, max_length, samples, threads)
                   for name, (folder, onnx) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def run(params_path, prepared, models, policy_path, onnx_dir, out, metrics_path, aliases_path) -> dict:
    params = setup(params_path)
    reg, scfg = params.registry, params.student
    seed = served_seed(params)
    labels = read_labels(prepared)
    configure(".")
    from relkd.student.trainer import kept_epoch
    from relkd.tracking import registry

    policy = registry.PromotionPolicy.load(policy_path)
    variants = [*scfg.variants, *scfg.table6_rows]  # Table 6's rows (the Avg. Ensemble, ...) are served alike
    jobs = {v: (seed_dir(Path(models) / v, seed), Path(onnx_dir) / f"{v}.onnx") for v in variants}
    checks = export_all(jobs, scfg.max_length, sample_pairs(prepared), reg.export_workers)
    registered = {}
    for variant in variants:
        folder, onnx = jobs[variant]
        results = json.loads((Path(models) / variant / "results.json").read_text(encoding="utf-8"))[str(seed)]
        check = checks[variant]
        kept = kept_epoch(results["epochs"])  # the epoch whose weights were saved, not the last one
        metrics = {"accuracy": results["accuracy"], "macro_f1": results["macro_f1"],
                   "valid_accuracy": kept.get("valid_accuracy", 0.0), "valid_macro_f1": kept.get("valid_macro_f1", 0.0),
                   "f1": {lab: results["per_class_f1"][lab] for lab in labels},
                   "onnx_max_abs_diff": check["max_abs_diff_logits"]}
        mv = registry.log_student(folder, onnx, metrics, variant, reg.name, run_id=results["mlflow_run_id"],
                                  experiment=params.tracking.experiment)
        registered[variant] = {"version": mv["version"], "model_uri": mv["model_uri"], **{
            k: metrics[k] for k in ("accuracy", "macro_f1", "valid_accuracy", "valid_macro_f1")}}

    decisions = {}
    current = registry.aliases(reg.name)
    if registry.CHAMPION not in current:
        # The first model becomes champion: the baseline, so the A/B pits LRKD against the control.
        d = registry.promote(reg.name, policy, version=registered[reg.baseline]["version"])
        decisions["first_champion"] = {"version": d.version, "promoted": d.promote, "reasons": d.reasons}
        if not d.promote:
            raise SystemExit(f"register: the baseline {reg.baseline!r} failed the promotion gate and there is no "
                             f"champion: {d.reasons}")
    champion = registry.aliases(reg.name)[registry.CHAMPION]
    best = registry.pick_challenger(registered, champion, reg.baseline, reg.candidates, reg.select_by)
    registry.set_challenger(reg.name, registered[best]["version"])
    served = registry.served(reg.name)  # what export serves; `relkd promote` rewrites it
    # The champion may be a version of an earlier run (not among this run's): its variant comes from the registry.
    state = {"name": reg.name, "versions": registered, "aliases": registry.aliases(reg.name),
             "challenger_variant": best, "champion_variant": served["aliases"][registry.CHAMPION]["variant"],
             "decisions": decisions}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, state)
    write_json(aliases_path, served)
    write_json(metrics_path, {"n_registered": len(registered), "champion_version": int(champion),
                              "challenger_version": int(registered[best]["version"]),
                              "challenger_valid_macro_f1": registered[best]["valid_macro_f1"]})
    return state


def _main(a) -> None:
    run(a.params, a.prepared, a.models, a.policy, a.onnx, a.out, a.metrics, a.aliases)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"), ("models", "models/student folder"),
                     ("policy", "promotion policy YAML"), ("onnx", "folder for the verified ONNX files"),
                     ("out", "registry state JSON (versions, aliases)"), ("metrics", "metrics JSON"),
                     ("aliases", "the served aliases file (git-tracked; export depends on it, relkd promote writes "
                                 "it)"))

if __name__ == "__main__":
    main()
