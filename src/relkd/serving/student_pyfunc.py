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

try:  # the one torch-free scorer, shared with the Triton model
    from relkd.serving.triton_model import (
        LEXICAL_INPUT,
        encode,
        lexical_module,
        load_tokenizer,
        onnx_inputs,
        run_bucketed,
        softmax,
    )
except ImportError:  # loaded from the registry where relkd is not installed: the copy logged beside (code_paths)
    from triton_model import LEXICAL_INPUT, encode, lexical_module, load_tokenizer, onnx_inputs, run_bucketed, softmax


class StudentPyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[query, title]) -> DataFrame[label, prob.<label>...] from the student's ONNX graph.

    Artifacts: ``student`` (the folder written by save_student: relkd_student.json gives labels and
    max_length, tokenizer.json the tokenizer) and ``onnx`` (the graph from export_onnx). Tokenising, the ONNX
    feed and the softmax are relkd.serving.triton_model's, as in the Triton-served model.
    """

    batch_size = 64

    def load_context(self, context):
        import onnxruntime as ort

        folder = Path(context.artifacts["student"])
        meta = json.loads((folder / "relkd_student.json").read_text(encoding="utf-8"))
        self.labels = [str(x) for x in meta["labels"]]
        self.tokenizer = load_tokenizer(folder, int(meta["max_length"]))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(context.artifacts["onnx"]), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_names, self.int_dtype = onnx_inputs(self.session)
        # A student with a lexical head saved its tables (lexical.json) in its folder.
        self.lexical = lexical_module().LexicalTables.load(folder) if LEXICAL_INPUT in self.input_names else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = [c for c in ("query", "title") if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input lacks column(s) {missing} (has {list(model_input.columns)}); "
                             "pass a DataFrame with string columns query and title")
        queries, titles = list(model_input["query"].astype(str)), list(model_input["title"].astype(str))
        if not queries:
            logits = np.zeros((0, len(self.labels)), np.float64)
        else:  # every row tokenised at once, then run in token-length buckets of batch_size
            feeds = encode(self.tokenizer, queries, titles, self.input_names, self.int_dtype, self.lexical)
            logits = run_bucketed(self.session, ["logits"], feeds, self.batch_size)[0].astype(np.float64)
        probs = softmax(logits)
        out = pd.DataFrame({"label": np.asarray([self.labels[i] for i in probs.argmax(axis=1)], dtype=object)})
        for j, lab in enumerate(self.labels):
            out[f"prob.{lab}"] = probs[:, j]
        return out


mlflow.models.set_model(StudentPyfunc())
