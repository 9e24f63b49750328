"""Teacher LoRA SFT and DPO with trl on a tiny Llama: real steps, saved adapters, reloadable teacher."""
import math

import pytest
import torch

from relkd.models import resolve
from relkd.teacher.config import DPOSection, SamplingConfig, SFTSection
from relkd.teacher.generation import TransformersBackend, load_teacher
from relkd.teacher.training import dpo, over_length, sft, warmup_steps

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
                      log=lambda m, s: sft_logs.append((s, {f"sft.{k}": v for k, v in m.items()})))
    dpo_metrics = dpo(llama, root / "sft", PAIRS, root / "dpo", DPOSection(batch_size=2, lr=5e-3, logging_steps=1),
                      log=lambda m, s: dpo_logs.append((s, {f"dpo.{k}": v for k, v in m.items()})))
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
    assert warmup_steps(4, 4, 1, 1, 0.1) == 0  # one step: no warmup (it used to be a step at lr 0)
    assert warmup_steps(100, 4, 1, 2, 0.1) == 5
    assert warmup_steps(100, 4, 5, 1, 0.5) == 2


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

    from relkd.teacher.training import _require_change, trainable_snapshot, weight_change

    layer = torch.nn.Linear(3, 2)
    before = trainable_snapshot(layer)
    with pytest.raises(RuntimeError, match="unchanged.*teacher.dpo.lr"):
        _require_change(weight_change(before, layer), "DPO", 5e-5, "teacher.dpo")
    with torch.no_grad():
        layer.weight += 0.5
    change = weight_change(before, layer)
    assert change["adapter_tensors_changed"] == 0.5 and change["adapter_delta_norm"] == pytest.approx(0.5 * 6 ** 0.5)
    _require_change(change, "DPO", 5e-5, "teacher.dpo")


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
    """The format check of teacher_sft on a model built from a config: before SFT no answer has a Label line,
    after it (greedy, cut at the first label line) the answers parse."""
    from relkd.teacher.parsing import parse
    from relkd.teacher.prompts import answer_text

    llama = resolve("tiny:llama")
    examples = [{"prompt": f"Query: item {i}\nTitle: product {i}\nThink, then answer.\n",
                 "completion": answer_text("It fits.", LABELS[i % 3])} for i in range(12)]
    greedy = SamplingConfig(temperature=0, max_new_tokens=24)
    prompts = [e["prompt"] for e in examples[:6]]

    def parsed(adapter):
        out = TransformersBackend(llama, adapter, batch_size=6).generate(prompts, 1, greedy, 0)
        return [parse(o[0], LABELS).label for o in out]

    assert all(label is None for label in parsed(None))
    # A model this small (hidden 32) needs every linear layer adapted and many epochs to learn the format.
    sft(llama, examples, tmp_path / "fmt", SFTSection(batch_size=4, epochs=60, lr=5e-3, r=32, alpha=64,
                                                      target_modules="all-linear"))
    labels = parsed(tmp_path / "fmt")
    assert sum(label is not None for label in labels) >= 5, labels


def test_shared_prefix_loss_equals_the_full_sequence_loss_and_gradients():
    """SFT runs a batch's shared prompt tokens once and feeds their KV cache (gradient attached) to every row: the
    loss, token accuracy and LoRA gradients must be those of each whole sequence run on its own (trl's way)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from relkd.teacher.training import completion_logps, shared_prefix_loss, tokenize_examples

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
    loss, acc = shared_prefix_loss(model, rows, tok.pad_token_id)
    loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    total, right, count, sums = 0.0, 0, 0, []
    for ids, start in rows:  # each whole sequence alone, summed over its completion tokens
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        target = torch.tensor(ids[start:])
        row = torch.nn.functional.cross_entropy(logits[start - 1:-1], target, reduction="sum")
        total, sums = total + row, sums + [-row.item()]
        right += int((logits[start - 1:-1].argmax(-1) == target).sum())
        count += len(target)
    (total / count).backward()
    assert loss.item() == pytest.approx((total / count).item(), abs=1e-5)
    assert acc.item() == pytest.approx(right / count)
    with torch.no_grad():  # DPO's per-answer log-probabilities, from the same shared-prefix pass
        assert completion_logps(model, rows, tok.pad_token_id).tolist() == pytest.approx(sums, abs=1e-4)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(fast[n], p.grad, atol=1e-5), n


def test_prompt_batches_hold_one_prompt_each_and_every_example_once():
    from relkd.teacher.training import prompt_batches

    groups = ["unified"] * 7 + ["user_intent"] * 3 + ["business_rules"] * 2
    batches = prompt_batches(groups, 4, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert all(len({groups[i] for i in b}) == 1 and len(b) <= 4 for b in batches)
    assert prompt_batches(groups, 4, seed=1) == batches != prompt_batches(groups, 4, seed=2)
