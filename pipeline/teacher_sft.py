"""Stage `teacher_sft`: LoRA SFT of the teacher on the SFT set (transformers' Trainer; `accelerate launch` runs it on
teacher.num_processes processes, rank 0 tracks and saves). The same module trains the single-perspective teachers
(`teacher_single_sft@<perspective>`, on their own SFT sets) and, with --curriculum, the ProgressiveCoT teachers
(`teacher_progressive_sft@<name>`: MPCoT's SFT set, shortest rationales first)."""
from __future__ import annotations

import click

from pipeline._ranks import main_process_run, on_main_process
from pipeline.common import setup, stage_command
from relkd.io import read_jsonl, write_json
from relkd.models import resolve


def run(params_path, data, out, checkpoints, metrics_path, teacher="mpcot", curriculum=None) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    rows = read_jsonl(data)
    examples = [{"prompt": d["prompt"], "completion": d["completion"], "group": d["group"]} for d in rows]
    tracked = {"teacher": cfg.model_dump(include={"model", "num_processes", "sft"})}
    phases = None
    if curriculum is not None:
        from relkd.teacher.trainers import curriculum_phases

        if curriculum not in cfg.progressive:
            raise SystemExit(f"teacher_sft: no curriculum {curriculum!r} in teacher.progressive "
                             f"({sorted(cfg.progressive)})")
        phases = curriculum_phases([d["rationale"] for d in rows], cfg.progressive[curriculum].phases)
        tracked["curriculum"] = {"name": curriculum, **cfg.progressive[curriculum].model_dump()}
    from relkd.teacher.trainers import sft

    with main_process_run("teacher_sft", tracked, inputs=[data], experiment=params.tracking.experiment,
                          run_name=f"teacher_sft:{teacher}", tags={"relkd.teacher": teacher}):
        # A batch holds the examples of one prompt, whose shared instructions then run once (trainers.sft).
        metrics = {"n_examples": len(examples),
                   "train": sft(resolve(cfg.model), examples, out, cfg.sft, checkpoints=checkpoints, phases=phases)}
        if phases is not None:
            metrics["examples_by_phase"] = [phases.count(k) for k in range(max(phases) + 1)]
        if on_main_process():
            import mlflow

            from relkd.tracking import log_metrics

            log_metrics(metrics)
            mlflow.log_artifacts(out, artifact_path="adapter")
    if on_main_process():
        write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.data, a.out, a.checkpoints, a.metrics, a.teacher, a.curriculum)


main = stage_command(__doc__, _main, ("data", "SFT examples JSONL (teacher_sft_data)"), ("out", "adapter folder"),
                     ("checkpoints", "Trainer checkpoints (a rerun of a killed stage resumes from them)"),
                     ("metrics", "metrics JSON"),
                     options=[click.Option(["--teacher"], default="mpcot", show_default=True,
                                           help="the teacher's name in the MLflow run (tag relkd.teacher)"),
                              click.Option(["--curriculum"], default=None,
                                           help="a teacher.progressive name: train its curriculum (ProgressiveCoT)")])

if __name__ == "__main__":
    main()
