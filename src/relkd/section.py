"""The base of every typed config section (component configs import it; relkd.config assembles them)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """params.yaml (or an override) holds an unknown key or a bad value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
