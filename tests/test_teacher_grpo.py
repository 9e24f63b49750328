"""TaoSR1's GRPO stage: rule rewards, difficulty-based dynamic sampling, real GRPO steps on a tiny Llama."""
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from relkd.models import resolve
from relkd.teacher.config import GRPOSection, SamplingConfig, TeacherConfig
from relkd.teacher.grpo import (correctness_reward, dynamic_sample, format_reward, grpo, make_rewards,
                                pass_rates)

LABELS = ("exact", "substitute", "irrelevant")
COMPLETIONS = [
    "Reasoning: same cable, same length.\nLabel: exact",  # right, well formed
    "Reasoning: another brand.\nLabel: substitute",  # wrong, well formed
    "Label: exact",  # right, but no rationale
    "It is exact, I think.",  # no label line: unparseable
    "Reasoning: hard to say.\nLabel: exact or substitute",  # ambiguous label: unparseable
    "Reasoning: a phone case.\nLabel: toy",  # unknown label
    [{"role": "assistant", "content": "Reasoning: fits.\n**Label:** exact"}],  # conversational completion
]
GOLD = ["exact"] * len(COMPLETIONS)


def test_correctness_reward_is_one_only_for_the_parsed_gold_label():
    got = correctness_reward([""] * len(GOLD), COMPLETIONS, GOLD, labels=LABELS)
    assert got == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_format_reward_needs_a_rationale_and_a_parseable_label():
    got = format_reward([""] * len(GOLD), COMPLETIONS, labels=LABELS)
    assert got == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert format_reward([""], COMPLETIONS[:1], labels=LABELS, weight=0.25) == [0.25]


def test_make_rewards_binds_the_label_set_and_takes_trls_extra_kwargs():
    correct, fmt = make_rewards(["exact", "irrelevant"], format_weight=0.2)
    extra = {"trainer_state": None, "log_extra": None, "log_metric": None, "completion_ids": [[1], [2]]}
    completions = ["Reasoning: r.\nLabel: irrelevant", "Reasoning: r.\nLabel: substitute"]  # not in this label set
    got = correct(prompts=["p", "p"], completions=completions, gold=["irrelevant", "substitute"], **extra)
    assert got == [1.0, 0.0]
    assert fmt(prompts=["p", "p"], completions=completions, gold=["irrelevant", "irrelevant"], **extra) == [0.2, 0.0]
    assert [f.func.__name__ for f in (correct, fmt)] == ["correctness_reward", "format_reward"]  # trl's log names


def test_pass_rates_count_parsed_labels_and_dynamic_sampling_keeps_the_middle():
    def rec(pid, parsed, gold="exact", label=None):
        return {"pair_id": pid, "parsed_label": parsed, "label": label or parsed, "gold": gold}

    records = ([rec("hopeless", "substitute")] * 4
               + [rec("mid", "exact"), rec("mid", None, label="exact"), rec("mid", "irrelevant"), rec("mid", None)]
               + [rec("easy", "exact")] * 4)
    rates = pass_rates(records)
    assert rates == {"hopeless": 0.0, "mid": 0.25, "easy": 1.0}  # an unparseable answer is wrong
    assert pass_rates(records, key="label")["mid"] == 0.5  # the scored fallback counts when asked for
    assert dynamic_sample(rates) == ["mid"]
    assert dynamic_sample({"a": 0.0, "b": 0.25, "c": 1.0, "d": 0.75}) == ["b", "d"]


def test_grpo_rejects_inputs_it_cannot_learn_from(tmp_path):
    with pytest.raises(ValueError, match="kept no pair"):
        grpo("unused", tmp_path, [], LABELS, tmp_path / "out", GRPOSection())
    with pytest.raises(ValueError, match="'gold' label"):
        grpo("unused", tmp_path, [{"prompt": "p", "gold": "maybe"}], LABELS, tmp_path / "out", GRPOSection())
    with pytest.raises(ValueError, match="temperature"):
        grpo("unused", tmp_path, [{"prompt": "p", "gold": "exact"}], LABELS, tmp_path / "out", GRPOSection(),
             SamplingConfig(temperature=0.0))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter with non-zero B weights (a fresh one is a no-op), saved like the DPO stage's output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llama = resolve("tiny:llama")
    folder = tmp_path_factory.mktemp("dpo_adapter")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(llama).save_pretrained(folder)
    return llama, folder


