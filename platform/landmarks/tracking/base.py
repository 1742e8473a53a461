"""What every MLflow call of the platform shares: the tracking URI, the client, credentials kept out of
params and messages, and a tracking server that does not answer turned into one clear error.

    with server_errors(uri):            # MlflowException "API request to ... failed" -> TrackingUnavailable
        client.log_batch(...)
    with quick_requests():              # one attempt, no retries: marking a run after an outage
        client.set_terminated(...)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import TrackingUnavailable

SECRET_WORDS = ("secret", "password", "token", "access_key")
REDACTED = "***"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SOURCE_NAME_TAG, SOURCE_TYPE_TAG = "mlflow.source.name", "mlflow.source.type"  # the UI's Source column
# What MLflow raises once its retries are spent: connection refused or reset, a timeout, or a 5xx answer.
_UNANSWERED = re.compile(r"API request to \S+ failed with (exception|timeout exception|error code 5\d\d)")
_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)|(Read timed out|timed out|error code 5\d\d)")


def tracking_uri() -> str:
    """The tracking URI every process of a job uses (absolute, so Ray workers agree)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the value of any key that looks like a credential (secret, token, ...) replaced by ***.

    Not `storage.redact`, which scrubs credentials out of a text (URL userinfo, AWS secret values).
    """
    return {k: (REDACTED if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in params.items()}


def safe_uri(uri: str) -> str:
    """A URI with any user:password@ part removed, for messages."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri


def source_tags(job: str | None) -> dict[str, str]:
    """MLflow's source tags for a run or model of `job`: its script, jobs/<job>.py (from a Tune trial or Ray
    task too, where MLflow would name Ray's default_worker.py), else this process's script."""
    if job:
        name = f"jobs/{job}.py"
    else:
        name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "<console>"
    return {SOURCE_NAME_TAG: name, SOURCE_TYPE_TAG: "LOCAL"}


def is_unanswered(err: BaseException) -> bool:
    """Whether an MLflow error says the tracking server did not answer (after MLflow's own retries)."""
    return bool(_UNANSWERED.search(str(err)))


@contextmanager
def server_errors(uri: str) -> Iterator[None]:
    """Turn MLflow's "API request to ... failed with exception ..." (the server down, after
    MLFLOW_HTTP_REQUEST_MAX_RETRIES retries) into a one-line TrackingUnavailable naming the server."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if not is_unanswered(err):
            raise
        found = _REASON.search(str(err))
        reason = next((g for g in found.groups() if g), "no answer") if found else "no answer"
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
        raise TrackingUnavailable(f"the MLflow tracking server {safe_uri(uri)} does not answer ({reason.strip()}, "
                                  f"after {retries} retries, MLFLOW_HTTP_REQUEST_MAX_RETRIES)") from None


@contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow HTTP requests with no retries and a 10 s timeout while inside (one last try after an outage,
    instead of MLflow's minutes of backoff)."""
    with _environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
        yield


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Environment variables set while inside, then each put back as it was (set or not)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


MODEL_PACKAGES = ("torch", "numpy", "pillow", "cloudpickle", "landmarks")  # what loading a logged model imports


def model_requirements() -> list[str]:
    """Pinned pip requirements of a logged torch model, from the installed versions (MLflow adds itself).

    Given explicitly because MLflow otherwise infers them by loading the model again in a
    subprocess that records its imports: 10-15 s per logged model on a 2-core machine, for the
    same list (less pandas, which MLflow itself pulls in).
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in MODEL_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")  # 2.14.1+cu130 -> 2.14.1
        except PackageNotFoundError:  # e.g. landmarks run from a source tree without an install
            pins.append(package)
    return pins


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri`, then clear its global again and put back MLFLOW_TRACKING_URI.

    `mlflow.set_tracking_uri` also writes the environment variable and wins over it afterwards,
    so without this one job would redirect every later run in the process (Tune trials, tests).
    `set_tracking_uri(None)` (public API) clears both; the environment is then restored: the jobs and
    the tracking server are named by MLFLOW_TRACKING_URI, never by a process-wide global.
    """
    import mlflow

    with _environ(MLFLOW_TRACKING_URI=uri):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)
