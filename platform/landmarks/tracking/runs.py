"""Runs: create or resume one (`start_run`), find them (`find_runs`, the one place a filter string is
written), read them (`get_run`, `metric_history`, artifacts) and the links a job prints at its end."""


from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import (
    DEFAULT_ARTIFACTS,
    fluent_tracking_uri,
    redact_params,
    safe_uri,
    server_errors,
    source_tags,
    tracking_uri,
)
from .base import client as _client
from .runlogger import RunLogger

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's tag that nests a run under another in the UI


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if (uri or tracking_uri()).startswith("sqlite:") and "MLFLOW_TRACKING_URI" not in os.environ:
        location = (Path.cwd().resolve() / DEFAULT_ARTIFACTS / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another trial
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def load_torch_model(run_id: str, name: str = "model") -> Any:
    """The `mlflow.pytorch` model `name` logged in run `run_id` (e.g. a pretraining run's
    "backbone_model"), from the current tracking URI, on the CPU.

    Its pickled module is read weights-only with torch's, torchvision's ResNet and our module classes
    allow-listed (`models.formats.load_pickled_module`), not unpickled as `mlflow.pytorch.load_model` does."""
    import mlflow.artifacts
    from mlflow.models import Model

    from ..models.formats import load_pickled_module

    with fluent_tracking_uri(tracking_uri()), tempfile.TemporaryDirectory(prefix="landmarks-model-") as tmp:
        directory = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{name}", dst_path=tmp))
        data = Model.load(str(directory)).flavors["pytorch"]["model_data"]
        return load_pickled_module(directory / data / "model.pth")


def start_run(
    experiment: str,
    run_name: str | None,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> RunLogger:
    """Create a run (or resume `run_id`) in `experiment`, tagged with the git commit and, as its source (the
    UI's Source column), the script of its "job" tag.

    Returns a RunLogger for the driver. Tags with value None are dropped.
    """
    with server_errors(tracking_uri()):
        client = _client()
        if run_id:
            run = get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return RunLogger(run.info.run_id)
        exp_id = get_or_create_experiment(experiment)
        all_tags = {"git_commit": git_commit(), **source_tags((tags or {}).get("job"))}
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        all_tags.update({k: v for k, v in (tags or {}).items() if v is not None})
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in redact_params(all_tags).items()})
        return RunLogger(run.info.run_id)


def get_run(run_id: str):
    """The MLflow run, or a UserError saying it does not exist at this tracking URI."""
    from mlflow.exceptions import MlflowException

    try:
        with server_errors(tracking_uri()):
            return _client().get_run(run_id)
    except MlflowException:
        raise UserError(f"MLflow run {run_id!r} does not exist at {safe_uri(tracking_uri())}") from None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """Every (step, value) a run logged for a metric, in step order (empty when it logged none)."""
    return sorted((m.step, m.value) for m in _client().get_metric_history(run_id, key))


def download_artifact(run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """Download one artifact (file or directory) of a run into the local directory `dst`; returns its path.

    The caller owns `dst` (usually a `tempfile.TemporaryDirectory`), so downloads do not pile up in /tmp.
    """
    from mlflow.exceptions import MlflowException

    get_run(run_id)
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        path = _client().download_artifacts(run_id, artifact_path, str(dst))
    except (MlflowException, OSError) as err:
        raise UserError(f"MLflow run {run_id} has no artifact {artifact_path!r}: {err}") from None
    return Path(path)


def find_runs(experiment: str, *, tags: dict[str, Any] | None = None, name: str | None = None,
              status: str | None = None, has_tag: str | None = None, parent: str | None = None,
              max_results: int = 5000) -> list:
    """The runs of `experiment` that match every condition given (all its runs for none; an empty
    list if the experiment does not exist), as MLflow `Run` objects, newest first (MLflow's default order).

    tags: tag -> value, each equal; name: the run name; status: RUNNING, FINISHED, FAILED or
    KILLED; has_tag: a tag the run has with a non-empty value; parent: the run id it is nested
    under (`start_run(parent_run_id=...)`, or the `PARENT_RUN_TAG` tag).
    """
    conditions = [f"tags.{_filter_key(k)} = {_filter_value(v)}" for k, v in (tags or {}).items()]
    if parent is not None:
        conditions.append(f"tags.{_filter_key(PARENT_RUN_TAG)} = {_filter_value(parent)}")
    if has_tag is not None:
        conditions.append(f"tags.{_filter_key(has_tag)} != ''")
    if name is not None:
        conditions.append(f"attributes.run_name = {_filter_value(name)}")
    if status is not None:
        conditions.append(f"attributes.status = {_filter_value(status)}")
    return _search_runs(experiment, " and ".join(conditions), max_results)


def _filter_key(key: str) -> str:
    """A tag name in an MLflow filter: backquoted unless a plain identifier (`mlflow.parentRunId`)."""
    return key if re.fullmatch(r"\w+", key) else f"`{key}`"


def _filter_value(value: Any) -> str:
    """A quoted value in an MLflow filter. MLflow has no escape inside quotes: a value with a single
    quote goes in double quotes (one with both kinds cannot be matched)."""
    text = str(value)
    quote = '"' if "'" in text and '"' not in text else "'"
    return f"{quote}{text}{quote}"


def _search_runs(experiment: str, filter_string: str, max_results: int) -> list:
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string, max_results=min(max_results, 1000),
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token or len(runs) >= max_results:
            return runs


def run_links(run_id: str) -> list[str]:
    """Human-readable lines: the run id, and UI links when the tracking URI is an http server."""
    uri = tracking_uri()
    lines = [f"MLflow run id: {run_id}"]
    if uri.startswith(("http://", "https://")):
        run = _client().get_run(run_id)
        base = safe_uri(uri).rstrip("/")
        exp = run.info.experiment_id
        lines.append(f"MLflow run:  {base}/#/experiments/{exp}/runs/{run_id}")
        lines.append(f"MLflow runs: {base}/#/experiments/{exp}/runs")
    else:
        lines.append(f"Open the UI: mlflow ui --backend-store-uri {safe_uri(uri)}  (then http://127.0.0.1:5000)")
    return lines
