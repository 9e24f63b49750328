"""Stage `probe`: do rationale keywords absent from the pair live in r more than in h_cls? (paper Fig. 4)"""
from __future__ import annotations

from pathlib import Path

from pipeline.common import read_labels, read_split, seed_dir, served_seed, setup, stage_command
from relkd.embed.store import read_embeddings
from relkd.eval.plots import probe_bar_plot, save_figure
from relkd.eval.probing import DEFAULT_STOPWORDS, probe_keywords, probe_summary, run_probes
from relkd.eval.tables import to_markdown
from relkd.io import read_jsonl, write_json, write_text
from relkd.student.data import training_frame


def run(params_path, prepared, rationales, embeddings, models, out, metrics_path) -> dict:
    params = setup(params_path)
    cfg = params.probe
    labels = read_labels(prepared)
    vectors, meta = read_embeddings(embeddings)
    train, notes, _ = training_frame(read_split(prepared, "train"), read_jsonl(rationales), vectors,
                                     meta["pair_ids"], "annotated")
    from relkd.student.model import load_student
    from relkd.student.trainer import predict

    model, tokenizer = load_student(seed_dir(Path(models) / cfg.variant, served_seed(params)))
    _, r, h_cls = predict(model, tokenizer, train, params.student.eval_batch_size)
    # Label words are excluded: a probe for "mismatch" would just predict the label.
    stop = set(DEFAULT_STOPWORDS) | {w for lab in labels for w in lab.lower().split()}
    queries, titles = list(train["query"]), list(train["title"])
    keywords = probe_keywords(notes, queries, titles, cfg.top_n, cfg.min_count, stop)
    results = run_probes([k["keyword"] for k in keywords], notes, queries, titles, r, h_cls,
                         n_runs=cfg.n_runs, seed=cfg.seed)
    summary = probe_summary(results)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "probe_results.json", results)
    if any(x["status"] == "ok" for x in results):
        save_figure(probe_bar_plot(results, title=f"Probe F1: r of {cfg.variant} vs h_cls"),
                    Path(out) / "probe_f1.png")
    table = [{"keyword": x["keyword"], "status": x["status"],
              "F1 r": f"{x['mean_r']:.3f} ± {x['std_r']:.3f}" if x["status"] == "ok" else "-",
              "F1 h_cls": f"{x['mean_cls']:.3f} ± {x['std_cls']:.3f}" if x["status"] == "ok" else "-",
              "p": f"{x['p']:.3g}" if x["status"] == "ok" else x.get("reason", "")} for x in results]
    write_text(Path(out) / "probe.md", f"# Probing {cfg.variant} ({len(train)} annotated train pairs)\n\n"
               + to_markdown(table, ["keyword", "status", "F1 r", "F1 h_cls", "p"]) + "\n")
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    write_json(metrics_path, metrics)
    return metrics


def _main(a) -> None:
    run(a.params, a.prepared, a.rationales, a.embeddings, a.models, a.out, a.metrics)


main = stage_command(__doc__, _main, ("prepared", "prepared data folder"), ("rationales", "annotate output"),
                     ("embeddings", "embed output folder"), ("models", "models/student folder"),
                     ("out", "report folder"), ("metrics", "metrics JSON"))

if __name__ == "__main__":
    main()
