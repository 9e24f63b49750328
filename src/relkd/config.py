"""Typed configuration: params.yaml loaded and validated once, at the edge.

Each stage reads its own section as a typed object. Unknown keys and bad values are errors
that name the key path (for example ``data.catalogue.n_queries``) and the offending value.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from relkd.data.config import DataConfig
from relkd.embed.config import EmbedConfig
from relkd.eval.config import PeersConfig, ProbeConfig
from relkd.section import ConfigError, Section, format_errors, read_yaml
from relkd.serving.config import AbConfig, ExportConfig, OnlineConfig, RegistryConfig, ScoreConfig, TritonConfig
from relkd.student.config import StudentConfig
from relkd.teacher.config import TeacherConfig


# Component sections live beside what they configure (like trl's DPOConfig); the root only assembles them.
# `tracking` (one key, read by every stage) is the one section defined here: relkd.tracking imports mlflow on
# import, and reading params must not.
class TrackingConfig(Section):
    """MLflow tracking (MLFLOW_TRACKING_URI points at a team server; else the embedded store in registry/)."""

    experiment: str = Field("relkd", description="MLflow experiment of every stage's run")


class Params(Section):
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    embed: EmbedConfig = EmbedConfig()
    student: StudentConfig = StudentConfig()
    probe: ProbeConfig = ProbeConfig()
    peers: PeersConfig = PeersConfig()
    registry: RegistryConfig = RegistryConfig()
    export: ExportConfig = ExportConfig()
    triton: TritonConfig = TritonConfig()
    score: ScoreConfig = ScoreConfig()
    ab: AbConfig = AbConfig()
    online: OnlineConfig = OnlineConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _int8_serves_on_cpu(self):
        if self.export.int8 and self.triton.device == "gpu":
            raise ValueError("export.int8 serves a dynamically quantised graph, made for onnxruntime's CPU integer "
                             "kernels (onnxruntime's GPU route to int8 is TensorRT, not the CUDA provider); with "
                             "triton.device: gpu set export.int8: false")
        return self


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err, "invalid params:")) from None


def merge(base: dict, overlay: dict) -> dict:
    """Deep-merge `overlay` into a copy of `base` (mappings merge key by key; other values replace)."""
    out = dict(base)
    for k, v in (overlay or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_yaml(path, "params file", " (run from the repository root or pass --params)"))
