"""The registered student as an MLflow pyfunc model, logged as "models from code": MLflow stores this file with the
version and runs it at load time, so a version is this reviewed code, the ONNX graph and the tokenizer (no
pickle). It imports only mlflow, numpy and pandas here, and onnxruntime and tokenizers at load (not relkd, not
torch), so an environment built from the model's requirements serves it.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd


class StudentPyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[query, title]) -> DataFrame[label, prob.<label>...] from the student's ONNX graph.

    Artifacts: ``student`` (the folder written by save_student: relkd_student.json gives labels and
    max_length, tokenizer.json the tokenizer) and ``onnx`` (the graph from export_onnx).
    """

    batch_size = 64

    def load_context(self, context):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(context.artifacts["student"])
        meta = json.loads((folder / "relkd_student.json").read_text(encoding="utf-8"))
        self.labels = [str(x) for x in meta["labels"]]
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad = (tokenizer.padding or {}).get("pad_id")
        # The saved tokenizer.json may pad to a fixed length; batches are padded here, to their longest.
        tokenizer.no_padding()
        tokenizer.enable_truncation(int(meta["max_length"]), strategy="longest_first")
        self.tokenizer = tokenizer
        self.pad_id = int(pad if pad is not None else tokenizer.token_to_id("[PAD]") or 0)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(context.artifacts["onnx"]), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = [c for c in ("query", "title") if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks column(s) {missing} (has {list(model_input.columns)}); "
                             "pass a DataFrame with string columns query and title")
        pairs = list(zip(model_input["query"].astype(str), model_input["title"].astype(str)))
        logits = np.zeros((len(pairs), len(self.labels)), np.float64)
        for start in range(0, len(pairs), self.batch_size):
            encs = self.tokenizer.encode_batch(pairs[start:start + self.batch_size])
            width = max(len(e.ids) for e in encs)
            ids = np.full((len(encs), width), self.pad_id, np.int64)
            mask = np.zeros((len(encs), width), np.int64)
            types = np.zeros((len(encs), width), np.int64)
            for i, e in enumerate(encs):
                ids[i, :len(e.ids)], mask[i, :len(e.ids)], types[i, :len(e.ids)] = e.ids, 1, e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits[start:start + len(encs)] = self.session.run(["logits"], feeds)[0]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        out = pd.DataFrame({"label": np.asarray([self.labels[i] for i in probs.argmax(axis=1)], dtype=object)})
        for j, lab in enumerate(self.labels):
            out[f"prob.{lab}"] = probs[:, j]
        return out


mlflow.models.set_model(StudentPyfunc())
