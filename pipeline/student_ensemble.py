"""Stage `student_ensemble@<name>`: the Avg. Ensemble (paper Table 6 / D.2): the students of the single-perspective
teachers (one per teacher.single perspective), their class probabilities averaged at inference, saved as one model
(relkd.student.ensemble) and tested on the test split like a student; its validation scores stand in for the
training epochs register reads."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline._results import record_test, seed_summary
from pipeline.common import read_labels, read_split, seed_dir, setup, stage_command
from relkd.io import write_json


def run(params_path, name, prepared, members_dir, out, metrics_path) -> dict:
    params = setup(params_path)
    cfg, perspectives = params.student, params.teacher.single.perspectives
    if name not in cfg.ensembles:
        raise SystemExit(f"unknown ensemble {name!r}; params.yaml student.ensembles has {cfg.ensembles}")
    labels = read_labels(prepared)
    valid, test = read_split(prepared, "valid"), read_split(prepared, "test")
    from relkd.eval.metrics import classification_report
    from relkd.student.ensemble import AvgEnsemble, save_ensemble
    from relkd.student.model import load_student
    from relkd.student.trainer import predict
    from relkd.tracking import stage_run

    results = {}
    for seed in cfg.seeds:
        loaded = {p: load_student(seed_dir(Path(members_dir) / p, seed)) for p in perspectives}
        model = AvgEnsemble({p: m for p, (m, _) in loaded.items()})
        tokenizer = loaded[perspectives[0]][1]
        members = {p: {k: json.loads((Path(members_dir) / p / "results.json").read_text(encoding="utf-8"))[str(seed)][k]
                       for k in ("accuracy", "macro_f1")} for p in perspectives}
        folder = seed_dir(out, seed)
        with stage_run("student", {"ensemble": name, "members": perspectives, "seed": seed,
                                   "member_variant": cfg.single_variant}, inputs=[members_dir],
                       experiment=params.tracking.experiment, run_name=f"{name}-seed{seed}",
                       tags={"relkd.variant": name, "relkd.recipe": "avg_ensemble", "relkd.seed": str(seed)}) as run_:
            save_ensemble(model, tokenizer, folder)
            rep = classification_report(list(valid["label"]), [labels[i] for i in predict(
                model, tokenizer, valid, cfg.eval_batch_size)[0].argmax(1)], labels)
            probs = predict(model, tokenizer, test, cfg.eval_batch_size)[0]
            results[str(seed)] = record_test(
                folder, test, probs, labels, run_, "student", members=members,
                epochs=[{"epoch": 0, "valid_accuracy": rep["accuracy"], "valid_macro_f1": rep["macro_f1"]}])
    write_json(Path(out) / "results.json", results)
    metrics = seed_summary(results)
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.name, a.prepared, a.members, a.out, a.metrics)


main = stage_command(__doc__, _main, ("name", "the ensemble's name (params.yaml student.ensembles)"),
                     ("prepared", "prepared data folder"),
                     ("members", "folder of the single-perspective teachers' students (<perspective>/seed<N>)"),
                     ("out", "ensemble folder (one sub-folder per seed)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
