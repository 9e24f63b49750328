"""Stage `teacher_sft`: LoRA SFT of the teacher on the SFT set (transformers' Trainer; `accelerate launch` runs it on
teacher.num_processes processes, rank 0 tracks and saves)."""
from __future__ import annotations

from pipeline._ranks import main_process_run, on_main_process
from pipeline.common import setup, stage_command
from relkd.io import read_jsonl, write_json
from relkd.models import resolve


def run(params_path, data, out, checkpoints, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    examples = [{"prompt": d["prompt"], "completion": d["completion"], "group": d["group"]} for d in read_jsonl(data)]
    from relkd.teacher.trainers import sft

    with main_process_run("teacher_sft", {"teacher": cfg.model_dump(include={"model", "num_processes", "sft"})},
                          inputs=[data], experiment=params.tracking.experiment):
        # A batch holds the examples of one prompt, whose shared instructions then run once (trainers.sft).
        metrics = {"n_examples": len(examples),
                   "train": sft(resolve(cfg.model), examples, out, cfg.sft, checkpoints=checkpoints)}
        if on_main_process():
            import mlflow

            from relkd.tracking import log_metrics

            log_metrics(metrics)
            mlflow.log_artifacts(out, artifact_path="adapter")
    if on_main_process():
        write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.data, a.out, a.checkpoints, a.metrics)


main = stage_command(__doc__, _main, ("data", "SFT examples JSONL (teacher_sft_data)"), ("out", "adapter folder"),
                     ("checkpoints", "Trainer checkpoints (a rerun of a killed stage resumes from them)"),
                     ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
