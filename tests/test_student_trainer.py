"""relkd.student.trainer: short training runs per variant, determinism, predict, and a 2-process DDP run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relkd.student.config import StudentConfig, VariantConfig, default_variants, named_variants
from relkd.student.model import load_student
from relkd.student.trainer import kept_epoch, predict, train_student

LABELS = ("match", "mismatch", "accessory")
ROOT = Path(__file__).resolve().parents[1]


def _data(n=40, offset=0):
    rows, rationales = [], []
    for i in range(offset, offset + n):
        y = i % 3
        noun = ["shoe", "lamp", "phone", "chair"][i % 4]
        title = [f"red {noun} for sale", f"blue kettle {i % 5}", f"case for {noun}"][y]
        rows.append({"pair_id": f"p{i}", "query": f"red {noun}", "title": title, "label": LABELS[y]})
        rationales.append(["the title is the same product", "a kettle is another category",
                           f"a case is an accessory for the {noun}"][y])
    return pd.DataFrame(rows), rationales


@pytest.fixture(scope="module")
def data():
    train, rationales = _data()
    valid, _ = _data(12, offset=100)
    emb = np.random.default_rng(0).normal(size=(len(train), 24)).astype(np.float32)
    return train, valid, emb, rationales


CFG = StudentConfig(backbone="tiny:bert", max_length=24, epochs=2, batch_size=8, lr=1e-3, hidden=8, codes=4,
                    rationale_max_length=16)


@pytest.mark.parametrize("name", ["lrkd_poly", "ced_kd", "mkd", "lrkd_gat+crsd"])
def test_short_run_returns_finite_losses_and_history(data, name):
    train, valid, emb, rationales = data
    variant = named_variants()[name]
    logged = []
    student, tok, history = train_student(train, valid, LABELS, emb, rationales, variant, CFG, seed=3,
                                          log=lambda m, step: logged.append((step, m)))
    assert [h["epoch"] for h in history] == [1, 2]
    assert [s for s, _ in logged] == [1, 2]
    for h in history:
        for k in ("train_loss", "train_ce", "train_guidance", "train_aux", "valid_accuracy", "valid_macro_f1"):
            assert math.isfinite(h[k]), (k, h)
        assert h["train_ce"] > 0 and 0 <= h["valid_accuracy"] <= 1
        assert h["distributed_type"] == "DistributedType.NO" and h["num_processes"] == 1
        lam = CFG.lam_for(variant)
        weight = variant.crsd_weight if variant.aux == "crsd" else variant.aux_weight
        expected = h["train_ce"] + lam * h["train_guidance"] + (weight * h["train_aux"] if variant.aux != "none" else 0)
        assert h["train_loss"] == pytest.approx(expected, rel=1e-4)
    assert (history[0]["train_guidance"] > 0) == variant.guidance
    assert (history[0]["train_aux"] > 0) == (variant.aux != "none")
    probs, r, h_cls = predict(student, tok, valid, batch_size=5)
    assert probs.shape == (len(valid), len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert r.shape == (len(valid), student.r_dim) and h_cls.shape == (len(valid), 32)


def test_crsd_augmented_view_only_for_pairs_with_a_rationale(data):
    """A pair without a rationale has no augmented view: CRSD's term is that of the batch's annotated pairs alone
    (whatever the others' augmented ids hold), and zero for a batch with none."""
    import torch

    from relkd.student.trainer import build_training, make_collate

    train, _, _, rationales = data
    rationales = [r if i % 2 == 0 else None for i, r in enumerate(rationales)]
    torch.manual_seed(0)
    module, tok, rows = build_training(train, LABELS, None, rationales, named_variants()["crsd"], CFG, seed=3)
    module.eval()
    assert [r["has_aug"] for r in rows] == [i % 2 == 0 for i in range(len(rows))]
    collate = make_collate(tok.pad_token_id)
    batch = collate(rows[:8])
    with torch.no_grad():
        out = module.student(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                             batch.get("lexical"))
        whole = module.crsd(out, batch)
        garbled = dict(batch, aug_input_ids=torch.where(batch["has_aug"][:, None], batch["aug_input_ids"],
                                                        torch.full_like(batch["aug_input_ids"], 7)))
        assert torch.equal(module.crsd(out, garbled), whole)
        annotated = collate(rows[0:8:2])
        out_a = module.student(annotated["input_ids"], annotated["attention_mask"],
                               annotated.get("token_type_ids"), annotated.get("lexical"))
        assert torch.allclose(module.crsd(out_a, annotated), whole, atol=1e-6)
        none = collate(rows[1:8:2])
        out_n = module.student(none["input_ids"], none["attention_mask"], none.get("token_type_ids"),
                               none.get("lexical"))
        assert module.crsd(out_n, none).item() == 0.0
        assert whole.item() > 0


def test_same_seed_same_student_and_saved_folder_reloads(data, tmp_path):
    train, valid, emb, _ = data
    variant = named_variants()["lrkd_gat"]
    cfg = CFG.model_copy(update={"epochs": 1})
    a, tok, hist_a = train_student(train, valid, LABELS, emb, None, variant, cfg, seed=5, out_dir=tmp_path / "s")
    b, _, hist_b = train_student(train, valid, LABELS, emb, None, variant, cfg, seed=5)
    c, _, _ = train_student(train, valid, LABELS, emb, None, variant, cfg, seed=6)
    assert hist_a == hist_b
    pa, pb, pc = (predict(m, tok, valid)[0] for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.allclose(pa, pc)
    loaded, tok2 = load_student(tmp_path / "s")
    assert np.array_equal(predict(loaded, tok2, valid)[0], pa)


def test_inputs_a_variant_needs_are_demanded(data):
    train, valid, emb, rationales = data
    with pytest.raises(ValueError, match="rationale_embeddings"):
        train_student(train, valid, LABELS, None, None, named_variants()["lrkd_gat"], CFG, seed=1)
    with pytest.raises(ValueError, match="'mkd'"):
        train_student(train, valid, LABELS, None, None, named_variants()["mkd"], CFG, seed=1)
    with pytest.raises(ValueError, match="aligned"):
        train_student(train, valid, LABELS, emb[:5], None, named_variants()["lrkd_gat"], CFG, seed=1)
    with pytest.raises(ValueError, match="'exact'"):
        bad = train.assign(label=["exact"] + list(train["label"][1:]))
        train_student(bad, valid, LABELS, None, None, named_variants()["plain"], CFG, seed=1)


def test_variant_table_rejects_contradictions():
    with pytest.raises(ValueError, match="extractor must be 'none'"):
        VariantConfig(extractor="gat", r_from_cls=True)
    with pytest.raises(ValueError, match="guidance needs a latent vector"):
        VariantConfig(extractor="none", guidance=True)
    assert set(named_variants()) == {"plain", "lrkd_mlp", "lrkd_poly", "lrkd_gat", "no_extractor",
                                     "no_guidance", "ced_kd", "mkd", "crsd", "lrkd_gat+crsd"}
    assert set(default_variants()) == {"plain", "lrkd_mlp", "lrkd_poly", "lrkd_gat", "ced_kd", "mkd", "crsd"}
    assert all(default_variants()[n] == named_variants()[n] for n in default_variants())
    assert StudentConfig().lam_for(named_variants()["no_guidance"]) == 0.0
    assert StudentConfig().lam_for(named_variants()["lrkd_gat"]) == 0.1


@pytest.mark.integration
def test_two_processes_under_torchrun_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 with Accelerator(cpu=True) inside: MULTI_CPU over gloo, the same
    weights on both ranks, and the easy task learned as well as by one process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    worker = str(ROOT / "tests" / "ddp_worker.py")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for cmd in ([sys.executable, worker, str(one)],
                [torchrun, "--standalone", "--nproc_per_node", "2", worker, str(two)]):
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-4000:]
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert (r1["distributed_type"], r1["num_processes"]) == ("DistributedType.NO", 1)
    assert (r2["distributed_type"], r2["num_processes"]) == ("DistributedType.MULTI_CPU", 2)
    sums = [json.loads((tmp_path / f"two.json.rank{k}").read_text())["checksum"] for k in (0, 1)]
    assert sums[0] == sums[1]
    acc1, acc2 = r1["history"][-1]["valid_accuracy"], r2["history"][-1]["valid_accuracy"]
    assert acc1 >= 0.75 and acc2 >= 0.75, (acc1, acc2)  # chance is 0.5
    assert abs(acc1 - acc2) <= 0.25


def test_metrics_on_a_hand_computed_case():
    from relkd.student.trainer import classification_metrics

    m = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), n_labels=4)
    assert m["accuracy"] == 0.5
    # per-class F1: 2/3, 1/2, 0, 0 (class 3 never seen nor predicted still counts in the macro mean)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 4)


