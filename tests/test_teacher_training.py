"""Teacher LoRA SFT and DPO on transformers' Trainer with a tiny Llama: real steps, saved adapters, the prefix-shared
loss equal to the full-sequence one, DDP equal to one process, resume after kill -9, DPO equal to trl's loss."""
import math

import pytest
import torch

from relkd.models import resolve
from relkd.teacher.completions import over_length
from relkd.teacher.config import DPOSection, SamplingConfig, SFTSection
from relkd.teacher.hf_backend import TransformersBackend, load_teacher
from relkd.teacher.trainers import MetricsCallback, dpo, sft, warmup_steps

LABELS = ["exact", "substitute", "irrelevant"]
EXAMPLES = [
    {"prompt": f"Query: item {i}\nTitle: product {i}\nThink, then answer.\n",
     "completion": f"The title names item {i} exactly. Label: {LABELS[i % 3]}"}
    for i in range(8)
]
PAIRS = [
    {"prompt": e["prompt"], "chosen": e["completion"], "rejected": "It is a different product. Label: irrelevant"}
    for e in EXAMPLES[:4]
]


def _completion_logp(model, tok, prompt: str, completion: str) -> float:
    p = tok(prompt)["input_ids"]
    f = tok(prompt + completion)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([f])).logits[0].float(), -1)
    return sum(logp[t - 1, f[t]].item() for t in range(len(p), len(f)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One SFT run, then DPO from its adapter (shared by the tests below: training is the slow part)."""
    llama = resolve("tiny:llama")
    root = tmp_path_factory.mktemp("teacher")
    sft_logs, dpo_logs = [], []
    # A high lr so the SFT adapter moves the model visibly: the DPO reference check below depends on it.
    sft_metrics = sft(llama, EXAMPLES, root / "sft", SFTSection(batch_size=4, epochs=2, lr=5e-3, logging_steps=1),
                      callbacks=[MetricsCallback(lambda m, s: sft_logs.append((s, m)), prefix="sft.")])
    dpo_metrics = dpo(llama, root / "sft", PAIRS, root / "dpo", DPOSection(batch_size=2, lr=5e-3, logging_steps=1),
                      callbacks=[MetricsCallback(lambda m, s: dpo_logs.append((s, m)), prefix="dpo.")])
    return dict(llama=llama, root=root, sft=sft_metrics, dpo=dpo_metrics, sft_logs=sft_logs, dpo_logs=dpo_logs)


def test_sft_trains_and_saves_a_loadable_adapter(trained):
    m = trained["sft"]
    assert m["steps"] == 4 and m["n_examples"] == 8
    assert math.isfinite(m["train_loss"]) and m["last_loss"] < m["first_loss"]
    steps = [s for s, logs in trained["sft_logs"] if "sft.loss" in logs]
    assert steps == [1, 2, 3, 4]  # the callback saw every logged step, with the step number
    adapter = trained["root"] / "sft"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    base, tok = load_teacher(trained["llama"])
    tuned, _ = load_teacher(trained["llama"], adapter)
    e = EXAMPLES[0]
    assert _completion_logp(tuned, tok, e["prompt"], e["completion"]) > _completion_logp(
        base, tok, e["prompt"], e["completion"]) + 1.0


def test_dpo_continues_from_the_sft_model_as_reference(trained):
    m = trained["dpo"]
    assert m["steps"] == 2 and math.isfinite(m["train_loss"])
    # At the first step the policy is the SFT model; rewards are beta * (policy - reference) log-ratios,
    # so they are 0 only when the reference is the SFT model too (the base would give beta * >1 nat).
    first = next(logs for _, logs in trained["dpo_logs"] if "dpo.loss" in logs)
    assert abs(first["dpo.rewards/chosen"]) < 1e-4 and abs(first["dpo.rewards/rejected"]) < 1e-4
    assert first["dpo.loss"] == pytest.approx(math.log(2), abs=1e-4)
    adapter = trained["root"] / "dpo"
    assert (adapter / "adapter_model.safetensors").is_file()
    sft_model, tok = load_teacher(trained["llama"], trained["root"] / "sft")
    dpo_model, _ = load_teacher(trained["llama"], adapter)
    p = PAIRS[0]
    margin = lambda model: (_completion_logp(model, tok, p["prompt"], p["chosen"])  # noqa: E731
                            - _completion_logp(model, tok, p["prompt"], p["rejected"]))
    assert margin(dpo_model) > margin(sft_model)  # DPO moved towards the chosen rationale


def test_final_teacher_loads_and_generates(trained):
    teacher = TransformersBackend(trained["llama"], trained["root"] / "dpo", batch_size=2)
    out = teacher.generate([EXAMPLES[1]["prompt"], EXAMPLES[2]["prompt"]], 2, SamplingConfig(max_new_tokens=6), 0)
    assert len(out) == 2 and all(len(o) == 2 and all(isinstance(s, str) for s in o) for o in out)
    scores = teacher.score_labels([EXAMPLES[1]["prompt"] + "Label:"], LABELS)
    assert scores.shape == (1, 3) and (scores < 0).all()


def test_empty_training_sets_are_explained(tmp_path):
    with pytest.raises(ValueError, match="label_hinted_fallback"):
        sft("unused", [], tmp_path / "a", SFTSection())
    with pytest.raises(ValueError, match="n_pairs_set"):
        dpo("unused", tmp_path, [], tmp_path / "b", DPOSection())


def test_warmup_is_whole_steps_rounded_down():
    assert warmup_steps(1, 1, 1, 0.1) == 0  # one step: no warmup (it used to be a step at lr 0)
    assert warmup_steps(25, 1, 2, 0.1) == 5
    assert warmup_steps(25, 5, 1, 0.5) == 2


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_one_step_dpo_run_changes_the_adapter(trained, tmp_path):
    # The default warmup (0.1) on a 1-step run: the step must still happen at a learning rate above 0.
    dpo(trained["llama"], trained["root"] / "sft", PAIRS, tmp_path / "dpo1", DPOSection(batch_size=4, lr=5e-3))
    before, after = _adapter_tensors(trained["root"] / "sft"), _adapter_tensors(tmp_path / "dpo1")
    assert before.keys() == after.keys()
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-4


def test_dpo_metrics_say_how_far_the_adapter_moved(trained, tmp_path):
    metrics = dpo(trained["llama"], trained["root"] / "sft", PAIRS, tmp_path / "dpo2", DPOSection(batch_size=2, lr=5e-3))
    assert metrics["adapter_delta_norm"] > 0 and 0 < metrics["adapter_delta_rel"] < 10
    assert metrics["adapter_tensors_changed"] > 0.5
    assert metrics["steps"] >= 2 and metrics["first_loss"] != metrics["last_loss"]  # logged every step


def test_a_run_that_leaves_the_weights_unchanged_fails():
    import torch

    from relkd.teacher.adapters import require_change, trainable_snapshot, weight_change

    layer = torch.nn.Linear(3, 2)
    before = trainable_snapshot(layer)
    with pytest.raises(RuntimeError, match="unchanged.*teacher.dpo.lr"):
        require_change(weight_change(before, layer), "DPO", 5e-5, "teacher.dpo")
    with torch.no_grad():
        layer.weight += 0.5
    change = weight_change(before, layer)
    assert change["adapter_tensors_changed"] == 0.5 and change["adapter_delta_norm"] == pytest.approx(0.5 * 6 ** 0.5)
    require_change(change, "DPO", 5e-5, "teacher.dpo")


def test_over_length_examples_are_named_and_sft_refuses_them(tmp_path):
    """teacher_sft leaves out the examples over teacher.sft.max_length (over_length names them); sft() given
    one anyway refuses it rather than cutting its label line."""
    from transformers import AutoTokenizer

    llama = resolve("tiny:llama")
    tok = AutoTokenizer.from_pretrained(llama)
    long = {"prompt": EXAMPLES[0]["prompt"] + "a very long product title " * 40,
            "completion": EXAMPLES[0]["completion"]}
    examples = [EXAMPLES[0], long, EXAMPLES[1]]
    limit = max(len(tok(e["prompt"] + e["completion"])["input_ids"]) for e in EXAMPLES) + 4
    assert over_length(tok, examples, limit) == [1]
    assert over_length(tok, EXAMPLES, limit) == []
    with pytest.raises(ValueError, match="1 of 3 SFT examples are longer than teacher.sft.max_length"):
        sft(llama, examples, tmp_path / "cut", SFTSection(max_length=limit))


def test_sft_teaches_a_tiny_model_the_answer_format(tmp_path):
    """The format check of teacher_pairs on a model built from a config: before SFT no answer has a Label line,
    after it (greedy, cut at the first label line) every answer has one and most name a class (the rest glue a
    random token to the class word: 'exactirling')."""
    from relkd.teacher.parsing import parse
    from relkd.teacher.prompts import answer_text

    llama = resolve("tiny:llama")
    examples = [{"prompt": f"Query: item {i}\nTitle: product {i}\nThink, then answer.\n",
                 "completion": answer_text("It fits.", LABELS[i % 3])} for i in range(12)]
    greedy = SamplingConfig(temperature=0, max_new_tokens=24)
    prompts = [e["prompt"] for e in examples[:6]]

    def parsed(adapter):
        out = TransformersBackend(llama, adapter, batch_size=6).generate(prompts, 1, greedy, 0)
        return [parse(o[0], LABELS) for o in out]

    assert all(p.error == "no label line" for p in parsed(None))
    # A model this small (hidden 32) needs every linear layer adapted and many epochs to learn the format.
    sft(llama, examples, tmp_path / "fmt", SFTSection(batch_size=4, epochs=60, lr=5e-3, r=32, alpha=64,
                                                      target_modules="all-linear"))
    after = parsed(tmp_path / "fmt")
    assert all(p.error != "no label line" for p in after), after
    assert sum(p.label is not None for p in after) >= 4, after


def test_shared_prefix_loss_equals_the_full_sequence_loss_and_gradients():
    """SFT runs a batch's shared prompt tokens once and feeds their KV cache (gradient attached) to every row: the
    loss, token accuracy and LoRA gradients must be those of each whole sequence run on its own (trl's way), and the
    trainer's compute_loss (either path) must be that loss."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relkd.teacher.completions import completion_logits, completion_logps, completion_loss, tokenize_examples

    llama = resolve("tiny:llama")
    tok = AutoTokenizer.from_pretrained(llama)
    head = "You judge relevance. Read the query and the title, think, then answer with one label.\n"
    examples = [{"prompt": head + e["prompt"], "completion": e["completion"]} for e in EXAMPLES[:3]]
    examples[1]["prompt"] += "A longer pair with more words of its own.\n"
    rows = tokenize_examples(tok, examples)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))  # non-zero B: gradients reach the prefix

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return out

    loss, acc = completion_loss(*completion_logits(model, rows, tok.pad_token_id, share_prefix=True))
    loss.backward()
    fast = grads()
    whole, _ = completion_loss(*completion_logits(model, rows, tok.pad_token_id, share_prefix=False))
    whole.backward()
    padded = grads()

    total, right, count, sums = 0.0, 0, 0, []
    for ids, start in rows:  # each whole sequence alone, summed over its completion tokens
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        target = torch.tensor(ids[start:])
        row = torch.nn.functional.cross_entropy(logits[start - 1:-1], target, reduction="sum")
        total, sums = total + row, sums + [-row.item()]
        right += int((logits[start - 1:-1].argmax(-1) == target).sum())
        count += len(target)
    (total / count).backward()
    alone = grads()
    assert loss.item() == pytest.approx((total / count).item(), abs=1e-5) == pytest.approx(whole.item(), abs=1e-5)
    assert acc.item() == pytest.approx(right / count)
    with torch.no_grad():  # DPO's per-answer log-probabilities, from the same shared-prefix pass
        assert completion_logps(*completion_logits(model, rows, tok.pad_token_id)).tolist() == pytest.approx(
            sums, abs=1e-4)
    for n in alone:
        assert torch.allclose(fast[n], alone[n], atol=1e-5) and torch.allclose(padded[n], alone[n], atol=1e-5), n


def test_prompt_batches_hold_one_prompt_each_and_every_example_once():
    from relkd.teacher.trainers import PromptGroupSampler, prompt_batches

    groups = ["unified"] * 7 + ["user_intent"] * 3 + ["business_rules"] * 2
    batches = prompt_batches(groups, 4, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert all(len({groups[i] for i in b}) == 1 and len(b) <= 4 for b in batches)
    assert prompt_batches(groups, 4, seed=1) == batches != prompt_batches(groups, 4, seed=2)
    sampler = PromptGroupSampler(groups, 4, seed=1)
    assert list(sampler) == batches and len(sampler) == len(batches) == 4  # 7 examples -> 2 batches, 3 -> 1, 2 -> 1
    sampler.set_epoch(1)
    assert list(sampler) == prompt_batches(groups, 4, seed=2)  # the Trainer's epoch reshuffles, reproducibly


def test_dpo_loss_equals_trls_on_the_same_pairs(trained):
    """The DPO loss of relkd's trainer (prefix-shared log-probabilities, the reference precomputed from the SFT
    adapter) equals trl's DPOTrainer loss on the same pairs, with a policy moved away from the reference (at the
    first step both are log 2 whatever the code does)."""
    import tempfile

    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from relkd.teacher import trainers
    from relkd.teacher.completions import tokenize_examples

    llama, sft_dir = trained["llama"], trained["root"] / "sft"
    tok = AutoTokenizer.from_pretrained(llama)

    def policy():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), str(sft_dir), is_trainable=True)
        noise = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=noise))
        return model.eval()

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), str(sft_dir)).merge_and_unload()
    with tempfile.TemporaryDirectory() as scratch:
        args = DPOConfig(output_dir=scratch, beta=0.1, per_device_train_batch_size=len(PAIRS), use_cpu=True,
                         bf16=False, gradient_checkpointing=False, report_to=[], max_length=None)
        trl_trainer = DPOTrainer(model=policy(), ref_model=reference, args=args, processing_class=tok,
                                 train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")}
                                                                  for p in PAIRS]))
        batch = next(iter(trl_trainer.get_train_dataloader()))
        with torch.no_grad():
            want = trl_trainer.compute_loss(trl_trainer.model, batch).item()

    model = policy()
    cfg = DPOSection(batch_size=len(PAIRS), beta=0.1)
    groups = [""] * len(PAIRS)
    rows = tokenize_examples(tok, [{"prompt": p["prompt"], "completion": p[s]} for p in PAIRS
                                   for s in ("chosen", "rejected")])
    with tempfile.TemporaryDirectory() as scratch:
        flags = trainers.device_flags(cfg)
        ours = trainers.PreferenceTrainer(
            model=model, args=trainers.training_arguments(cfg, scratch, groups, flags), rows=rows, groups=groups,
            pad_id=tok.pad_token_id, prefix_sharing=True, processing_class=tok, beta=cfg.beta)
        ours.model = reference  # the reference pass: the SFT model
        ours.precompute_reference([list(range(len(PAIRS)))])
        ours.model = model
        with torch.no_grad():
            got = ours.compute_loss(model, {"index": list(range(len(PAIRS)))}).item()
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(got - math.log(2)) > 1e-3  # the policy really differs from the reference


