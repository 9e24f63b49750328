"""Knobs of registration, export, the Triton model, nightly scoring and the champion-vs-challenger A/B."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from relkd.section import Section
from relkd.serving.drift import DriftThresholds


class RegistryConfig(Section):
    """The MLflow model registry: the registered name, the control student and how the challenger is chosen."""

    name: str = Field("relevance-student", description="registered-model name every student version lives under")
    baseline: str = Field("plain", description="variant that becomes champion when the registry has none "
                          "(the control student of the A/B)")
    candidates: list[str] | None = Field(None, description="variants eligible as challenger; None = all but baseline")
    select_by: str = Field("valid_macro_f1", description="metric tag that picks the challenger among candidates")
    export_workers: int = Field(2, ge=1, description="processes exporting the students to ONNX side by side in "
                                "register (the exporter's tracing runs mostly on one core)")


class ExportConfig(Section):
    """Export to the Triton repository: the graph served, calibration, tiers and explanations."""

    int8: bool = Field(False, description="serve the int8 dynamic-quantised graph when its argmax agreement "
                       "with fp32 on the validation split is at least min_int8_agreement")
    min_int8_agreement: float = Field(0.995, ge=0, le=1, description="argmax agreement with fp32 on validation "
                                      "pairs the int8 graph needs to be served")
    optimize: bool = Field(True, description="triton.device cpu: serve onnxruntime's fully optimised graph "
                           "(ORT_ENABLE_ALL, saved with the CPU provider's fusions); gpu: the exported graph is "
                           "served and onnxruntime optimises it on the GPU at load")
    target_precisions: list[float] = Field(
        default_factory=lambda: [0.3, 0.5, 0.7, 0.9],
        description="precision of 'relevant' wanted at tiers 1..4 (tier thresholds are fitted on valid)")
    relevance_weights: dict[str, float] = Field(
        default_factory=lambda: {"strongly relevant": 1.0, "exact": 1.0, "substitute": 0.5, "complement": 0.25},
        description="per-label weight of the relevance score sum_c p_c w_c; labels not listed weigh 0")
    relevant_labels: list[str] = Field(
        default_factory=lambda: ["strongly relevant", "exact"],
        description="labels that count as relevant when fitting tier thresholds")
    explain: bool = Field(True, description="ship an index of training rationales for nearest-rationale explanations")
    intra_op_threads: int = Field(2, ge=1, description="onnxruntime threads inside the Triton model")
    bucket_rows: int = Field(16, ge=1, description="the Triton model runs each batch in sub-batches of this many "
                             "pairs of similar token length, each padded to its own longest")


class TritonConfig(Section):
    """The Triton model: its name, batching, instances and device."""

    model_name: str = Field("relevance_student", description="the served student's model name in the Triton "
                            "repository")
    max_batch_size: int = Field(64, ge=1, description="largest batch the served model takes (config.pbtxt)")
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [16, 32],
                                             description="batch sizes Triton's dynamic batcher aims for")
    max_queue_delay_us: int = Field(2000, ge=0, description="microseconds a request may wait to join a batch")
    instance_count: int = Field(1, ge=1, description="model instances (on each GPU with device gpu)")
    start_timeout: float = Field(120, gt=0, description="seconds to wait for the server to be ready")
    device: Literal["cpu", "gpu"] = Field("cpu", description="where the served model runs: cpu (KIND_CPU, "
                                          "onnxruntime's CPU provider) or gpu (KIND_GPU, the CUDA provider with the "
                                          "CPU one after it; needs triton_repo/stub-requirements-gpu.txt)")


class ScoreConfig(Section):
    """The nightly batch (generated or your file) and the scoring client that sends it through Triton."""

    batch: str | None = Field(None, description="nightly batch file (parquet/CSV/JSONL: query, title, optional "
                              "id, label); None = generate the embedded one")
    n_rows: int = Field(200, ge=1, description="rows of the generated nightly batch")
    seed: int = Field(101, description="seed of the generated batch")
    labelled_share: float = Field(0.5, ge=0, le=1, description="share of generated rows that keep a label")
    bad_rows: int = Field(3, ge=0, description="deliberately broken rows in the generated batch")
    protocol: Literal["grpc", "http"] = Field("grpc", description="how the client talks to Triton")
    batch_size: int = Field(32, ge=1, description="rows per request")
    concurrency: int = Field(2, ge=1, description="requests in flight")
    retries: int = Field(3, ge=0, description="retries of a request on a transient failure")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry, doubled each time")
    max_chars: int = Field(2000, ge=1, description="longer query/title text is rejected, not silently cut")
    shard_size: int = Field(100, ge=1, description="rows per atomically written shard (resume unit)")
    explain: bool = Field(True, description="ask for each row's nearest training rationale (explain_id); false: "
                          "the server skips the latent output and the lookup, and explain_id stays empty")
    drift: DriftThresholds = DriftThresholds()


class AbConfig(Section):
    """Champion vs challenger: the hash split of traffic into arms (offline report and live router alike)."""

    salt: str = Field("relkd-ab", description="salt of the hash-based traffic split")
    champion_share: float = Field(0.1, ge=0, le=1, description="share of traffic in the champion arm")
    challenger_share: float = Field(0.1, ge=0, le=1, description="share of traffic in the challenger arm")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples of the intervals")
    seed: int = Field(0, description="seed of the bootstrap")


class OnlineConfig(Section):
    """The live A/B: the router (its arms and shares are `ab`'s), its exposure log, the replayed traffic of the
    embedded demo, the simulated outcomes and the analysis's verdict rules."""

    router_name: str = Field("relevance_router", description="Triton model name of the A/B router (BLS)")
    exposures: str = Field("data/exposures", description="folder the router appends exposure records to (relative: "
                           "to the server's working directory); RELKD_EXPOSURES or `relkd serve --exposures` "
                           "override it per server")
    rotate_mb: float = Field(64, gt=0, description="an exposure file past this size is closed and a new one begun")
    fsync: bool = Field(True, description="fsync the exposure log after every batch (false: flushed to the OS "
                        "only, which survives a killed server but not a power cut)")
    router_instances: int = Field(1, ge=1, description="router instances (each its own stub process and log file)")
    rate: float = Field(0, ge=0, description="replay: requests per second over all clients (0: as fast as served)")
    concurrency: int = Field(4, ge=1, description="replay: concurrent clients")
    passes: int = Field(5, ge=1, description="embedded traffic: the nightly batch replayed this many times, each "
                        "row by another simulated user")
    users: int = Field(400, ge=1, description="embedded traffic: simulated users (units) the requests come from")
    seed: int = Field(0, description="seed of the simulated users and outcomes")
    outcome_noise: float = Field(0.1, ge=0, le=0.5, description="simulated outcome: 1 when the served label is "
                                 "the gold label, flipped with this probability (only rows with a gold label)")
    missing_outcome: Literal["drop", "zero"] = Field(
        "drop", description="an exposure without an outcome: left out of the rates (drop) or counted as 0 "
        "(zero: outcomes that log only positive events, e.g. clicks)")
    srm_alpha: float = Field(0.001, gt=0, lt=1, description="sample-ratio-mismatch chi-square p-value below which "
                             "the assignment is broken and no verdict is given")
    alpha: float = Field(0.05, gt=0, lt=1, description="two-sided level of the bootstrap intervals")
    max_error_rate_increase: float = Field(0.01, ge=0, description="guardrail: the challenger version's error rate "
                                           "may exceed the champion's by at most this (absolute)")
    max_p99_ratio: float = Field(1.5, ge=1, description="guardrail: the challenger version's p99 latency may be at "
                                 "most this multiple of the champion's")
