"""Stage `student@<variant>`: train one student variant per seed, evaluate it on the test split. The same module trains
the students of the single-perspective teachers (`student_single@<perspective>`) and LRKD-Combined
(`student_combined@<name>`): a variant's recipe on other rationales and embeddings, under the row --name."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from pipeline._ranks import main_process_run, on_main_process
from pipeline._results import record_test, seed_summary
from pipeline.common import read_labels, read_split, seed_dir, setup, stage_command
from relkd.embed.store import read_embeddings
from relkd.io import read_jsonl, write_json
from relkd.student.data import guiding_rationales, training_frame
from relkd.tracking import log_metrics


def run(params_path, variant_name, prepared, rationales, embeddings, out, metrics_path, name=None) -> dict:
    params = setup(params_path)
    cfg = params.student
    if variant_name not in cfg.variants:
        raise SystemExit(f"unknown student variant {variant_name!r}; params.yaml student.variants has "
                         f"{sorted(cfg.variants)}")
    variant = cfg.variants[variant_name]
    labels = read_labels(prepared)
    records, (vectors, meta) = read_jsonl(rationales), read_embeddings(embeddings)
    train, notes, emb = training_frame(read_split(prepared, "train"), records, vectors, meta["pair_ids"],
                                       cfg.train_rows)
    notes, emb = guiding_rationales(train, notes, emb, records, cfg.rationale_rows)
    valid, test = read_split(prepared, "valid"), read_split(prepared, "test")

    from relkd.student.model import save_student
    from relkd.student.trainer import predict, train_student

    results = {}
    for seed in cfg.seeds:
        folder = seed_dir(out, seed)
        run_params = {"variant": variant_name, "row": name or variant_name, "seed": seed,
                      "student": cfg.model_dump(exclude={"variants", "seeds"}),
                      "variant_config": variant.model_dump(), "encoder": {k: meta[k] for k in ("name", "dim")}}
        # Under `accelerate launch` every rank trains (gradients all-reduced); rank 0 alone tracks, saves and tests.
        with main_process_run("student", run_params, inputs=[prepared, rationales, embeddings],
                              experiment=params.tracking.experiment, run_name=f"{name or variant_name}-seed{seed}",
                              tags={"relkd.variant": name or variant_name, "relkd.recipe": variant_name,
                                    "relkd.seed": str(seed)}) as run_:
            model, tokenizer, history = train_student(
                train, valid, labels, emb if variant.needs_embeddings else None,
                notes if variant.needs_rationales else None, variant, cfg, seed,
                log=lambda m, step: log_metrics(m, step=step), lexical_recipe=params.peers.lexical)
            if not on_main_process():
                continue
            save_student(model, tokenizer, folder)
            probs = predict(model, tokenizer, test, cfg.eval_batch_size)[0]
            results[str(seed)] = record_test(folder, test, probs, labels, run_, "student", epochs=history,
                                             n_train=len(train),
                                             n_train_with_rationale=int(np.isfinite(emb).all(axis=1).sum()))
    if not on_main_process():
        return {}
    write_json(Path(out) / "results.json", results)
    metrics = seed_summary(results)
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.variant, a.prepared, a.rationales, a.embeddings, a.out, a.metrics, a.name)


main = stage_command(__doc__, _main, ("variant", "variant name (params.yaml student.variants)"),
                     ("prepared", "prepared data folder"), ("rationales", "annotate output (JSONL)"),
                     ("embeddings", "embed output folder"), ("out", "student folder (one sub-folder per seed)"),
                     ("metrics", "metrics JSON"),
                     options=[click.Option(["--name"], default=None,
                                           help="the row's name (MLflow tag relkd.variant); default: the variant")])

if __name__ == "__main__":
    main()
