"""All MLflow calls live here (this package; `runlogger.py`: `RunLogger`, every write to a run; `models.py`:
logged models, the registry, dataset inputs; `base.py`: the URI, the client, a server that does not answer).

A job creates (or resumes) one run on the driver with `start_run`, hands the run id to
its Ray workers, and rank 0 re-attaches with `RunLogger(run_id)`: every other rank gets
a disabled logger, so nothing is logged twice. We use `MlflowClient` with explicit run
ids instead of the fluent API's global "active run", because Ray Tune trials and Train
workers share a process with other runs.

Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` with artifacts in
`<cwd>/mlartifacts`: what `mlflow ui`, started in the same directory, opens by default. A server that
does not answer after MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES) is a one-line
`errors.TrackingUnavailable` naming it. Every run's source (the UI's Source column) is its job's script.

Finding runs: `find_runs(experiment, tags=..., name=..., status=..., has_tag=..., parent=...)`
builds MLflow's filter string; no other module writes one. Runs come back as MLflow `Run`
objects (`run.info.run_id`, `run.info.start_time`, `run.data.tags`, `run.data.params`, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config.base import flatten
from .base import DEFAULT_ARTIFACTS, DEFAULT_DB, model_requirements, redact_params, safe_uri, tracking_uri
from .runlogger import RunLogger
from .runs import (
    PARENT_RUN_TAG,
    download_artifact,
    find_runs,
    get_or_create_experiment,
    get_run,
    git_commit,
    load_torch_model,
    metric_history,
    run_links,
    start_run,
)

# Logged models and the registry (`models.py` imports mlflow.pyfunc and pandas): loaded on first use.
_FROM_MODELS = ("fetch_landmark_model", "register_model", "registered_versions")


def __getattr__(name: str) -> Any:
    if name in _FROM_MODELS:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_ARTIFACTS", "DEFAULT_DB", "PARENT_RUN_TAG", "RunLogger", "download_artifact", "fetch_landmark_model",
    "find_runs", "flatten", "get_or_create_experiment", "get_run", "git_commit", "load_torch_model", "metric_history",
    "model_requirements", "redact_params", "register_model", "registered_versions", "run_links", "safe_uri",
    "start_run", "tracking_uri",
]
