"""The test rows and results.json entries of a trained model, written the same way by the two training stages
(`student@<variant>` and `peers`). Not a stage (a leading underscore: the CLI lists no command for it)."""
from __future__ import annotations

from pathlib import Path


def record_test(folder: Path, test, probs, labels, run, artifact_path: str, **extra) -> dict:
    """One trained model's test rows, the same way for students and peers: `folder`/test_predictions.parquet
    (what `compare` reads), the test metrics and the folder logged to the open MLflow `run`, and the per-seed
    entry of results.json."""
    import mlflow
    import pandas as pd

    from relkd.eval.metrics import classification_report
    from relkd.io import write_parquet
    from relkd.tracking import log_metrics

    pred = [labels[i] for i in probs.argmax(1)]
    report = classification_report(list(test["label"]), pred, labels)
    write_parquet(Path(folder) / "test_predictions.parquet", pd.DataFrame({
        "pair_id": test["pair_id"], "label": test["label"], "pred": pred,
        "probs": [p.round(6).tolist() for p in probs]}))
    per_class = {k: v["f1"] for k, v in report["per_class"].items()}
    log_metrics({"test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
                 **{f"test_f1.{k}": v for k, v in per_class.items()}})
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "per_class_f1": per_class,
            "confusion": report["confusion"], "mlflow_run_id": run.info.run_id, **extra}


def seed_summary(results: dict) -> dict:
    """Mean accuracy / macro-F1 over the seeds of a results.json, and each seed's."""
    import numpy as np

    return {"accuracy": float(np.mean([r["accuracy"] for r in results.values()])),
            "macro_f1": float(np.mean([r["macro_f1"] for r in results.values()])),
            "seeds": {s: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for s, r in results.items()}}
