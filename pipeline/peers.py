"""Stage `peers`: the rows every student table carries, trained on the students' training rows (the train split)
per seed: the majority class, lexical models (logistic regression, gradient boosting) and sentence-transformers'
CrossEncoder with its own trainer and recipe. Results are written in the students' format (compare reads both)."""
from __future__ import annotations

from pathlib import Path

from pipeline._results import record_test, seed_summary
from pipeline.common import read_labels, read_split, seed_dir, setup, stage_command
from relkd.eval.peers import PEERS, fit_lexical, fit_majority, train_cross_encoder
from relkd.io import write_json
from relkd.tracking import stage_run


def fit_peer(name: str, train, valid, labels, seed: int, params):
    """One peer fitted on `train`; returns (predictor, run params, training history)."""
    cfg, student = params.peers, params.student
    if name == "majority":
        return fit_majority(train["label"].tolist(), labels), {}, []
    if name in ("lexical_lr", "lexical_hgb"):
        kind = name.split("_")[1]
        knobs = cfg.lexical.model_dump() if kind == "lr" else {}
        return fit_lexical(train, labels, seed, kind=kind, **knobs), knobs, []
    if name == "cross_encoder":
        from relkd.models import resolve

        ce = cfg.cross_encoder
        knobs = {**ce.model_dump(), "backbone": student.backbone, "max_length": student.max_length}
        model = train_cross_encoder(train, valid, labels, resolve(student.backbone), seed, ce, student.max_length,
                                    student.eval_batch_size)
        return model, knobs, model.history
    raise ValueError(f"unknown peer {name!r}; peers are {PEERS}")


def run(params_path, prepared, out, metrics_path) -> dict:
    params = setup(params_path)
    labels = read_labels(prepared)
    # The students' training rows: the whole train split (validation only for the CrossEncoder's eval loss).
    train, valid, test = (read_split(prepared, s) for s in ("train", "valid", "test"))
    metrics = {}
    for name in PEERS:
        results = {}
        for seed in params.student.seeds:
            folder = seed_dir(Path(out) / name, seed)
            with stage_run("peers", {"peer": name, "seed": seed, "n_train": len(train)}, inputs=[prepared],
                           experiment=params.tracking.experiment, run_name=f"{name}-seed{seed}",
                           tags={"relkd.peer": name, "relkd.seed": str(seed)}) as run_:
                model, knobs, history = fit_peer(name, train, valid, labels, seed, params)
                import mlflow

                if knobs:
                    mlflow.log_params({f"{name}.{k}": v for k, v in knobs.items()})
                results[str(seed)] = record_test(folder, test, model.predict_proba(test), labels, run_, "peer",
                                                 epochs=history, n_train=len(train))
        write_json(Path(out) / name / "results.json", results)
        metrics[name] = {**seed_summary(results), "n_train": len(train)}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.out, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("out", "peers folder (one sub-folder per peer, one per seed below it)"),
                     ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
