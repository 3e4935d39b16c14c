"""The spec's `track` section: which experiment trackers a launch logs to (Weights & Biases, MLflow), through Ray
Tune's own logger callbacks (orchestrator.run.track builds them).

Why here and not a flag only: a sweep relaunched to grow should log to the same place, and the section is checked
like the rest of the spec (a tracker whose client is not installed stops at validate with one line naming the
extra). Not part of the fingerprint: logging somewhere else does not change what a sweep computes. Credentials never
go in a spec (the sweep folder records it): W&B reads WANDB_API_KEY or `wandb login`, MLflow its
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN variables.
"""

from __future__ import annotations

import importlib.util
import os
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from orchestrator.spec.fields import SpecFieldError

# tracker -> (the module its client installs, the pyproject extra that brings it)
CLIENTS = {"wandb": ("wandb", "track"), "mlflow": ("mlflow", "track")}
WANDB_MODES = ("online", "offline", "disabled")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Wandb(_Strict):
    """Weights & Biases: one run per Tune trial, grouped by setting (the seeds of one (Th, alpha) together)."""

    project: str | None = None       # default: the sweep's name
    entity: str | None = None        # default: the logged-in user's
    mode: str = "online"             # offline: run files under the trial's Tune folder, `wandb sync` uploads them

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in WANDB_MODES:
            raise ValueError(f"{value!r} is not a W&B mode; use one of {', '.join(WANDB_MODES)}")
        return value


class Mlflow(_Strict):
    """MLflow: one run per Tune trial in one experiment, tagged with its setting."""

    # a server (http://host:5000) or a local database (sqlite:///mlflow.db, MLflow's recommended local store);
    # default: MLflow's own (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db where the launch starts)
    tracking_uri: str | None = None
    experiment_name: str | None = None   # default: the sweep's name

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and (urlsplit(value).username or urlsplit(value).password):
            raise ValueError("holds a user name or password, and the spec is recorded in the sweep folder; give "
                             "the credentials in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                             "MLFLOW_TRACKING_TOKEN) instead")
        if value is not None and is_folder_store(value) and not folder_store_allowed():
            # MLflow itself refuses it (only when the first run starts, after training): said here, at validate
            raise ValueError(f"{value!r} is a folder, MLflow's file store, which MLflow 3 keeps in maintenance and "
                             "refuses; use a database such as sqlite:///mlflow.db (MLflow's recommended local "
                             "store), or set MLFLOW_ALLOW_FILE_STORE=true to keep a folder")
        return value


def is_folder_store(uri: str) -> bool:
    """A tracking URI that names MLflow's folder store: a plain path or file://."""
    return "://" not in uri or uri.startswith("file://")


def folder_store_allowed() -> bool:
    """MLflow's own opt-in to its folder store (the MLFLOW_ALLOW_FILE_STORE variable, read as MLflow reads it)."""
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


class Track(_Strict):
    """`track: {wandb: {...}, mlflow: {...}}`; each tracker is off unless named."""

    wandb: Wandb | None = None
    mlflow: Mlflow | None = None

    @model_validator(mode="after")
    def _clients_installed(self) -> Track:
        for name, (module, extra) in CLIENTS.items():
            if getattr(self, name) is not None and importlib.util.find_spec(module) is None:
                raise SpecFieldError(("track", name), f"needs the {module} client, which is not installed; "
                                                      f"pip install 'pixelreg[{extra}]' (or pip install {module})")
        return self

    @property
    def any(self) -> bool:
        return self.wandb is not None or self.mlflow is not None
