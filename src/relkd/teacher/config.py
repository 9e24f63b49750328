"""Knobs of the MPCoT teacher: model, sampling, few-shot seed set, SFT, conflict set, DPO, evaluation.

Defaults are the embedded scale (SmolLM2-135M on 2 CPU cores, minutes per stage); each description
names the paper's setting ("paper: ...") so a GPU host can be set to it from params.yaml.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from relkd.section import Section


class SamplingConfig(Section):
    """How rationales are sampled (few-shot generation, conflict search, annotation)."""

    temperature: float = Field(0.7, ge=0, description="0 = greedy decoding; paper: 0.7")
    top_p: float = Field(0.99, gt=0, le=1, description="nucleus mass; paper: 0.99")
    top_k: int = Field(50, ge=0, description="0 = no top-k cut; paper: 50")
    max_new_tokens: int = Field(
        96, ge=1, description="cap on new tokens (worked answers: 31-37 tokens; label-hinted SFT targets up to a "
        "35-word rationale, about 70 tokens with product codes, plus the label line); an answer ends at its first complete label line, so this only "
        "bounds answers that never write one; paper: long free-form CoT (hundreds of tokens)"
    )
    no_repeat_ngram: int = Field(
        8, ge=0, description="ban a token that would repeat an n-gram of this size within the answer (0 = off): "
        "stops a small model's greedy loops before its token cap (transformers backend; vllm needs 0); "
        "paper: off")
    label_choice: bool = Field(
        True, description="once an answer has written its label key ('Label:'), its label is chosen from the "
        "label set, token by token, then the line ends (guided choice, as vLLM's guided decoding): a small "
        "teacher that writes the label line but a near-miss name ('strong relevance') or the product title "
        "after it still answers a class; an answer that never writes the line stays unparseable "
        "(transformers backend; vllm needs false); paper: free-form")
    k: int = Field(2, ge=1, description="rationales sampled per seed pair and perspective; paper: 5")
    seed: int = Field(13, description="sampling seed (with the prompt and sample index it fixes every output)")


class FewShotConfig(Section):
    """The labelled seed set that few-shot generation runs on, and the shots in each prompt."""

    n_seed_pairs: int = Field(
        12, ge=1, description="train pairs drawn (class-balanced where possible) as the seed set; "
        "paper: the labelled training set"
    )
    n_shots: int = Field(1, ge=0, description="worked examples per perspective prompt; paper: a few")
    seed: int = Field(13, description="seed of the seed-set draw")


class SFTSection(Section):
    """LoRA SFT on the consistency-filtered union of the three perspective sets."""

    r: int = Field(8, ge=1, description="LoRA rank; paper: LoRA, rank not stated")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names LoRA wraps (Llama/Qwen attention names); 'all-linear' wraps every linear layer",
    )
    epochs: float = Field(2, gt=0, description="paper: 3")
    lr: float = Field(4e-4, gt=0, description="peak learning rate; high for tiny CPU data; paper: 5e-5")
    batch_size: int = Field(8, ge=1, description="per-device batch")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation; paper: global batch 32")
    max_length: int = Field(448, ge=16, description="prompt + completion tokens, longer is cut; paper: 3072")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name; paper: cosine")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps warming up linearly")
    logging_steps: int | None = Field(None, ge=1, description="log every N optimiser steps; None = once per epoch")
    seed: int = Field(13, description="training seed (LoRA init, data order)")
    label_hinted_fallback: bool = Field(
        True,
        description="give every training pair the consistency filter left without a rationale a label-hinted "
        "one ('the answer is X; give the reasoning', STaR-style rationalisation; a rationale naming a class is "
        "dropped), so SFT learns the answer format from the whole training split and not from the few seed "
        "pairs the untrained teacher got right; the metrics say how many; paper: not used (False)",
    )
    max_examples: int | None = Field(
        128, ge=1, description="cap on SFT examples (consistent ones first, then hinted ones, seeded); None = "
        "every training pair")
    perspective_share: float = Field(
        0.4, ge=0, le=1, description="share of the SFT examples posed under a perspective prompt (with the "
        "few-shot shots, as teacher_pairs and teacher_eval ask), the rest under the unified prompt: at 135M the "
        "format learned under the unified prompt alone did not always carry over (6.25% unparseable under "
        "structured analysis); paper: 0 (one unified prompt for all samples)")
    check_pairs: int = Field(
        32, ge=1, description="validation pairs the trained teacher answers after SFT (greedy) under the unified "
        "prompt, and under each perspective prompt when perspective_share > 0, to prove it learned the format")
    max_unparseable: float = Field(
        0.1, ge=0, le=1, description="teacher_sft fails when more than this share of those answers has no "
        "parseable label (the format was not learned: more epochs, a higher lr or more examples)")


class PairsConfig(Section):
    """Conflict set search and cross-perspective preference pairs."""

    n_pairs_set: int = Field(
        16, ge=1, description="train pairs the SFT model is run on to find conflicts; paper: the training set"
    )
    k: int = Field(2, ge=1, description="samples per pair and perspective (pass@k); paper: 5")
    max_pairs_per_sample: int = Field(
        2, ge=1, description="preference pairs kept per conflicting (query, item); bounds one sample's weight"
    )


class DPOSection(Section):
    """DPO on the cross-perspective preference pairs, continuing the SFT adapter."""

    epochs: float = Field(1, gt=0, description="paper: 3")
    lr: float = Field(5e-5, gt=0, description="peak learning rate; high enough to move a LoRA on tiny CPU data; "
                      "paper: 5e-6")
    beta: float = Field(0.1, gt=0, description="KL strength to the reference (the SFT model); paper: 0.1 (trl default)")
    batch_size: int = Field(4, ge=1, description="per-device batch of preference pairs")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation; paper: effective batch 64")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="paper: 0.1")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    max_length: int = Field(384, ge=16, description="prompt + completion tokens, longer is cut; paper: 3072")
    logging_steps: int | None = Field(1, ge=1, description="log every N optimiser steps (a DPO run here is a few "
                                      "steps: once per epoch showed one loss); None = once per epoch")
    seed: int = Field(13, description="training seed (data order)")


class EvalConfig(Section):
    """Teacher accuracy on test pairs (few-shot, SFT, SFT+DPO; per perspective and unified)."""

    n_test_pairs: int | None = Field(48, ge=1, description="cap on test pairs scored; None = all; paper: all")
    greedy: bool = Field(True, description="greedy rationales for evaluation (else sampled with `sampling`)")
    single_after_training: bool = Field(
        False, description="also answer under each perspective's own prompt after SFT and DPO (the table's "
        "SingleCoT rows of the trained stages); false keeps the few-shot perspectives (the MPCoT vote needs them) "
        "and the unified rows only: less than half the generations on a large test set")


class AnnotateConfig(Section):
    """The final teacher writing rationales for the student's training pairs."""

    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    max_pairs: int | None = Field(128, ge=1, description="cap on train pairs annotated (a seeded sample in the natural class mix; the students train on every pair, guided where annotated); None = all")
    hint: Literal["none", "gold"] = Field(
        "none", description="none = the teacher's own rationale (paper); gold = label-hinted rationalisation "
        "(the gold label is in the prompt, STaR-style), for a teacher too weak to reason its way to the label")
    source: Literal["teacher", "oracle"] = Field(
        "teacher", description="who writes the rationales: teacher = the final teacher (paper); oracle = A CONTROL, "
        "NOT A TEACHER: each pair's reason written from the embedded catalogue's construction (relkd.teacher.oracle; "
        "data.source: catalogue only), to measure what LRKD does with rationales that carry the label's reasons")

    @model_validator(mode="after")
    def _hint_is_the_teachers(self) -> "AnnotateConfig":
        if self.source == "oracle" and self.hint != "none":
            raise ValueError(f"hint {self.hint!r} asks the teacher for label-hinted rationales, and source 'oracle' "
                             "uses no teacher: set hint: none with the oracle")
        return self


