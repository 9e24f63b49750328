"""relkd.tracking.registry: a tiny student registered as a pyfunc model, and the champion/challenger gate."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from relkd.config import ConfigError
from relkd.serving import student_pyfunc
from relkd.tracking import configure, stage_run
from relkd.tracking.registry import (
    Decision,
    Guard,
    PromotionPolicy,
    RegistryError,
    aliases,
    decide,
    log_student,
    promote,
    serving_requirements,
    set_challenger,
    version_metrics,
)

LABELS = ("a", "b", "c")
MAX_LENGTH = 24
NAME = "relevance-student"
POLICY = PromotionPolicy(metric="macro_f1", min_gain=0.0, guards=[Guard(metric="accuracy", max_drop=0.01)],
                         per_class_floor=0.1)


def _metrics(macro_f1, accuracy, f1=(0.5, 0.5, 0.5)):
    return {"macro_f1": macro_f1, "accuracy": accuracy, "f1": dict(zip(LABELS, f1))}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny GAT student saved with save_student and exported to ONNX: (folder, onnx path, Student, tokenizer)."""
    from relkd.models import resolve
    from relkd.serving.export import export_onnx
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student, save_student

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("student")
    model, tokenizer = build_student(resolve("tiny:bert"), labels=LABELS, variant=VariantConfig(extractor="gat"),
                                     d_out=32, max_length=MAX_LENGTH)
    model.eval()
    folder = save_student(model, tokenizer, root / "student")
    onnx_path = root / "student.onnx"
    export_onnx(InferenceWrapper(model), tokenizer, onnx_path, MAX_LENGTH,
                [("red shoes", "Nike running shoe, red, size 10, wide fit"), ("usb cable", "Anker USB-C"),
                 ("desk lamp", "IKEA desk lamp, white, LED bulb included")])
    return folder, onnx_path, model, tokenizer


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = configure(tmp_path)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def _version_tags(version):
    return mlflow.MlflowClient().get_model_version(NAME, str(version)).tags


def _promotion_tags(version):
    return {k: v for k, v in _version_tags(version).items() if k.startswith("promotion.")}


