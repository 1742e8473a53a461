"""The command line of every script in jobs/: `main(name)` runs the registered job or command.

    sys.exit(main("regress", __doc__))     # jobs/regress.py

A job (`registry.JOBS`) takes `--config PRESET [key=value ...] [--metrics-out PATH] [--verbose]`
(`job_main`); a command (`registry.COMMANDS`: ingest, sweep, report, demo) parses its own arguments.

`run(cfg, args)` returns the final metrics dict (with `mlflow_run_id`). User errors
(`landmarks.errors.UserError`) become one line on stderr and a non-zero exit code:
2 for config errors, 1 for other bad input; never a traceback. Ctrl-C is one line,
"interrupted: <what stopped, how to resume>" (`landmarks.errors.Interrupted`), and exit code 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import load_config, valid_keys
from .errors import UserError
from .progress import write_metrics

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


@dataclass
class JobArgs:
    config_path: str | None
    metrics_out: str | None
    verbose: bool


@dataclass(frozen=True)
class Shorthand:
    """A job's own flag for a config key: `--overlays N` is `output.overlays=N`; a flag without a value
    (`metavar=None`) sets `value` (`--skip-bad` is `input.skip_bad=true`)."""

    flag: str
    key: str
    help: str
    metavar: str | None = None
    value: str = "true"


def build_parser(description: str | None, config_cls: type,
                 shorthands: tuple[Shorthand, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(description or "").strip().splitlines()[0] if description else None,
        epilog="keys: " + ", ".join(valid_keys(config_cls)),
    )
    parser.add_argument("--config", help="YAML preset (jobs/configs/*.yaml)")
    parser.add_argument("--metrics-out", help="write the final metrics as one JSON object here")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and MLflow's own logs")
    for short in shorthands:
        kind = {"metavar": short.metavar} if short.metavar else {"action": "store_true"}
        parser.add_argument(short.flag, help=f"{short.help} (= {short.key}={short.metavar or short.value})",
                            dest=_dest(short), **kind)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=0.01")
    return parser


def _dest(short: Shorthand) -> str:
    return "shorthand_" + short.flag.lstrip("-").replace("-", "_")


def _shorthand_overrides(ns: argparse.Namespace, shorthands: tuple[Shorthand, ...]) -> list[str]:
    """The `key=value` overrides the shorthand flags given stand for."""
    out = []
    for short in shorthands:
        given = getattr(ns, _dest(short))
        if given not in (None, False):
            out.append(f"{short.key}={given if short.metavar else short.value}")
    return out


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # MLflow sets its own loggers to this level when it is imported (after us).
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for noisy in ("mlflow", "alembic", "ray", "urllib3", "botocore"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")


def job_main(config_cls: type, run: Callable[[Any, JobArgs], dict], description: str | None = None,
             argv: list[str] | None = None, shorthands: tuple[Shorthand, ...] = ()) -> int:
    parser = build_parser(description, config_cls, shorthands)
    ns = parser.parse_intermixed_args(argv)  # flags between the key=value overrides too
    setup_logging(ns.verbose)
    args = JobArgs(ns.config, ns.metrics_out, ns.verbose)
    try:
        cfg = load_config(config_cls, ns.config, [*ns.overrides, *_shorthand_overrides(ns, shorthands)])
        metrics = run(cfg, args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt as err:  # `Interrupted` says what stopped and how to resume
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT
    write_metrics(args.metrics_out, metrics)
    return 0


def main(name: str, description: str | None = None, argv: list[str] | None = None) -> int:
    """Run job or command `name` of the registry with `argv` (default: sys.argv[1:]) -> exit code."""
    from . import registry

    if name in registry.COMMANDS:
        return registry.command(name)(argv=argv)
    return job_main(registry.config_class(name), registry.run_function(name), description, argv)


def print_summary(title: str, metrics: dict[str, Any]) -> None:
    """The last lines of a job: its headline numbers, then the MLflow run and links."""
    from .tracking import run_links

    shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in metrics.items() if k != "mlflow_run_id")
    print(f"{title}: {shown}", flush=True)
    if metrics.get("mlflow_run_id"):
        for line in run_links(metrics["mlflow_run_id"]):
            print(line, flush=True)