class ShardConfig(Section):
    """Split generation over workers: each writes its own cache file, the merge reads the folder."""

    num_shards: int = Field(1, ge=1, description="workers generating in parallel")
    shard_index: int = Field(0, ge=0, description="this worker's shard, 0 .. num_shards - 1")

    @model_validator(mode="after")
    def _index_in_range(self) -> "ShardConfig":
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} must be < num_shards {self.num_shards}")
        return self


class GRPOSection(Section):
    """TaoSR1's third stage: difficulty-based dynamic sampling, then GRPO continuing the DPO adapter."""

    enabled: bool = Field(
        False, description="run GRPO after DPO; off = the final teacher is the DPO teacher (the stage copies it); "
        "TaoSR1: on"
    )
    n_pairs: int = Field(
        16, ge=1, description="train pairs (class-balanced draw) the DPO teacher is probed on for pass rates; "
        "TaoSR1: the RL training pool"
    )
    k: int = Field(
        4, ge=1, description="samples per probed pair for its pass rate (dynamic sampling); TaoSR1: not stated"
    )
    num_generations: int = Field(
        4, ge=2, description="completions per prompt in a GRPO group (advantages are relative within it); "
        "TaoSR1: not stated (trl default 8)"
    )
    max_steps: int | None = Field(
        4, ge=1, description="optimiser steps; None = `epochs` passes over the kept pairs; TaoSR1: not stated"
    )
    epochs: float = Field(1, gt=0, description="passes over the kept pairs when max_steps is None")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (LoRA, tiny CPU data); TaoSR1: not stated")
    beta: float = Field(
        0.04, ge=0, description="KL strength to the reference (the DPO model, a frozen copy of its adapter); "
        "0 = no reference; TaoSR1: not stated"
    )
    batch_size: int = Field(
        1, ge=1, description="prompts per device step (each brings num_generations completions)"
    )
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    format_weight: float = Field(
        0.5, ge=0, description="reward for a well-formed answer (non-empty rationale and a parseable label line), "
        "added to the correctness reward (1.0 when the label is the gold one)"
    )
    logging_steps: int | None = Field(1, ge=1, description="log every N optimiser steps; None = once per epoch")
    seed: int = Field(14, description="seed of the probe draw, the rollouts and the data order")