def test_grpo_steps_continue_the_adapter_and_save_it(adapter, tmp_path):
    from relkd.teacher.trainers import MetricsCallback

    llama, start = adapter
    examples = [{"prompt": f"Query: usb cable {i}\nTitle: cable {i}\nAnswer:\n", "gold": LABELS[i % 3]}
                for i in range(4)]
    logs = []
    cfg = GRPOSection(max_steps=2, num_generations=2, batch_size=1, logging_steps=1)
    metrics = grpo(llama, start, examples, LABELS, tmp_path / "grpo", cfg, SamplingConfig(max_new_tokens=8),
                   callbacks=[MetricsCallback(lambda m, s: logs.append((s, m)))])
    assert metrics["steps"] == 2 and metrics["n_examples"] == 4
    assert math.isfinite(metrics["train_loss"])
    for key in ("reward", "rewards/correctness_reward/mean", "rewards/format_reward/mean", "kl"):
        assert math.isfinite(metrics[f"first_{key}"]) and math.isfinite(metrics[f"last_{key}"])
    assert [s for s, m in logs if "reward" in m] == [1, 2]  # every step's rewards reached the callback
    out = tmp_path / "grpo"
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    saved, before = load_file(out / "adapter_model.safetensors"), load_file(start / "adapter_model.safetensors")
    assert set(saved) == set(before)  # the "default" adapter only: trl's frozen "ref" copy is not saved
    # 8 random tokens never form a label line: every reward is 0, every group's advantage is 0, so the
    # continued adapter must come back unchanged (a fresh adapter would have zero B weights instead).
    assert metrics["last_reward"] == 0.0 and metrics["last_frac_reward_zero_std"] == 1.0
    for k in before:
        assert torch.equal(saved[k], before[k]), k
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4


def test_stage_copies_the_dpo_teacher_when_grpo_is_disabled(adapter, tmp_path):
    from pipeline.teacher_grpo import run

    assert TeacherConfig().grpo.enabled is False
    _, dpo = adapter
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"teacher": {"model": "tiny:llama", "grpo": {"enabled": False}}}))
    out, metrics_path = tmp_path / "models" / "grpo", tmp_path / "metrics.json"
    (out / "stale").mkdir(parents=True)  # a previous run's output is replaced, not merged into
    assert run(params, "unused", dpo, "unused", out, tmp_path / "cache", metrics_path) == {"enabled": 0}
    assert json.loads(metrics_path.read_text()) == {"enabled": 0}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in dpo.iterdir())
    assert (out / "adapter_model.safetensors").read_bytes() == (dpo / "adapter_model.safetensors").read_bytes()


def test_stage_probes_the_dpo_teacher_and_keeps_it_when_every_pair_is_hopeless(adapter, tmp_path, monkeypatch,
                                                                                 repo_root):
    import mlflow
    import pandas as pd

    from pipeline.teacher_grpo import run
    from relkd.tracking import configure

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure(tmp_path)
    _, dpo = adapter
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    labels = ["exact", "substitute", "complement", "irrelevant"]
    (prepared / "labels.json").write_text(json.dumps({"labels": labels}))
    pd.DataFrame({"pair_id": [f"p{i}" for i in range(8)], "query_id": [f"q{i}" for i in range(8)],
                  "query": [f"usb cable {i}" for i in range(8)], "title": [f"cable {i}" for i in range(8)],
                  "label": [labels[i % 4] for i in range(8)], "locale": ["us"] * 8}
                 ).to_parquet(prepared / "train.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"teacher": {"model": "tiny:llama", "sampling": {"max_new_tokens": 8},
                                                  "grpo": {"enabled": True, "n_pairs": 4, "k": 2}}}))
    out = tmp_path / "grpo"
    try:
        metrics = run(params, prepared, dpo, repo_root / "prompts", out, tmp_path / "cache", tmp_path / "m.json")
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    # The random tiny teacher never writes a label line: all 4 probed pairs are hopeless (pass rate 0).
    assert metrics == {"enabled": 1, "n_probe": 4, "k": 2, "probe_pass_rate": 0.0, "kept": 0, "dropped_easy": 0,
                       "dropped_hopeless": 4, "skipped": 1}
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert (out / "adapter_model.safetensors").read_bytes() == (dpo / "adapter_model.safetensors").read_bytes()
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 1  # the k samples per pair were cached
    assert [(r.info.run_name, r.info.status, r.data.metrics["dropped_hopeless"]) for r in runs] == [
        ("teacher_grpo", "FINISHED", 4.0)]
