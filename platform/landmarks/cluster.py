"""Connecting to Ray: the one place that calls `ray.init`.

Order: an explicit address, then `RAY_ADDRESS` (set by `ray job submit`), then the
cluster a `ray start` on this machine recorded in /tmp/ray/ray_current_cluster (only
if its GCS port still answers: a `ray start` killed with -9 leaves that file behind),
else a fresh local instance sized to the machine.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings

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


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            verbose: bool = False) -> dict:
    """Initialise Ray once per process; returns the cluster's total resources.

    Quiet by default: Ray's own INFO logs and Ray Data progress bars are shown with verbose=True.
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
        try:
            ray.init(**kwargs)
        except ConnectionError as err:
            from .errors import UserError

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


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def connected() -> bool:
    """Whether this process is connected to Ray (by `connect` or anything else)."""
    import ray

    return ray.is_initialized()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def is_interactive() -> bool:
    return sys.stderr.isatty()