# ------------------------------------------------------------------------------------------ log_student
def test_log_student_registers_a_pyfunc_that_matches_the_student(student, store, tmp_path):
    folder, onnx_path, model, tokenizer = student
    info = log_student(folder, onnx_path, _metrics(0.61, 0.7, (0.5, 0.6, 0.73)), "lrkd_gat")
    assert info["name"] == NAME and info["version"] == "1"
    assert info["model_uri"] == f"models:/{NAME}/1"

    tags = _version_tags(1)
    assert tags["variant"] == "lrkd_gat"
    assert version_metrics(NAME, 1) == {"macro_f1": 0.61, "accuracy": 0.7, "f1.a": 0.5, "f1.b": 0.6, "f1.c": 0.73}
    run = mlflow.MlflowClient().get_run(info["run_id"])
    assert run.data.metrics["macro_f1"] == pytest.approx(0.61) and run.data.metrics["f1.c"] == pytest.approx(0.73)
    assert run.data.tags["relkd.stage"] == "register"  # no run given and none active: a register run
    assert aliases(NAME) == {}
    # artifacts live in the embedded store under <root>/registry/artifacts, never ./mlruns
    assert list((tmp_path / "registry" / "artifacts").rglob("relkd_student.json"))
    assert not (tmp_path / "mlruns").exists()

    loaded = mlflow.pyfunc.load_model(info["model_uri"])
    assert [c.name for c in loaded.metadata.get_input_schema().inputs] == ["query", "title"]
    assert [c.name for c in loaded.metadata.get_output_schema().inputs] == ["label", "prob.a", "prob.b", "prob.c"]
    queries = ["red running shoes", "usb c", "lamp " * 30, "zapatos rojos"]
    titles = ["Nike Pegasus running shoe red size 10", "Anker USB-C cable 2 m braided", "desk lamp", "Adidas"]
    out = loaded.predict(pd.DataFrame({"query": queries, "title": titles}))
    assert len(out) == 4 and set(out["label"]) <= set(LABELS)

    from relkd.student.model import tokenize_pairs

    with torch.inference_mode():
        enc = tokenize_pairs(tokenizer, queries, titles, MAX_LENGTH, padding=True, return_tensors="pt")
        want = torch.softmax(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits, -1).numpy()
    got = out[["prob.a", "prob.b", "prob.c"]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert list(out["label"]) == [LABELS[i] for i in want.argmax(1)]

    # The served model needs only what its requirements pin: load it with relkd, torch and
    # transformers made unimportable.
    reqs = mlflow.pyfunc.get_model_dependencies(info["model_uri"])
    lines = [line.strip() for line in open(reqs) if line.strip()]
    assert set(serving_requirements()) <= set(lines)
    assert not any(line.startswith(("torch", "transformers", "relkd")) for line in lines)
    code = ("import sys\n"
            "for m in ('relkd', 'torch', 'transformers'): sys.modules[m] = None\n"
            "import mlflow, pandas as pd\n"
            f"m = mlflow.pyfunc.load_model('{info['model_uri']}')\n"
            "print(m.predict(pd.DataFrame({'query': ['usb c'], 'title': ['Anker USB-C cable 2 m braided']}))"
            "['prob.a'].round(4).tolist())\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=store)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str([round(float(got[1, 0]), 4)])
    # "Models from code": the version holds the scorer's source file, no pickled class.
    local = Path(mlflow.artifacts.download_artifacts(info["model_uri"], dst_path=str(tmp_path / "dl")))
    assert (local / "student_pyfunc.py").read_text() == Path(student_pyfunc.__file__).read_text()
    assert not list(local.rglob("*.pkl"))


def test_log_student_onto_a_given_run(student, store):
    folder, onnx_path, _, _ = student
    with stage_run("student", {"variant": "lrkd_gat", "seed": 13}, tags={"relkd.variant": "lrkd_gat"}) as run:
        train_run = run.info.run_id
    info = log_student(folder, onnx_path, _metrics(0.5, 0.5), "lrkd_gat", run_id=train_run)
    assert info["run_id"] == train_run
    assert mlflow.MlflowClient().get_model_version(NAME, info["version"]).run_id == train_run
    assert mlflow.MlflowClient().get_run(train_run).data.metrics["accuracy"] == 0.5

    with pytest.raises(FileNotFoundError, match="relkd_student.json"):
        log_student(onnx_path.parent, onnx_path, {}, "x")
    with pytest.raises(ValueError, match="'note'"):
        log_student(folder, onnx_path, {"note": "good"}, "x")


# ------------------------------------------------------------------------------------------ the gate in the registry
def test_champion_challenger_promotion(student, store):
    folder, onnx_path, _, _ = student
    client = mlflow.MlflowClient()
    with stage_run("student", {}) as run:  # one training run carries all versions: fewer artifacts to copy
        v1 = log_student(folder, onnx_path, _metrics(0.60, 0.70), "lrkd_gat")["version"]
        v2 = log_student(folder, onnx_path, _metrics(0.55, 0.72), "plain")["version"]
        v3 = log_student(folder, onnx_path, _metrics(0.70, 0.71, (0.9, 0.9, 0.05)), "lrkd_mlp")["version"]
        v4 = log_student(folder, onnx_path, _metrics(0.65, 0.695, (0.6, 0.6, 0.75)), "lrkd_poly")["version"]
    assert (v1, v2, v3, v4) == ("1", "2", "3", "4")
    assert {client.get_model_version(NAME, v).run_id for v in (v1, v2, v3)} == {run.info.run_id}

    with pytest.raises(RegistryError, match="no 'challenger' alias"):
        promote(NAME, POLICY)
    with pytest.raises(RegistryError, match="no version '9'"):
        set_challenger(NAME, "9")

    # first model: no champion, it becomes champion
    set_challenger(NAME, v1)
    d = promote(NAME, POLICY)
    assert d.promote and d.version == "1" and d.champion is None
    assert d.reasons[0] == "pass: no champion yet: the first model becomes champion (macro_f1 0.6000)"
    assert aliases(NAME) == {"champion": "1"}  # the challenger alias went with the promotion
    from relkd.tracking.registry import served

    assert served(NAME) == {"name": NAME, "aliases": {"champion": {"version": "1", "variant": "lrkd_gat"}}}
    tags = _promotion_tags(v1)
    assert tags["promotion.decision"] == "promoted" and tags["promotion.previous_champion"] == "none"
    assert "promotion.time" in tags and "first model" in tags["promotion.reasons"]
    with pytest.raises(RegistryError, match="is the champion"):
        set_challenger(NAME, v1)

    # worse challenger: refused, aliases unchanged, refusal recorded
    set_challenger(NAME, v2)
    before = aliases(NAME)
    d = promote(NAME, POLICY, dry_run=True)
    assert not d.promote
    assert aliases(NAME) == before and _promotion_tags(v2) == {}  # a dry run changes nothing
    d = promote(NAME, POLICY)
    assert not d.promote and d.champion == "1"
    assert "fail: macro_f1 0.5500 vs champion 0.6000: gain -0.0500 < min_gain 0.0000" in d.reasons
    assert aliases(NAME) == {"champion": "1", "challenger": "2"}
    tags = _promotion_tags(v2)
    assert tags["promotion.decision"] == "refused" and tags["promotion.champion"] == "1"
    assert "macro_f1 0.5500 vs champion 0.6000" in tags["promotion.reasons"]

    # better on macro_f1 but one class below the per-class floor: refused
    set_challenger(NAME, v3)
    d = promote(NAME, POLICY)
    assert not d.promote
    assert d.reasons == ["pass: macro_f1 0.7000 vs champion 0.6000: gain +0.1000 >= min_gain 0.0000",
                         "pass: guard accuracy 0.7100 vs champion 0.7000: drop -0.0100 <= max_drop 0.0100",
                         "fail: f1.c 0.0500 < per_class_floor 0.1000"]
    assert aliases(NAME) == {"champion": "1", "challenger": "3"}

    # the online A/B as evidence: a policy pass is not enough when its verdict is not promote for these versions
    online = {"verdict": "keep", "versions": {"champion": 1, "challenger": 4}, "experiment": "e",
              "reasons": ["no clear difference"]}
    d = promote(NAME, POLICY, version=v4, dry_run=True, evidence=online)
    assert not d.promote and d.reasons[-1].startswith("fail: online A/B verdict is 'keep'")
    d = promote(NAME, POLICY, version=v4, dry_run=True, evidence={**online, "verdict": "promote"})
    assert d.promote and d.reasons[-1].startswith("pass: online A/B verdict promote")
    d = promote(NAME, POLICY, version=v4, dry_run=True, evidence={**online, "verdict": "promote",
                                                                  "versions": {"champion": 1, "challenger": 3}})
    assert not d.promote and "not v4 vs v1" in d.reasons[-1]

    # better, within the accuracy guard, all classes above the floor: promoted by explicit version
    d = promote(NAME, POLICY, version=v4, dry_run=True)
    assert d.promote and aliases(NAME) == {"champion": "1", "challenger": "3"}
    d = promote(NAME, POLICY, version=v4)
    assert d.promote and d.champion == "1"
    assert aliases(NAME) == {"champion": "4", "challenger": "3"}  # challenger 3 was not the one promoted
    assert _promotion_tags(v4)["promotion.previous_champion"] == "1"
    assert _promotion_tags(v1)["promotion.superseded_by"] == "4"
    with pytest.raises(RegistryError, match="already the champion"):
        promote(NAME, POLICY, version=v4)


# ------------------------------------------------------------------------------------------ policy and decide
def test_policy_file(tmp_path, repo_root):
    repo_policy = PromotionPolicy.load(repo_root / "registry" / "policy.yaml")
    assert repo_policy.metric == "macro_f1" and [g.metric for g in repo_policy.guards] == ["accuracy"]

    path = tmp_path / "policy.yaml"
    path.write_text("metric: macro_f1\nmin_gian: 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'min_gian'"):
        PromotionPolicy.load(path)
    path.write_text("metric: macro_f1\nguards:\n  - metric: accuracy\n    max_dorp: 0.01\n")
    with pytest.raises(ConfigError, match="unknown key 'guards.0.max_dorp'"):
        PromotionPolicy.load(path)
    path.write_text("per_class_floor: 1.5\n")
    with pytest.raises(ConfigError, match="bad value for 'per_class_floor'"):
        PromotionPolicy.load(path)
    path.write_text("guards:\n  - {metric: accuracy}\n  - {metric: accuracy, max_drop: 0.1}\n")
    with pytest.raises(ConfigError, match="more than once"):
        PromotionPolicy.load(path)
    with pytest.raises(ConfigError, match="not found"):
        PromotionPolicy.load(tmp_path / "missing.yaml")


def test_decide_rules():
    policy = PromotionPolicy(metric="macro_f1", min_gain=0.02, guards=[Guard(metric="accuracy", max_drop=0.01)])
    champ = {"macro_f1": 0.60, "accuracy": 0.80}

    assert decide(policy, {"macro_f1": 0.5}, None) == Decision(
        True, ["pass: no champion yet: the first model becomes champion (macro_f1 0.5000)"])
    assert decide(policy, {"accuracy": 0.9}, None) == Decision(
        False, ["fail: challenger has no macro_f1 (its metrics: accuracy); register it with that metric"])
    assert decide(policy, {"macro_f1": 0.63, "accuracy": 0.795}, champ) == Decision(True, [
        "pass: macro_f1 0.6300 vs champion 0.6000: gain +0.0300 >= min_gain 0.0200",
        "pass: guard accuracy 0.7950 vs champion 0.8000: drop +0.0050 <= max_drop 0.0100"])
    assert decide(policy, {"macro_f1": 0.61, "accuracy": 0.80}, champ) == Decision(False, [
        "fail: macro_f1 0.6100 vs champion 0.6000: gain +0.0100 < min_gain 0.0200",
        "pass: guard accuracy 0.8000 vs champion 0.8000: drop +0.0000 <= max_drop 0.0100"])
    assert decide(policy, {"macro_f1": 0.70, "accuracy": 0.75}, champ) == Decision(False, [
        "pass: macro_f1 0.7000 vs champion 0.6000: gain +0.1000 >= min_gain 0.0200",
        "fail: guard accuracy 0.7500 vs champion 0.8000: drop +0.0500 > max_drop 0.0100"])
    assert decide(policy, {"macro_f1": 0.70}, champ).reasons[1] == \
        "fail: guard accuracy: the challenger has no accuracy"

    floor = PromotionPolicy(per_class_floor=0.2)
    # the first model becomes champion even below the floor (something must be served); it is noted
    assert decide(floor, {"macro_f1": 0.5, "f1.x": 0.1, "f1.y": 0.9}, None) == Decision(True, [
        "pass: no champion yet: the first model becomes champion (macro_f1 0.5000)",
        "note: first champion; below per_class_floor 0.2000: f1.x"])
    # ...but a challenger below it never replaces a champion
    assert decide(floor, {"macro_f1": 0.9, "f1.x": 0.1, "f1.y": 0.9}, {"macro_f1": 0.5, "f1.x": 0.3, "f1.y": 0.9}) \
        == Decision(False, ["pass: macro_f1 0.9000 vs champion 0.5000: gain +0.4000 >= min_gain 0.0000",
                            "fail: f1.x 0.1000 < per_class_floor 0.2000"])
    assert decide(floor, {"macro_f1": 0.5}, {"macro_f1": 0.4}).reasons[-1] == \
        "fail: per-class floor 0.2000: the challenger has no f1.<label> metrics"
    assert decide(floor, {"macro_f1": 0.7, "f1.x": 0.3, "f1.y": 0.9}, {"macro_f1": 0.6, "f1.x": 0.5}) == Decision(
        False, ["pass: macro_f1 0.7000 vs champion 0.6000: gain +0.1000 >= min_gain 0.0000",
                "pass: per-class f1 >= floor 0.2000 (lowest: f1.x 0.3000)",
                "fail: label sets differ: challenger ['x', 'y'] vs champion ['x']"])


def test_export_follows_the_registry_and_refuses_a_stale_aliases_file():
    from pipeline.export import served_roles

    now = {"name": "m", "aliases": {"champion": {"version": "4", "variant": "lrkd_gat"}}}
    assert served_roles(now, now, "registry/aliases.json") == {"champion": "4"}
    stale = {"name": "m", "aliases": {"champion": {"version": "1", "variant": "plain"}}}
    with pytest.raises(SystemExit,
                       match="registry serves .*'4'.* but registry/aliases.json records .*'1'.*relkd promote"):
        served_roles(now, stale, "registry/aliases.json")


def test_the_gate_measures_champion_and_challenger_on_the_same_current_rows(student, store, tmp_path):
    """A champion registered on an older split carries test metrics of other rows: with `rows` the gate scores
    both versions on the same current rows and decides on those figures, whatever their tags claim."""
    from relkd.models import resolve
    from relkd.serving.export import export_onnx
    from relkd.student.config import VariantConfig
    from relkd.student.model import InferenceWrapper, build_student, save_student
    from relkd.tracking.registry import measure_on_rows

    folder, onnx_path, _, _ = student
    torch.manual_seed(7)  # a second, different model
    other, tok = build_student(resolve("tiny:bert"), labels=LABELS, variant=VariantConfig(extractor="gat"),
                               d_out=32, max_length=MAX_LENGTH)
    other.eval()
    folder2 = save_student(other, tok, tmp_path / "s2")
    export_onnx(InferenceWrapper(other), tok, tmp_path / "s2.onnx", MAX_LENGTH,
                [("red shoes", "Nike running shoe, red, size 10, wide fit"), ("usb cable", "Anker USB-C"),
                 ("desk lamp", "IKEA desk lamp, white, LED bulb included")])
    rng = np.random.default_rng(0)
    words = ["red", "shoe", "usb", "cable", "lamp", "desk", "nike", "anker", "white", "led"]
    rows = pd.DataFrame({"query": [" ".join(rng.choice(words, 2)) for _ in range(60)],
                         "title": [" ".join(rng.choice(words, 6)) for _ in range(60)]})
    with stage_run("student", {}):
        v1 = log_student(folder, onnx_path, _metrics(0.50, 0.50), "plain")["version"]
        v2 = log_student(folder2, tmp_path / "s2.onnx", _metrics(0.50, 0.50), "lrkd_gat")["version"]
    # Gold labels on which v2 is right more often than v1: what v2 predicts on 2/3 of the rows.
    m2, pred2, _ = measure_on_rows(NAME, v2, rows.assign(label="a"))
    _, pred1, _ = measure_on_rows(NAME, v1, rows.assign(label="a"))
    gold = [p2 if i % 3 else p1 for i, (p1, p2) in enumerate(zip(pred1, pred2))]
    rows = rows.assign(label=gold)
    set_challenger(NAME, v1)
    promote(NAME, PromotionPolicy(metric="accuracy"))  # v1 becomes champion (the first one, on its tags)
    mine, _, _ = measure_on_rows(NAME, v2, rows)
    theirs, _, _ = measure_on_rows(NAME, v1, rows)
    assert mine["accuracy"] > theirs["accuracy"]
    # The tags say v1 is far better (an older split); on the current rows v2 is: the rows decide.
    mlflow.MlflowClient().set_model_version_tag(NAME, v1, "metric.accuracy", "0.99")
    policy = PromotionPolicy(metric="accuracy")
    assert not promote(NAME, policy, version=v2, dry_run=True).promote  # on tags: refused
    d = promote(NAME, policy, version=v2, dry_run=True, rows=rows, n_boot=200)
    assert d.promote, d.reasons
    assert d.reasons[0].startswith("note: both versions scored on the same 60 current rows")
    assert any("paired bootstrap CI" in r for r in d.reasons)
    strict = PromotionPolicy(metric="accuracy", min_ci_low=0.5)  # a gain that large is out of reach
    d = promote(NAME, strict, version=v2, dry_run=True, rows=rows, n_boot=200)
    assert not d.promote and any(r.startswith("fail:") and "min_ci_low" in r for r in d.reasons)


def test_the_challenger_is_the_best_candidate_on_validation_that_is_not_the_champion():
    from relkd.tracking.registry import pick_challenger

    reg = {"plain": {"version": "1", "valid_macro_f1": 0.9}, "lrkd_gat": {"version": "2", "valid_macro_f1": 0.6},
           "lrkd_mlp": {"version": "3", "valid_macro_f1": 0.7}, "mkd": {"version": "4"}}
    assert pick_challenger(reg, "1", "plain", None, "valid_macro_f1") == "lrkd_mlp"  # the baseline is no candidate
    assert pick_challenger(reg, "3", "plain", None, "valid_macro_f1") == "lrkd_gat"  # nor the champion
    assert pick_challenger(reg, "1", "plain", ["mkd", "lrkd_gat"], "valid_macro_f1") == "lrkd_gat"
    with pytest.raises(RegistryError, match="registry.candidates"):
        pick_challenger(reg, "2", "plain", ["lrkd_gat"], "valid_macro_f1")


def test_register_exports_side_by_side_as_one_by_one(student, tmp_path):
    """register's export in 2 spawned worker processes writes the files one process writes, byte for byte."""
    from pipeline.register import export_all

    folder, *_ = student
    samples = [("red shoes", "Nike running shoe, red, size 10, wide fit"), ("usb cable", "Anker USB-C"),
               ("desk lamp", "IKEA desk lamp, white, LED bulb included")]
    runs = {w: export_all({n: (folder, tmp_path / f"w{w}" / f"{n}.onnx") for n in ("a", "b")}, MAX_LENGTH,
                          samples, workers=w) for w in (1, 2)}
    for n in ("a", "b"):
        assert runs[2][n]["max_abs_diff_logits"] <= 1e-4
        assert (tmp_path / "w1" / f"{n}.onnx").read_bytes() == (tmp_path / "w2" / f"{n}.onnx").read_bytes()
