"""The Ray glue, in one place: connecting (`connect`, the one call of `ray.init`), the resources of a
job's `ray.*` section checked before any work (`join_cluster`), a Ray task or a Ray Train TorchTrainer
with them (`task_options`, `fit_torch_trainer`), and whether this process is a Ray worker.

Connecting, in order: an explicit address, then `RAY_ADDRESS` (set by `ray job submit`), then the
cluster a `ray start` on this machine recorded in /tmp/ray/ray_current_cluster (only if its GCS port
still answers: a `ray start` killed with -9 leaves that file behind), else a fresh local instance
sized to the machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)


def _reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _recorded_cluster() -> str | None:
    from ray._private.utils import read_ray_address

    return read_ray_address()


def resolve_address(address: str | None = None) -> str:
    """The address `ray.init` should get: a cluster address, or 'local' for a new instance."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        return address
    recorded = _recorded_cluster()
    if recorded:
        if _reachable(recorded):
            return recorded
        warnings.warn(
            f"ignoring stale Ray cluster file (nothing answers at {recorded}; was `ray start` killed?); "
            "starting a local Ray instance instead",
            stacklevel=2,
        )
    return "local"


# MLflow's HTTP retry budget and timeout (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _TIMEOUT, ...) as set
# for the driver also hold in its Ray workers, which log to MLflow too (a cluster's workers do not inherit
# the driver's environment). Credentials are not passed this way: a runtime env shows in the dashboard.
PROPAGATED_ENV_PREFIX = "MLFLOW_HTTP_REQUEST_"


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            verbose: bool = False) -> dict:
    """Initialise Ray once per process; returns the cluster's total resources.

    Quiet by default: Ray's own INFO logs and Ray Data progress bars are shown with verbose=True. The
    driver's MLflow HTTP settings reach every worker of the job (`PROPAGATED_ENV_PREFIX`).
    """
    import ray

    if not ray.is_initialized():
        target = resolve_address(address)
        kwargs: dict = {
            "logging_level": logging.INFO if verbose else logging.WARNING,
            "log_to_driver": True,
            "ignore_reinit_error": True,
        }
        if target == "local":
            # A local instance is started for this process; size it to the machine.
            os.environ.pop("RAY_ADDRESS", None)
            # The dashboard also serves the State API that Ray Train's placement-group cleaner polls.
            kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count())
            if num_gpus is not None:
                kwargs["num_gpus"] = num_gpus
        else:
            kwargs["address"] = target
        settings = {k: v for k, v in os.environ.items() if k.startswith(PROPAGATED_ENV_PREFIX)}
        if settings:  # the job's tasks and Train workers (Ray merges this with `ray job submit`'s own env)
            kwargs["runtime_env"] = {"env_vars": settings}
        try:
            ray.init(**kwargs)
        except ConnectionError as err:
            raise UserError(f"cannot connect to the Ray cluster at {target}: {err}") from None
        _quiet_data(verbose)
    return ray.cluster_resources()


def _quiet_data(verbose: bool) -> None:
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = verbose
        ctx.print_on_execution_start = verbose
    except (ImportError, AttributeError) as err:  # an older Ray without these knobs: keep its defaults
        log.debug("could not configure Ray Data progress: %s", err)


def connected() -> bool:
    """Whether this process is connected to Ray (by `connect` or anything else)."""
    import ray

    return ray.is_initialized()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def in_ray_worker() -> bool:
    """True inside a Ray task or actor (e.g. a Tune trial): run there, do not start another task."""
    if os.environ.get("LANDMARKS_IN_PROCESS") == "1":
        return True
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    from ray._private.worker import WORKER_MODE  # no public constant; ray.get_runtime_context uses it

    return ray.get_runtime_context().worker.mode == WORKER_MODE


# ----------------------------------------------------------------------------- a job's resources


HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"


def resolve_use_gpu(use_gpu: bool | str, resources: dict[str, float]) -> bool:
    """'auto' -> True when the cluster has GPUs."""
    if use_gpu == "auto":
        return resources.get("GPU", 0) > 0
    return bool(use_gpu)