class TeacherTierSection(Section):
    """TaoSR1's cumulative-probability partitioning of the teacher's label distribution into tiers 0..4
    (rule: relkd.teacher.tiers)."""

    order: list[str] | None = Field(
        default_factory=lambda: ["strongly relevant", "attribute mismatch", "model mismatch", "brand mismatch",
                                 "accessory mismatch", "category mismatch"],
        description="label names from most to least relevant (default: the embedded catalogue's); None = the "
        "dataset's label order; ESCI: ['exact', 'substitute', 'complement', 'irrelevant']"
    )
    thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.5, 0.5, 0.5],
        description="[t4, t3, t2, t1]: tier 4 when P(top 1 label) >= t4, else tier 3 when P(top 2) >= t3, else "
        "tier 2 when P(top 3) >= t2, else tier 1 when P(top 4) >= t1, else 0; a sum never takes in the least "
        "relevant label (with 4 labels tiers 2 and 1 both read P(top 3)); all 0.5 = the median relevance level; "
        "TaoSR1: tuned thresholds, not stated",
    )

    @model_validator(mode="after")
    def _four_probabilities(self) -> "TeacherTierSection":
        if len(self.thresholds) != 4 or any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be 4 values in [0, 1] ([t4, t3, t2, t1]), got {self.thresholds}")
        return self


class TeacherConfig(Section):
    """The MPCoT teacher: a causal LM that writes a rationale, then a label."""

    model: str = Field(
        "pypi:SmolLM2-135M-Instruct",
        description="relkd.models name or hub id of the teacher LM; paper: Qwen/Qwen3-14B",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="generation engine; auto = vllm when importable and a GPU is visible, else transformers"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM GPUs per model (paper scale: as many as fit 14B)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on GPU, float32 on CPU (no bf16 on CPU)"
    )
    batch_size: int = Field(64, ge=1, description="prompts per generate call (transformers backend); greedy answers/s on 2 cores: 16 -> 1.5, 32 -> 1.8, 64 -> 2.3")
    max_prompt_tokens: int = Field(
        2048, ge=16, description="longest prompt accepted; a longer one is an error (fewer shots or raise this)"
    )
    label_decision: Literal["parse", "score"] = Field(
        "parse",
        description="what decides the predicted label: 'parse' = the label written after the rationale (paper); "
        "'score' = the highest log-likelihood label after the rationale; both rates are reported",
    )
    label_scores: bool = Field(
        False, description="also score every answer's labels by log-likelihood after its rationale (the records' "
        "probs and scored_label, the accuracy_scored columns, vote ties broken by probability mass); always on "
        "with label_decision 'score' and in teacher-score (its tiers are cumulative probabilities); off, the "
        "generating stages do ~30% less work (paper: the label is parsed, nothing is scored)",
    )
    sampling: SamplingConfig = SamplingConfig()
    fewshot: FewShotConfig = FewShotConfig()
    sft: SFTSection = SFTSection()
    pairs: PairsConfig = PairsConfig()
    dpo: DPOSection = DPOSection()
    eval: EvalConfig = EvalConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    shards: ShardConfig = ShardConfig()
    grpo: GRPOSection = GRPOSection()
    tiers: TeacherTierSection = TeacherTierSection()

    @property
    def scores_labels(self) -> bool:
        """Whether the generating stages score labels: label_scores, or a decision that needs the scores."""
        return self.label_scores or self.label_decision == "score"
