"""Stage `export`: champion and challenger -> optimised (optionally int8) ONNX, calibrated temperature and
tier thresholds, an explanation index -> Triton model repository versions (version = registry version), and the
online A/B router beside them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.common import read_labels, read_split, setup, stage_command
from relkd.embed.store import read_embeddings
from relkd.eval.metrics import reliability_rows
from relkd.eval.plots import reliability_plot, save_figure
from relkd.io import read_jsonl, write_json


def served_roles(registry: dict, recorded: dict, path) -> dict[str, str]:
    """{role: version} to serve: the registry's aliases (the one truth), which must be those recorded in the
    aliases file this stage depends on; a difference means an alias moved without `relkd promote`, so DVC
    would not know to re-export."""
    if registry != recorded:
        raise SystemExit(f"export: the registry serves {registry['aliases']} but {path} records "
                         f"{recorded.get('aliases')}: an alias moved outside `relkd promote`; move it with "
                         "`relkd promote` (which writes the file), or write the registry's aliases into the file")
    return {role: a["version"] for role, a in registry["aliases"].items()}


def explain_index(variant_cfg, embeddings: str, rationales: str) -> dict | None:
    """Training rationales in the space the served latent r lives in: with the guidance loss r is
    pulled towards e_cot, so the nearest e_cot names the rationale the student's reasoning resembles.
    Without guidance r is not in that space, and no index ships."""
    if not variant_cfg.guidance or variant_cfg.r_from_cls:
        return None
    vectors, meta = read_embeddings(embeddings)
    notes = {r["pair_id"]: r["rationale"] for r in read_jsonl(rationales)}
    return {"ids": meta["pair_ids"], "texts": [notes.get(p, "") for p in meta["pair_ids"]], "vectors": vectors}


def from_registry(name: str, version: str, scratch: Path) -> tuple[str, Path, Path]:
    """(variant, student folder, ONNX file) of a registered version, downloaded from the registry: the
    champion may come from an earlier run whose workspace files have since been retrained over."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                     dst_path=str(scratch / f"v{version}")))
    # The shallowest: an Avg. Ensemble's members keep their own relkd_student.json below its folder.
    folder = min((p.parent for p in (local / "artifacts").rglob("relkd_student.json")), key=lambda f: len(f.parts))
    onnx = next((local / "artifacts").glob("*.onnx"))
    variant = mlflow.MlflowClient().get_model_version(name, version).tags["variant"]
    return variant, folder, onnx


def export_version(params, role: str, version: str, prepared, embeddings, rationales, repo, work: Path,
                   plots: Path, scratch: Path) -> dict:
    from relkd.serving.calibration import fit_serving
    from relkd.serving.export import agreement_rate, graph_for, quantize_int8, score_pairs
    from relkd.serving.repository import write_version
    from relkd.student.model import InferenceWrapper, load_student

    ecfg, scfg = params.export, params.student
    labels = list(read_labels(prepared))
    variant, folder, onnx = from_registry(params.registry.name, version, scratch)
    model, tokenizer = load_student(folder)
    max_length = model.max_length  # travels with the saved student
    valid = read_split(prepared, "valid")
    pairs = list(zip(valid["query"], valid["title"]))
    served, fused_for = graph_for(onnx, work / f"{variant}.opt.onnx", params.triton.device, ecfg.optimize)
    info = {"graph": "fp32-optimised" if fused_for else "fp32"}
    if ecfg.int8:  # CPU only (the params check refuses int8 with triton.device gpu)
        q = quantize_int8(onnx, work / f"{variant}.int8.onnx")
        agree = agreement_rate(q, InferenceWrapper(model), tokenizer, pairs, max_length)  # its lexical tables feed both
        info["int8_agreement"] = agree["agreement"]
        if agree["agreement"] >= ecfg.min_int8_agreement:
            served, fused_for, info["graph"] = q, "cpu", "int8"
    # Calibration on the validation split, from the graph that will be served.
    logits, _ = score_pairs(served, tokenizer, pairs, max_length, lexical_tables=model.lexical_tables)
    y = np.array([labels.index(lab) for lab in valid["label"]])
    fit = fit_serving(logits, y, labels, ecfg.relevance_weights, ecfg.relevant_labels, ecfg.target_precisions)
    rows = reliability_rows(fit.pop("probs"), y)  # the bins of ece_after: the plot's ECE is the reported one
    write_json(plots / f"{role}.json", rows)
    save_figure(reliability_plot(rows, title=f"{role}: {variant} (T={fit['temperature']:.2f})"),
                work.parent / f"reliability_{role}.png")
    serving_info = {"labels": labels, "max_length": max_length, "temperature": fit["temperature"],
                    "tier_thresholds": fit["tier_thresholds"], "relevance_weights": fit["relevance_weights"],
                    "intra_op_threads": ecfg.intra_op_threads, "bucket_rows": ecfg.bucket_rows,
                    "optimized_for": fused_for,
                    "registry": {"name": params.registry.name, "version": int(version), "alias": role,
                                 "variant": variant}}
    # Table 6's rows (the Avg. Ensemble, LRKD-Combined) are no variant of the MPCoT teacher's rationales: no index.
    explain = (explain_index(scfg.variants[variant], embeddings, rationales)
               if ecfg.explain and variant in scfg.variants else None)
    if explain is not None:
        serving_info["explain"] = {"file": "explain.npz"}
    write_version(repo, params.triton.model_name, int(version), served, folder, serving_info, explain)
    return {"variant": variant, "version": int(version), **info,
            **{k: fit[k] for k in ("temperature", "ece_before", "ece_after", "tier_thresholds", "tier_precision_met",
                                   "valid_tier_share")}}


def run(params_path, prepared, aliases_path, embeddings, rationales, repo, out, plots, metrics_path) -> dict:
    params = setup(params_path)
    import tempfile

    from relkd.serving.repository import write_config
    from relkd.tracking import configure

    configure(".")
    from relkd.tracking.registry import served

    roles = served_roles(served(params.registry.name), json.loads(Path(aliases_path).read_text(encoding="utf-8")),
                         aliases_path)
    work = Path(out) / "graphs"
    work.mkdir(parents=True, exist_ok=True)
    Path(plots).mkdir(parents=True, exist_ok=True)
    model_dir = Path(repo) / params.triton.model_name
    for old in model_dir.glob("[0-9]*"):  # only the versions in play are served
        if old.name not in roles.values():
            import shutil

            shutil.rmtree(old)
    with tempfile.TemporaryDirectory(prefix="relkd-export-") as scratch:
        exported = {role: export_version(params, role, v, prepared, embeddings, rationales, repo, work,
                                         Path(plots), Path(scratch)) for role, v in roles.items()}
    t = params.triton
    write_config(repo, t.model_name, sorted(int(v) for v in roles.values()), t.max_batch_size,
                 t.preferred_batch_sizes, t.max_queue_delay_us, t.instance_count, t.device)
    from relkd.serving.router import write_router

    write_router(repo, {role: int(v) for role, v in roles.items()}, params.ab, params.online, t)  # the live A/B entry
    write_json(Path(out) / "export.json", exported)
    metrics = {role: {k: v for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
               for role, e in exported.items()}
    write_json(metrics_path, metrics)
    return exported


def _main(a) -> None:
    run(a.params, a.prepared, a.aliases, a.embeddings, a.rationales, a.repo, a.out, a.plots, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"),
                     ("aliases", "the served aliases file (registry/aliases.json)"),
                     ("embeddings", "embed output folder"), ("rationales", "annotate output"),
                     ("repo", "Triton model repository"), ("out", "export report folder"),
                     ("plots", "reliability plot data folder"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