def check_resources(ray_cfg: Any, use_gpu: bool, resources: dict[str, float], what: str = "job") -> None:
    """Refuse, with a hint, a request the running cluster cannot place (instead of pending forever)."""
    if getattr(ray_cfg, "wait_for_resources", False):
        return
    workers = getattr(ray_cfg, "num_workers", 1)
    asks = [("CPU", ray_cfg.cpus_per_worker, "lower ray.num_workers / ray.cpus_per_worker, or add nodes")]
    if use_gpu:
        asks.append(("GPU", ray_cfg.gpus_per_worker, "lower ray.num_workers, set ray.use_gpu=false, or add GPU nodes"))
    for kind, per_worker, fix in asks:
        needed, has = workers * per_worker, resources.get(kind, 0)
        if needed > has:
            raise UserError(f"{what} asks for {workers} worker(s) x {per_worker:g} {kind} = {needed:g} {kind}s but "
                            f"the Ray cluster has {has:g}; {fix} (set ray.wait_for_resources=true on an autoscaling "
                            "cluster)")


def join_cluster(ray_cfg: Any, what: str, verbose: bool = False) -> bool:
    """Connect to Ray (landmarks.cluster.connect), check it can hold the job's workers -> use_gpu."""
    resources = connect(verbose=verbose)
    use_gpu = resolve_use_gpu(ray_cfg.use_gpu, resources)
    check_resources(ray_cfg, use_gpu, resources, what)
    return use_gpu


def scaling_config(ray_cfg: Any, use_gpu: bool):
    from ray.train import ScalingConfig

    resources = {"CPU": ray_cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker
    return ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources)


def task_options(ray_cfg: Any, use_gpu: bool) -> dict[str, float]:
    """Options for a single Ray task running a whole (evaluation) job."""
    opts = {"num_cpus": ray_cfg.cpus_per_worker}
    if use_gpu:
        opts["num_gpus"] = ray_cfg.gpus_per_worker
    return opts


def _run_worker(loop: Callable[[dict], None], verbose: bool, config: dict[str, Any]) -> None:
    """A Train worker: unless `verbose`, hide the "Reporting training result ..." line that Ray 2.60
    logs at INFO per report and worker through a logger named after its file (so the `ray.train`
    level misses it), and the traceback Ray logs for a UserError (the driver says it in one line,
    `fit_torch_trainer`); then run the job's loop."""
    if not verbose:
        try:
            from ray.train.v2._internal import util
            from ray.train.v2._internal.execution import context
        except ImportError:  # another Ray layout: its lines show, nothing else changes
            pass
        else:
            logging.getLogger(context.__file__).setLevel(logging.WARNING)
            logging.getLogger(util.__name__).addFilter(_NotUserError())
    loop(config)


class _NotUserError(logging.Filter):
    """Drops a log record made while a UserError is being handled (Ray's "Error in training function")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], UserError)


ABORT_TIMEOUT_S = 60.0  # how long Ctrl-C waits for Ray Train to stop its workers


@contextlib.contextmanager
def sigint_handler(handler: Any = signal.default_int_handler) -> Iterator[None]:
    """Ctrl-C handled by `handler` (default: Python's KeyboardInterrupt) while the block runs, the previous
    handler back after it. Ray Tune and Ray Train install their own handlers and may leave them behind in a
    process that runs several jobs (a notebook, a test session): a job's Ctrl-C must not depend on what ran
    before it. A no-op outside the main thread, where Python allows no handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _interruptible(trainer_cls: type) -> type:
    """`trainer_cls` whose fit() raises KeyboardInterrupt on Ctrl-C once its workers are stopped.

    Ray Train V2 installs its own SIGINT handler in the driver while fit() runs (in the main thread:
    `DataParallelTrainer._register_sigint_handler`); it aborts the controller and then calls
    sys.exit(0), so the job never sees the KeyboardInterrupt it waits for: no line, exit status 1, its
    MLflow run left RUNNING. This handler aborts the same way (the controller stops the worker group
    and exits), then raises KeyboardInterrupt in the driver. A second Ctrl-C while it waits interrupts
    the wait.
    """
    import ray

    class Interruptible(trainer_cls):
        def _register_sigint_handler(self, controller: Any) -> None:
            def on_sigint(signum: int, frame: Any) -> None:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                try:
                    ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pass  # the controller exits as it aborts: its death is the answer
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)

    return Interruptible


