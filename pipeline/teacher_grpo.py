"""Stage `teacher_grpo`: TaoSR1's dynamic sampling + GRPO on the DPO teacher (a copy of it when disabled)."""
from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.io import new_path, write_json
from relkd.models import resolve
from relkd.tracking import log_metrics, stage_run

log = logging.getLogger("teacher_grpo")


def copy_adapter(src, out) -> None:
    """`src` copied to `out` through a temporary sibling, so a half-copied folder never sits at `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_path(out.parent, f".{out.name}.", ".tmp", directory=True)  # the umask's permissions
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def probe(cfg, model_path: str, adapter, pairs, labels, unified, cache_dir) -> tuple[list[str], list[dict]]:
    """The rendered unified prompts of `pairs` and the teacher's k sampled answers to each (cached)."""
    from relkd.teacher.cache import GenerationCache
    from relkd.teacher.engine import make_engine
    from relkd.teacher.judge import Asking, judge, prompts_for
    from relkd.teacher.prompts import UNIFIED

    teacher = make_engine(cfg, model_path).teacher(adapter)
    prompts = prompts_for(teacher.tokenizer, unified, pairs, labels)
    cache = GenerationCache(cache_dir, worker=f"shard-{cfg.shards.shard_index}")
    records = judge(teacher, cache, pairs, prompts, UNIFIED, labels, Asking.of(cfg, n=cfg.grpo.k))
    del teacher  # the inference copy of the teacher; GRPO loads its own trainable one
    gc.collect()
    return prompts, records


def run(params_path, prepared, dpo_adapter, prompts_dir, out, cache_dir, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.teacher
    if not cfg.grpo.enabled:
        # The DAG stays fixed: downstream stages read this folder, which is then the DPO teacher.
        copy_adapter(dpo_adapter, out)
        metrics = {"enabled": 0}
        write_json(metrics_path, metrics)
        return metrics

    from relkd.data.splits import balanced_sample
    from relkd.teacher.grpo import dynamic_sample, grpo, pass_rates
    from relkd.teacher.prompts import UNIFIED, load_perspective
    from relkd.teacher.trainers import MetricsCallback

    labels = read_labels(prepared)
    pairs = balanced_sample(read_split(prepared, "train"), cfg.grpo.n_pairs, cfg.grpo.seed)
    unified = load_perspective(Path(prompts_dir) / f"{UNIFIED}.yaml")
    model_path = resolve(cfg.model)
    with stage_run("teacher_grpo", {"teacher": cfg.model_dump(include={"model", "sampling", "label_decision",
                                                                        "grpo"})},
                   inputs=[prepared, dpo_adapter, prompts_dir], experiment=params.tracking.experiment):
        prompts, records = probe(cfg, model_path, dpo_adapter, pairs, labels, unified, cache_dir)
        rates = pass_rates(records)
        kept = set(dynamic_sample(rates))
        metrics = {
            "enabled": 1, "n_probe": len(pairs), "k": cfg.grpo.k,
            "probe_pass_rate": sum(rates.values()) / max(len(rates), 1),
            "kept": len(kept),
            "dropped_easy": sum(r == 1.0 for r in rates.values()),
            "dropped_hopeless": sum(r == 0.0 for r in rates.values()),
        }
        if not kept:
            # Every probed pair was always or never right: GRPO would see only zero-advantage groups.
            log.warning("dynamic sampling kept no pair: the GRPO teacher is the DPO adapter unchanged")
            copy_adapter(dpo_adapter, out)
            metrics["skipped"] = 1
        else:
            examples = [{"prompt": p, "gold": g} for p, g, pid in zip(prompts, pairs["label"], pairs["pair_id"])
                        if pid in kept]
            metrics["skipped"] = 0
            metrics["train"] = grpo(model_path, dpo_adapter, examples, labels, out, cfg.grpo, cfg.sampling,
                                    callbacks=[MetricsCallback(log_metrics)])
        log_metrics(metrics)
        import mlflow

        mlflow.log_artifacts(out, artifact_path="adapter")
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.dpo, a.prompts, a.out, a.cache, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"), ("dpo", "DPO adapter folder"),
                     ("prompts", "prompt files"), ("out", "GRPO adapter folder (the final teacher)"),
                     ("cache", "generation cache folder (persisted)"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