@pytest.mark.parametrize("name", ["lrkd_mlp", "lrkd_poly", "lrkd_gat", "no_extractor"])
def test_guidance_and_ce_are_of_comparable_size_at_initialisation(data, name):
    """Both sides of the guidance loss on the unit sphere: it lies in [0, 4] whatever the extractor (before,
    r was raw and the guidance was 33.6 for Poly and 68.2 for no_extractor against a CE of 1.75)."""
    import torch

    from relkd.student.model import build_student
    from relkd.student.trainer import TrainingModule, encode_rows, make_collate

    train, _, emb, rationales = data
    variant = named_variants()[name]
    torch.manual_seed(0)
    student, tok = build_student("tiny:bert", LABELS, variant, emb.shape[1], 8, 4, 24)
    module = TrainingModule(student, variant, lam=0.1)
    # Targets far from the origin, as an unnormalised encoder would give: the scale must not leak through.
    rows = encode_rows(train, LABELS, tok, 24, variant, 10 * emb, rationales)
    parts = module(make_collate(tok.pad_token_id)(rows[:16]))
    assert 0 <= parts["guidance"].item() <= 4
    assert 0.2 < parts["guidance"].item() / parts["ce"].item() < 5


def test_pairs_without_a_rationale_get_no_guidance(data):
    import torch

    from relkd.student.objectives import guidance_loss

    r, e = torch.zeros(4, 3), torch.ones(4, 3)
    assert guidance_loss(r, e).item() == pytest.approx(3.0)
    assert guidance_loss(r, e, torch.tensor([1.0, 0, 0, 0])).item() == pytest.approx(3.0)
    e[1:] = 0  # the rows the teacher did not annotate
    assert guidance_loss(r, e, torch.tensor([1.0, 0, 0, 0])).item() == pytest.approx(3.0)
    train, valid, emb, _ = data
    holes = emb.copy()
    holes[::2] = np.nan  # every other pair unannotated: training still runs, finite, on every pair
    _, _, history = train_student(train, valid, LABELS, holes, None, named_variants()["lrkd_gat"], CFG, seed=3)
    assert all(math.isfinite(h["train_guidance"]) and h["train_guidance"] > 0 for h in history)


