"""Knobs of the MPCoT teacher: model, sampling, few-shot seed set, SFT, conflict set, DPO, evaluation.

Defaults are the embedded scale (SmolLM2-135M on 2 CPU cores, minutes per stage); the paper's settings are in
profiles/paper.yaml.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from relkd.section import Section
from relkd.teacher.prompts import PERSPECTIVES

PerspectiveName = Literal[PERSPECTIVES]


class SamplingConfig(Section):
    """How rationales are sampled (few-shot generation, conflict search, annotation)."""

    temperature: float = Field(0.7, ge=0, description="0 = greedy decoding")
    top_p: float = Field(0.99, gt=0, le=1, description="nucleus mass")
    top_k: int = Field(50, ge=0, description="0 = no top-k cut")
    max_new_tokens: int = Field(
        96, ge=1, description="cap on new tokens; an answer ends at its first complete label line, so this only "
        "bounds answers that never write one (a label-hinted SFT target is up to ~70 tokens plus its label line)"
    )
    no_repeat_ngram: int = Field(
        8, ge=0, description="ban a token that would repeat an n-gram of this size within the answer (0 = off): "
        "stops a small model's greedy loops before its token cap (transformers engine only; serving engines need 0)")
    label_choice: bool = Field(
        True, description="once an answer has written its label key ('Label:'), its label is chosen from the "
        "label set, token by token, then the line ends (guided choice, as vLLM's guided decoding): a small "
        "teacher that writes the label line but a near-miss name ('strong relevance') or the product title "
        "after it still answers a class; an answer that never writes the line stays unparseable. Serving engines "
        "(vllm, openai) do it with their structured output")
    k: int = Field(2, ge=1, description="rationales sampled per seed pair and perspective")
    seed: int = Field(13, description="sampling seed (with the prompt and sample index it fixes every output)")


class FewShotConfig(Section):
    """The labelled seed set that few-shot generation runs on, and the shots in each prompt."""

    n_seed_pairs: int = Field(
        12, ge=1, description="train pairs drawn (class-balanced where possible) as the seed set"
    )
    n_shots: int = Field(1, ge=0, description="worked examples per perspective prompt")
    seed: int = Field(13, description="seed of the seed-set draw")


class TrainerSection(Section):
    """What SFT and DPO share: the Trainer's schedule, checkpoints and device flags."""

    epochs: float = Field(2, gt=0, description="passes over the examples")
    lr: float = Field(4e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(8, ge=1, description="per-device batch (the examples of one prompt)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(448, ge=16, description="prompt + completion tokens; a longer example is left out")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps warming up linearly (whole steps, "
                                "rounded down)")
    logging_steps: int | None = Field(None, ge=1, description="log every N optimiser steps; None = once per epoch")
    seed: int = Field(13, description="training seed (LoRA init, data order)")
    save_steps: int | None = Field(
        10, ge=1, description="a checkpoint (adapter, optimiser, scheduler, RNG) every N optimiser steps under the "
        "stage's checkpoint folder; a rerun of a killed stage resumes from the newest; None = no mid-run checkpoint")
    gradient_checkpointing: bool | None = Field(
        None, description="recompute activations in the backward pass (memory for long prompts); None = on with a "
        "GPU, off on CPU")
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; None = on with a GPU that has it")
    prefix_sharing: bool | None = Field(
        None, description="run a batch's shared prompt tokens once (their KV cache feeds every row; 3.6x cheaper "
        "CPU steps on the embedded catalogue); None = on unless gradient checkpointing, FSDP or DeepSpeed (they "
        "drop the cache) is on; false = every row whole, as trl")


class SFTSection(TrainerSection):
    """LoRA SFT on the consistency-filtered union of the three perspective sets."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names LoRA wraps (Llama/Qwen attention names); 'all-linear' wraps every linear layer",
    )
    label_hinted_fallback: bool = Field(
        True,
        description="give every training pair the consistency filter left without a rationale a label-hinted "
        "one ('the answer is X; give the reasoning', STaR-style rationalisation; a rationale naming a class is "
        "dropped), so SFT learns the answer format from the whole training split and not from the few seed "
        "pairs the untrained teacher got right; the metrics say how many",
    )
    max_examples: int | None = Field(
        128, ge=1, description="cap on SFT examples (consistent ones first, then hinted ones, seeded); None = "
        "every training pair")
    perspective_share: float = Field(
        0.4, ge=0, le=1, description="share of the SFT examples posed under a perspective prompt (with the "
        "few-shot shots, as teacher_pairs and teacher_eval ask), the rest under the unified prompt (a small teacher "
        "trained under the unified prompt alone may not carry the format over to the perspective prompts)")
    check_pairs: int = Field(
        32, ge=1, description="validation pairs the trained teacher answers after SFT (greedy) under the unified "
        "prompt to prove it learned the format (checked at the start of teacher_pairs; under the perspective "
        "prompts, when perspective_share > 0, its answers there are checked)")
    max_unparseable: float = Field(
        0.1, ge=0, le=1, description="teacher_pairs (and teacher_single_pairs) fails when more than this share "
        "of the answers under a prompt has no parseable label (the format was not learned: more epochs, a higher lr "
        "or more examples)")


class PairsConfig(Section):
    """Conflict set search and cross-perspective preference pairs."""

    n_pairs_set: int = Field(
        16, ge=1, description="train pairs the SFT model is run on to find conflicts"
    )
    k: int = Field(2, ge=1, description="samples per pair and perspective (pass@k)")
    max_pairs_per_sample: int = Field(
        2, ge=1, description="preference pairs kept per conflicting (query, item); bounds one sample's weight"
    )


class DPOSection(TrainerSection):
    """DPO on the cross-perspective preference pairs, continuing the SFT adapter."""

    epochs: float = Field(1, gt=0, description="passes over the pairs")
    lr: float = Field(5e-5, gt=0, description="peak learning rate; high enough to move a LoRA on tiny CPU data")
    beta: float = Field(0.1, gt=0, description="KL strength to the reference (the SFT model); trl's default")
    batch_size: int = Field(4, ge=1, description="per-device batch of preference pairs")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps warming up linearly (whole steps, "
                                "rounded down)")
    max_length: int = Field(448, ge=16, description="prompt + completion tokens; a longer pair is left out (as long "
                            "as SFT's: a single-perspective teacher's pairs are posed under a perspective prompt with "
                            "the few-shot shots, as its SFT examples are)")
    logging_steps: int | None = Field(1, ge=1, description="log every N optimiser steps (a DPO run here is a few "
                                      "steps: once per epoch showed one loss); None = once per epoch")


class EvalConfig(Section):
    """Teacher accuracy on test pairs (few-shot, SFT, SFT+DPO; per perspective and unified)."""

    n_test_pairs: int | None = Field(48, ge=1, description="cap on test pairs scored; None = all")
    greedy: bool = Field(True, description="greedy rationales for evaluation (else sampled with `sampling`)")
    single_after_training: bool = Field(
        False, description="also answer under each perspective's own prompt after SFT and DPO (the table's "
        "SingleCoT rows of the trained stages); false keeps the few-shot perspectives (the MPCoT vote needs them) "
        "and the unified rows only: less than half the generations on a large test set")
    oracle_k: int | None = Field(
        None, ge=2, description="samples per test pair and perspective for the oracle comparison (the untrained "
        "teacher, few-shot, sampled with `sampling`): the multi-perspective oracle (right when any perspective's "
        "first sample is) against the single-perspective pass@k control (the perspective whose first sample is "
        "right most often, any of its first k samples) and that perspective's single pass; None = not run")


class SingleSection(Section):
    """Single-perspective teachers: each trained as MPCoT's teacher is (SFT, then DPO), on one perspective's data."""

    perspectives: list[PerspectiveName] = Field(
        default_factory=list, description="the perspectives that get a teacher of their own: SFT on that "
        "perspective's consistency-filtered (and label-hinted) rationales posed under its own prompt, then DPO on "
        "pairs of its own answers (chosen and rejected from the same perspective) and, apart, on MPCoT's pairs "
        "posed under its prompt; each final teacher annotates the students' pairs for a student of its own "
        "(student.single_variant); [] = none")
    size_matched: list[PerspectiveName] = Field(
        default_factory=list, description="perspectives (of `perspectives`) whose SFT teacher also gets a DPO on "
        "exactly as many pairs of its own answers as MPCoT's DPO has (the conflict search widened over the "
        "training split until there are enough)")

    @model_validator(mode="after")
    def _size_matched_are_trained(self) -> "SingleSection":
        if len(set(self.perspectives)) != len(self.perspectives):
            raise ValueError(f"perspectives lists a perspective twice: {self.perspectives}")
        extra = sorted(set(self.size_matched) - set(self.perspectives))
        if extra or len(set(self.size_matched)) != len(self.size_matched):
            raise ValueError(f"size_matched {self.size_matched} must name each perspective once, each one of "
                             f"perspectives {self.perspectives} (their SFT teachers are the ones it continues)")
        return self


class CurriculumSection(Section):
    """A ProgressiveCoT SFT teacher: MPCoT's SFT set and steps, ordered from the shortest rationales to the longest."""

    phases: int = Field(3, ge=1, description="buckets of rising rationale length (words), trained one after "
                        "another, each for teacher.sft.epochs passes: the same examples and steps as MPCoT's SFT")


class AnnotateConfig(Section):
    """The final teacher writing rationales for the student's training pairs."""

    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    max_pairs: int | None = Field(
        128, ge=1, description="cap on train pairs annotated (a seeded sample in the natural class mix; the students "
        "train on every pair, guided where annotated); None = all")
    hint: Literal["none", "gold"] = Field(
        "none", description="none = the teacher's own rationale; gold = label-hinted rationalisation "
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


class HTTPConfig(Section):
    """The teacher served by a fleet of OpenAI-compatible servers (teacher.backend openai): `vllm serve`, SGLang,
    llama.cpp's server. relkd's process owns no GPU; requests are spread over the servers and cached, so a killed
    stage resumes."""

    base_urls: list[str] = Field(
        default_factory=list, description="the servers' base URLs, e.g. ['http://gpu-1:8000/v1']; a request goes "
        "to the least busy one")
    served_model: str | None = Field(
        None, description="the base model's name on the servers (their /v1/models); None = teacher.model")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="adapter folder name -> the LoRA's served name; an adapter not listed is "
        "served under its folder's name (sft, dpo, final: `vllm serve ... --lora-modules sft=models/teacher/sft`)")
    server: Literal["vllm", "sglang", "llama_cpp"] = Field(
        "vllm", description="what the servers are, for the fields the OpenAI API leaves to each: vllm (stop strings "
        "kept and `structured_outputs.choice`), sglang (`matched_stop`, `regex`), llama_cpp (llama-cpp-python or "
        "llama-server: GBNF `grammar`, one sample a request, no report of which stop fired, so answers run to their "
        "end and are cut after the label key)")
    concurrency: int = Field(8, ge=1, description="requests in flight per server")
    timeout: float = Field(300.0, gt=0, description="seconds a request may take")
    retries: int = Field(4, ge=0, description="retries of a failed request (connection errors, 408, 429, 5xx), "
                         "with the openai client's exponential backoff")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the servers' API key "
                             "(unset: no key sent)")