def _worker_user_error(err: BaseException) -> UserError | None:
    """The UserError a Train worker raised (e.g. the tracking server did not answer), if that ended the run.
    Ray wraps it (WorkerGroupError.worker_failures -> UserExceptionWithTraceback)."""
    for failure in (getattr(err, "worker_failures", None) or {}).values():
        for candidate in (failure, getattr(failure, "_base_exc", None), getattr(failure, "__cause__", None)):
            if isinstance(candidate, UserError):
                return candidate
    return None


def fit_torch_trainer(loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: Any, name: str, use_gpu: bool,
                      datasets: dict[str, Any], what: str, verbose: bool = False):
    """Run `loop` as a Ray Train TorchTrainer with the job's scaling (cfg.ray), checkpoint storage and
    retention (cfg.checkpoint) and failure policy (cfg.max_failures) -> ray.train.Result.

    A worker's error reaches the user as one line, "<what> failed: <the cause>" (a UserError the worker
    raised keeps its class). Ctrl-C stops the workers and raises KeyboardInterrupt (`_interruptible`).
    Ray Train's own INFO lines (worker group started, checkpoint created, results reported) are shown
    only with `verbose`; the ray-train-*.log files of the session keep the first two either way.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from .storage import absolute_storage

    # The controller polls its workers at this interval (Ray 2.60: 2 s) and needs two polls to see
    # the end of training: 0.5 s makes every fit return ~3 s sooner and notices a lost worker sooner,
    # for a few more tiny actor calls a second. An explicit setting wins.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)

    trainer = _interruptible(TorchTrainer)(
        functools.partial(_run_worker, loop, verbose),
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.ray, use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=absolute_storage(cfg.checkpoint.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
        datasets=datasets,
    )
    try:
        with sigint_handler():  # Ray leaves its handler (or ours) installed after fit()
            return trainer.fit()
    except TrainingFailedError as err:  # Ray wraps worker errors; surface the cause in one line
        cause = _worker_user_error(err)
        if cause is not None:
            raise type(cause)(f"{what} failed: {cause}") from err
        raise UserError(f"{what} failed: {str(err).strip().splitlines()[-1]}") from err


def run_task(fn: Callable[..., Any], args: tuple, ray_cfg: Any, what: str, verbose: bool = False) -> Any:
    """`fn(*args)` as one Ray task with the resources of `ray_cfg` (`task_options`) -> its result.

    A `UserError` raised in the task reaches the caller as itself (one line, no Ray traceback);
    Ctrl-C cancels the task.
    """
    import ray

    use_gpu = join_cluster(ray_cfg, what, verbose)
    ref = ray.remote(max_retries=0, **task_options(ray_cfg, use_gpu))(fn).remote(*args)
    try:
        with sigint_handler():
            return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise


def map_tasks(fn: Callable[..., Any], calls: Iterable[tuple[Any, tuple]], shared: tuple = (),
              num_cpus: float = 1, per_cpu: int = 2,
              passthrough: tuple[type[BaseException], ...] = (UserError,),
              verbose: bool = False) -> Iterator[tuple[Any, Any]]:
    """`fn(*shared, *args)` as one Ray task of `num_cpus` CPUs per `(key, args)` of `calls`; yields
    `(key, result)` as each task finishes (in no fixed order), e.g. ingest's one task per shard.

    Connects first (`connect`). `shared` (e.g. a converter) goes into the object store once for
    all tasks. At most `per_cpu` tasks per cluster CPU (at least 2) are submitted at a time, and
    `calls` is read only as tasks are submitted. An exception of a `passthrough` type raised in a
    task is raised here as itself (one line, no Ray traceback). The tasks still running are
    cancelled when the generator ends early: on an error, Ctrl-C, or `close()`; iterate it inside
    `with contextlib.closing(map_tasks(...)) as results:` so that an error in the loop's body
    cancels them at once too.
    """
    import ray

    resources = connect(verbose=verbose)
    remote = ray.remote(num_cpus=num_cpus)(fn)
    shared_refs = [ray.put(value) for value in shared]
    in_flight = max(2, per_cpu * int(resources.get("CPU", 1)))
    todo, pending, submitting = iter(calls), {}, True
    try:
        while True:
            while submitting and len(pending) < in_flight:
                call = next(todo, None)
                if call is None:
                    submitting = False
                else:
                    key, args = call
                    pending[remote.remote(*shared_refs, *args)] = key
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, passthrough):
                        raise cause from None
                    raise
                yield key, result
    finally:
        for ref in pending:
            ray.cancel(ref)