WORKER = "tests/teacher_train_worker.py"


def _adapter_diff(a, b) -> float:
    x, y = _adapter_tensors(a), _adapter_tensors(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def _run_worker(*args, env=None, **kwargs):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root}", **(env or {})}
    return subprocess.run([*args], cwd=root, env=env, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.integration
def test_two_processes_under_torchrun_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): each process trains on every other batch, gradients all-reduced;
    the adapter equals one process accumulating the same two batches per step (no dropout: the processes draw
    different masks)."""
    import json
    import sys
    from pathlib import Path

    torchrun = str(Path(sys.executable).parent / "torchrun")
    one = _run_worker(sys.executable, WORKER, str(tmp_path / "one"), "--grad-accum", "2", "--dropout", "0")
    two = _run_worker(torchrun, "--standalone", "--nproc_per_node", "2", WORKER, str(tmp_path / "two"),
                      "--dropout", "0")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    m1, m2 = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert (m1["processes"], m2["processes"]) == (1, 2) and m1["steps"] == m2["steps"] == 8
    assert _adapter_diff(tmp_path / "one" / "adapter", tmp_path / "two" / "adapter") < 1e-6


@pytest.mark.integration
def test_sft_killed_after_a_checkpoint_resumes_to_the_uninterrupted_adapter(tmp_path):
    """kill -9 after the step-3 checkpoint (mid-epoch, LoRA dropout on); the same command again resumes from it
    (optimizer, scheduler, RNG, data order) and ends with the adapter of a run that was never stopped."""
    import json
    import signal
    import subprocess
    import sys
    import time

    full = _run_worker(sys.executable, WORKER, str(tmp_path / "full"), "--save-steps", "3", "--checkpoints",
                       str(tmp_path / "ck-full"))
    assert full.returncode == 0, full.stderr[-2000:]
    cmd = [sys.executable, WORKER, str(tmp_path / "run"), "--save-steps", "3", "--checkpoints", str(tmp_path / "ck")]
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root}"}
    proc = subprocess.Popen([*cmd, "--sleep", "1.0"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((tmp_path / "ck").glob("*/checkpoint-3/trainer_state.json")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "metrics.json").exists()  # it really died mid-run
    again = _run_worker(*cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 3 and metrics["steps"] == 16
    assert _adapter_diff(tmp_path / "full" / "adapter", tmp_path / "run" / "adapter") == 0.0


def test_gradient_checkpointing_turns_prefix_sharing_off_and_trains_the_same(tmp_path):
    """Gradient checkpointing drops the KV cache the prefix-shared pass needs: the trainer then runs every row whole
    (prefix_sharing auto) and learns the same first step; asking for both is refused by name."""
    from relkd.teacher.trainers import device_flags

    with pytest.raises(ValueError, match="prefix_sharing = true needs the KV cache.*gradient checkpointing"):
        device_flags(SFTSection(gradient_checkpointing=True, prefix_sharing=True))
    assert device_flags(SFTSection(gradient_checkpointing=True))["prefix_sharing"] is False
    assert device_flags(SFTSection())["prefix_sharing"] is True  # a CPU host: no checkpointing by default
    llama = resolve("tiny:llama")
    logs = {}
    for name, cfg in {"shared": SFTSection(batch_size=4, epochs=1, lr=5e-3, dropout=0.0, logging_steps=1),
                      "checkpointed": SFTSection(batch_size=4, epochs=1, lr=5e-3, dropout=0.0, logging_steps=1,
                                                 gradient_checkpointing=True)}.items():
        seen = []
        metrics = sft(llama, EXAMPLES, tmp_path / name, cfg, callbacks=[MetricsCallback(lambda m, s: seen.append(m))])
        logs[name] = (metrics, seen)
    (shared, s_logs), (check, c_logs) = logs["shared"], logs["checkpointed"]
    assert shared["prefix_sharing"] is True and check["prefix_sharing"] is False
    assert c_logs[0]["loss"] == pytest.approx(s_logs[0]["loss"], abs=1e-5)
    assert _adapter_diff(tmp_path / "shared", tmp_path / "checkpointed") < 1e-5


def test_an_active_mlflow_run_gets_the_trainers_metrics(tmp_path):
    """The Trainer reports to MLflow when the stage has a run open: the loss of every logged step is there."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            sft(resolve("tiny:llama"), EXAMPLES, tmp_path / "sft",
                SFTSection(batch_size=4, epochs=1, lr=5e-3, logging_steps=1))
        history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [1, 2]
        assert mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "mean_token_accuracy")
    finally:
        mlflow.set_tracking_uri(None)