class TeacherConfig(Section):
    """The MPCoT teacher: a causal LM that writes a rationale, then a label."""

    model: str = Field(
        "pypi:SmolLM2-135M-Instruct",
        description="relkd.models name or hub id of the teacher LM",
    )
    backend: Literal["auto", "transformers", "vllm", "openai"] = Field(
        "auto", description="generation engine: transformers (in-process, CPU or GPU), vllm (in-process, GPU), "
        "openai (OpenAI-compatible servers over HTTP: teacher.http); auto = vllm when importable and a GPU is "
        "visible, else transformers")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine (tensor parallel)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on GPU, float32 on CPU (no bf16 on CPU)"
    )
    batch_size: int = Field(64, ge=1, description="prompts per generate call (and per cached batch)")
    max_prompt_tokens: int = Field(
        2048, ge=16, description="longest prompt accepted; a longer one is an error (fewer shots or raise this)"
    )
    label_decision: Literal["parse", "score"] = Field(
        "parse",
        description="what decides the predicted label: 'parse' = the label written after the rationale; "
        "'score' = the highest log-likelihood label after the rationale; both rates are reported",
    )
    label_scores: bool = Field(
        False, description="also score every answer's labels by log-likelihood after its rationale (the records' "
        "probs and scored_label, the accuracy_scored columns, vote ties broken by probability mass); always on "
        "with label_decision 'score' and in teacher-score (its tiers are cumulative probabilities); off, the "
        "generating stages do ~30% less work",
    )
    num_processes: int = Field(
        1, ge=1, description="processes teacher_sft and teacher_dpo train on (dvc.yaml runs them with `accelerate "
        "launch`; one per GPU; accelerate's own config, written by `accelerate config`, picks DDP, FSDP or DeepSpeed)")
    http: HTTPConfig = HTTPConfig()
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
    single: SingleSection = SingleSection()
    progressive: dict[str, CurriculumSection] = Field(
        default_factory=dict, description="ProgressiveCoT SFT teachers by name: MPCoT's SFT set in a curriculum of "
        "rising rationale length, asked under the unified prompt; {} = none")

    @property
    def scores_labels(self) -> bool:
        """Whether the generating stages score labels: label_scores, or a decision that needs the scores."""
        return self.label_scores or self.label_decision == "score"