def test_the_best_validation_epoch_is_the_one_kept(data):
    from relkd.eval.metrics import classification_report

    train, valid, _, _ = data
    cfg = CFG.model_copy(update={"epochs": 4, "lr": 3e-3})
    student, tok, history = train_student(train, valid, LABELS, None, None, named_variants()["plain"], cfg, seed=5)
    f1s = [h["valid_macro_f1"] for h in history]
    best = int(np.argmax(f1s)) + 1  # the first of equal maxima
    assert all(h["best_epoch"] == best for h in history)
    assert kept_epoch(history) is history[best - 1]  # what register reports as the model's validation F1
    probs = predict(student, tok, valid)[0]
    got = classification_report(list(valid["label"]), [LABELS[i] for i in probs.argmax(1)], LABELS)["macro_f1"]
    assert got == pytest.approx(f1s[best - 1], abs=1e-9)


def test_the_lexical_head_starts_as_the_lexical_peers_logistic_regression(data):
    """student.lexical: before any step the student predicts what the lexical LR (the peer's recipe) predicts,
    and training moves it from there."""
    import torch

    from relkd.eval.peers import feature_classifier
    from relkd.lexical import fit_tables
    from relkd.student.model import build_student
    from relkd.student.trainer import lexical_warm_start

    train, valid, _, _ = data
    tables = fit_tables(train["query"].tolist(), train["title"].tolist())
    student, tok = build_student("tiny:bert", LABELS, named_variants()["plain"], max_length=24,
                                 lexical_tables=tables)
    x = student.lexical_features(train["query"].tolist(), train["title"].tolist()).astype(np.float64)
    y = np.array([LABELS.index(v) for v in train["label"]])
    lexical_warm_start(student, x, y, seed=0)
    peer = feature_classifier("lr", 0).fit(x, y)
    want = peer.predict_proba(student.lexical_features(valid["query"].tolist(), valid["title"].tolist()))
    got = predict(student, tok, valid)[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert float(torch.count_nonzero(student.head.weight)) == 0  # the token head starts at zero

    trained, _, history = train_student(train, valid, LABELS, None, None, named_variants()["plain"], CFG, seed=0)
    assert trained.lexical_tables is not None and history[-1]["train_loss"] < 10
    assert float(trained.head.weight.detach().abs().sum()) > 0  # the tokens' head learned something


def test_lexical_off_gives_a_tokens_only_student(data, tmp_path):
    train, valid, _, _ = data
    cfg = CFG.model_copy(update={"lexical": False, "epochs": 1})
    model, tok, _ = train_student(train, valid, LABELS, None, None, named_variants()["plain"], cfg, seed=0,
                                  out_dir=tmp_path / "s")
    assert model.lexical_head is None and not (tmp_path / "s" / "lexical.json").exists()
    assert (tmp_path / "s" / "relkd_student.json").is_file()
    again, _ = load_student(tmp_path / "s")
    assert again.lexical_tables is None


@pytest.mark.parametrize("name", ["lrkd_gat", "lrkd_poly", "no_extractor"])
def test_guidance_kept_out_of_the_backbone_trains_only_the_extractor(data, name):
    """student.guidance_into_backbone: false — the guidance loss alone gives the backbone no gradient and the
    extractor (or projection) one; with true (the paper's rule) it reaches the backbone; the loss value is the same."""
    import torch

    from relkd.student.model import build_student
    from relkd.student.trainer import TrainingModule, encode_rows, make_collate

    train, _, emb, rationales = data
    variant = named_variants()[name]
    values = {}
    for into in (True, False):
        torch.manual_seed(0)
        student, tok = build_student("tiny:bert", LABELS, variant, emb.shape[1], 8, 4, 24)
        module = TrainingModule(student, variant, lam=1.0, guidance_into_backbone=into)
        batch = make_collate(tok.pad_token_id)(encode_rows(train, LABELS, tok, 24, variant, emb, rationales)[:16])
        parts = module(batch)
        values[into] = parts["guidance"].item()
        module.zero_grad()
        out = student(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        r = out.r if into else module._guided_r(out, batch["attention_mask"])
        torch.nn.functional.mse_loss(r, torch.ones_like(r)).backward()
        backbone = sum(float(p.grad.abs().sum()) for n, p in student.named_parameters()
                       if n.startswith("backbone.") and p.grad is not None)
        guided = sum(float(p.grad.abs().sum()) for n, p in student.named_parameters()
                     if n.startswith(("extractor.", "guide_proj.")) and p.grad is not None)
        assert guided > 0
        assert (backbone > 0) if into else (backbone == 0)
    assert values[True] == pytest.approx(values[False], rel=1e-5)


def test_head_lr_moves_everything_outside_the_backbone_at_its_own_rate(data):
    """student.head_lr: the backbone's parameters at lr, every other one (extractor, head, training-only heads) at
    head_lr, weight decay off for biases and norms either way; None keeps one lr."""
    from relkd.student.trainer import _param_groups, build_training

    train, _, emb, rationales = data
    module, _, _ = build_training(train, LABELS, emb, rationales, named_variants()["lrkd_gat"], CFG, 3)
    backbone = {id(p) for p in module.student.backbone.parameters()}
    groups = _param_groups(module, 0.01, 1e-4, 3e-3)
    assert sum(len(g["params"]) for g in groups) == len([p for p in module.parameters() if p.requires_grad])
    for g in groups:
        inside = {id(p) in backbone for p in g["params"]}
        assert len(inside) == 1 and g["lr"] == (1e-4 if inside.pop() else 3e-3)
        assert g["weight_decay"] == (0.0 if all(p.ndim < 2 for p in g["params"]) else 0.01)
    extractor = {id(p) for p in module.student.extractor.parameters()}
    assert any(id(p) in extractor for g in groups if g["lr"] == 3e-3 for p in g["params"])
    assert {g["lr"] for g in _param_groups(module, 0.01, 1e-4)} == {1e-4}


@pytest.mark.integration
def test_the_student_stage_under_accelerate_launch_on_two_processes(tmp_path):
    """The student stage itself (pipeline.train_student, as dvc.yaml runs it) under `accelerate launch` with two
    gloo processes: both train (MULTI_CPU, 2 processes in the epochs' record), rank 0 alone opens the MLflow run and
    writes the model, the test predictions and the metrics."""
    import mlflow
    import pandas as pd
    import yaml

    from relkd.embed.store import write_embeddings
    from relkd.io import write_json, write_jsonl

    sys.path.insert(0, str(ROOT / "tests"))
    from ddp_worker import LABELS, dataset

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    splits = {"train": dataset(32, 0), "valid": dataset(8, 1000), "test": dataset(8, 2000)}
    for name, df in splits.items():
        df.assign(pair_id=[f"{name}{i}" for i in range(len(df))], query_id=df["query"]).to_parquet(
            prepared / f"{name}.parquet")
    write_json(prepared / "labels.json", {"labels": list(LABELS)})
    ids = [f"train{i}" for i in range(32)]
    write_jsonl(tmp_path / "rationales.jsonl", [{"pair_id": p, "rationale": "same noun" if i % 2 == 0 else "other",
                                                 "label": LABELS[i % 2], "gold": LABELS[i % 2]}
                                                for i, p in enumerate(ids)])
    write_embeddings(tmp_path / "emb", np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32),
                     {"pair_ids": ids, "name": "tiny", "dim": 16})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["student"].update(backbone="tiny:bert", max_length=24, epochs=1, batch_size=4, seeds=[7],
                             num_processes=2, variants={"lrkd_gat": {"extractor": "gat"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    # On a CPU host accelerate starts several processes only with --multi_gpu (they then use gloo); on a GPU host
    # the dvc.yaml command (--num_processes N) is enough.
    res = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "pipeline.train_student", "--params", str(tmp_path / "params.yaml"),
         "--variant", "lrkd_gat", "--prepared", str(prepared), "--rationales", str(tmp_path / "rationales.jsonl"),
         "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "student"),
         "--metrics", str(tmp_path / "metrics.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    epochs = results["7"]["epochs"]
    assert (epochs[-1]["distributed_type"], epochs[-1]["num_processes"]) == ("DistributedType.MULTI_CPU", 2)
    assert (tmp_path / "student" / "seed7").is_dir() and json.loads((tmp_path / "metrics.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].data.tags["relkd.variant"] == "lrkd_gat"  # rank 0's run, no other
    assert pd.read_parquet(next((tmp_path / "student" / "seed7").glob("*.parquet"))).shape[0] == 8
