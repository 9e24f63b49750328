"""Stage `teacher_dpo`: DPO on the cross-perspective preference pairs, continuing the SFT adapter (transformers'
Trainer; `accelerate launch` runs it on teacher.num_processes processes, rank 0 tracks and saves)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline._ranks import main_process_run, on_main_process
from pipeline.common import setup, stage_command
from relkd.io import read_jsonl, write_json
from relkd.models import resolve

log = logging.getLogger("teacher_dpo")


def run(params_path, pairs_dir, sft_adapter, out, checkpoints, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    pairs = read_jsonl(Path(pairs_dir) / "pairs.jsonl")
    with main_process_run("teacher_dpo", {"teacher": cfg.model_dump(include={"model", "num_processes", "dpo"})},
                          inputs=[pairs_dir, sft_adapter], experiment=params.tracking.experiment):
        if not pairs:
            # No conflict had both a right and a wrong answer: DPO has nothing to prefer, the SFT
            # teacher is the final one. Said in the metrics, not hidden.
            log.warning("no preference pairs: the DPO teacher is the SFT adapter unchanged")
            if on_main_process():
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(sft_adapter, out)
            metrics = {"n_pairs": 0, "skipped": 1}
        else:
            from transformers import AutoTokenizer

            from relkd.teacher.completions import over_length
            from relkd.teacher.trainers import dpo

            # A pair whose prompt + answer is over teacher.dpo.max_length would be cut before its label line:
            # left out and counted, as teacher_sft_data does.
            tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.model))
            long = set(over_length(tokenizer, [{"prompt": p["prompt"], "completion": p[side]} for p in pairs
                                               for side in ("chosen", "rejected")], cfg.dpo.max_length))
            kept = [p for i, p in enumerate(pairs) if not {2 * i, 2 * i + 1} & long]
            metrics = {"n_pairs": len(kept), "n_too_long": len(pairs) - len(kept), "skipped": 0,
                       "train": dpo(resolve(cfg.model), sft_adapter, kept, out, cfg.dpo, checkpoints=checkpoints)}
        if on_main_process():
            import mlflow

            from relkd.tracking import log_metrics

            log_metrics(metrics)
            mlflow.log_artifacts(out, artifact_path="adapter")
    if on_main_process():
        write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.pairs, a.sft, a.out, a.checkpoints, a.metrics)


main = stage_command(__doc__, _main, ("pairs", "teacher_pairs output folder"), ("sft", "SFT adapter folder"),
                     ("out", "DPO adapter folder"),
                     ("checkpoints", "Trainer checkpoints (a rerun of a killed stage resumes from them)"),
                     ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
