"""`RunLogger`: every write to one MLflow run, from the driver or from rank 0 of a Ray Train job.

    logger = RunLogger(run_id, enabled=rank == 0, uri=uri)
    logger.log_metrics({"loss": 0.3}, step=40)
    with logger.ending("pretraining", rerun="rerun with mlflow.run_name=x to resume"):
        ...                    # Ctrl-C: the run KILLED, `Interrupted`; an error: FAILED, the error re-raised

A tracking server that does not answer (after MLflow's retries) is a one-line `TrackingUnavailable`
naming it, from any call here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config.base import flatten
from ..errors import Interrupted, TrackingUnavailable
from .base import (
    client,
    fluent_tracking_uri,
    model_requirements,
    quick_requests,
    redact_params,
    safe_uri,
    server_errors,
    source_tags,
)
from .base import tracking_uri as default_uri


def _answers(method: Callable) -> Callable:
    """A RunLogger method whose MLflow calls raise TrackingUnavailable when the server does not answer."""

    @functools.wraps(method)
    def wrapper(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
        with server_errors(self.uri):
            return method(self, *args, **kwargs)

    return wrapper


class RunLogger:
    """Logs to one MLflow run. Disabled (all calls no-ops) where `enabled` is False, e.g. rank != 0."""

    def __init__(self, run_id: str | None, enabled: bool = True, uri: str | None = None):
        self.run_id = run_id
        self.enabled = bool(enabled and run_id)
        self.uri = uri or default_uri()
        self._client = client(self.uri) if self.enabled else None
        self._logged: dict[str, int] = {}  # metric -> last step an earlier attempt logged (skip_logged_steps)

    @_answers
    def log_params(self, params: dict[str, Any]) -> None:
        """Log (flattened, redacted) params; on a resumed run, params already there are skipped."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        flat = redact_params(flatten(params))
        new = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):
            self._client.log_batch(self.run_id, params=new[i : i + 100])

    @_answers
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), step or 0
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and step > self._logged.get(k, -1)]
        if items:
            self._client.log_batch(self.run_id, metrics=items)

    @_answers
    def skip_logged_steps(self) -> None:
        """When training resumes from a checkpoint: from now on, a metric's points at steps the run already
        has are not logged again. An attempt cut off after its last checkpoint (Ctrl-C, a lost worker) logged
        the steps between that checkpoint and where it stopped; the resumed attempt redoes them, and each
        step keeps the first attempt's point instead of two (MLflow cannot delete or replace a point)."""
        if not self.enabled:
            return
        keys = self._client.get_run(self.run_id).data.metrics
        self._logged = {k: max((m.step for m in self._client.get_metric_history(self.run_id, k)), default=-1)
                        for k in keys}

    @_answers
    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in redact_params(tags).items() if v is not None]
        if items:
            self._client.log_batch(self.run_id, tags=items)

    @_answers
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            path = Path(path)
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    @_answers
    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.enabled:
            self._client.log_dict(self.run_id, data, artifact_file)

    @_answers
    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.enabled:
            self._client.log_figure(self.run_id, figure, artifact_file)

    @_answers
    def log_torch_model(self, model: Any, name: str = "model", job: str | None = None) -> None:
        """An `mlflow.pytorch` model in this run (loadable with mlflow.pytorch.load_model), its source the
        script of `job` (default: the run's "job" tag)."""
        if not self.enabled:
            return
        import mlflow
        import mlflow.pytorch

        job = job or self._client.get_run(self.run_id).data.tags.get("job")
        with fluent_tracking_uri(self.uri), \
                mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            # "pickle": loadable wherever `landmarks` is installed; "pt2" would need an input example
            # and a torch.export trace of every model we log.
            mlflow.pytorch.log_model(model, name=name, serialization_format="pickle",
                                     pip_requirements=model_requirements(), tags=source_tags(job))

    @_answers
    def log_landmark_model(self, directory: Path) -> str:
        """A trained model's directory (`models.artifact.save_model`) as this run's pyfunc model, named by
        what it is (`models.model_name`) and loadable as the run's "model" (`tracking.models`) -> its name."""
        if not self.enabled:
            return ""
        import mlflow

        from .models import log_landmark_model

        with fluent_tracking_uri(self.uri), \
                mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            return log_landmark_model(directory, model_requirements(), self.run_id)

    @_answers
    def log_dataset(self, manifest: Any, path: str, split: str, context: str) -> None:
        """One split of an ingested dataset as an input of this run (the UI's Dataset column)."""
        if self.enabled:
            from .models import dataset_input

            self._client.log_inputs(self.run_id, datasets=[dataset_input(manifest, path, split, context)])

    @_answers
    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._client.set_terminated(self.run_id, status=status)

    def fail(self, message: str, status: str = "FAILED") -> bool:
        """Mark the run FAILED (or `status`) with a one-line error tag; one quick try, no retries -> whether
        the server took it (after an outage it may still be down: the run then stays RUNNING)."""
        if not self.enabled:
            return True
        try:
            with quick_requests():
                self.set_tags({"error": message[:5000]})
                self.finish(status)
        except Exception:  # noqa: BLE001 (best effort: the error that ended the job is the one to report)
            return False
        return True

    @contextmanager
    def ending(self, what: str, rerun: str = "") -> Iterator[None]:
        """End the run if the block does not finish: on Ctrl-C mark it KILLED and raise `Interrupted` saying
        so (and `rerun`, how to resume); on a tracking server that does not answer, say that a rerun
        resumes; on any other error mark it FAILED and raise the error again."""
        try:
            yield
        except KeyboardInterrupt:
            done = self.fail("interrupted (Ctrl-C)", status="KILLED")
            where = f"MLflow run {self.run_id}"
            state = (f"{where} marked KILLED" if done else
                     f"{where} not marked KILLED (the tracking server {safe_uri(self.uri)} does not answer)")
            raise Interrupted(f"{what} stopped; {state}" + (f"; {rerun}" if rerun else "")) from None
        except TrackingUnavailable as err:
            state = "marked FAILED" if self.fail(str(err)) else "left RUNNING"
            hint = f"; MLflow run {self.run_id} {state}" + (f"; once the server answers, {rerun}" if rerun else "")
            raise TrackingUnavailable(f"{err}{hint}") from None
        except BaseException as err:
            self.fail(f"{type(err).__name__}: {err}")
            raise
