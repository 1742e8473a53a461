"""Ray Tune grids over any job's config keys: one Tune trial, one job run, one nested MLflow run.

    python jobs/sweep.py --config jobs/configs/sweep_budget_synthetic_cpu.yaml data.path=data/faces

A sweep names a job of `landmarks.registry.JOBS`, a preset of that job (`base_config`,
found next to the sweep preset or from the working directory) plus `overrides`, and a `grid`
of dotted keys of the job's config. The Tuner's trainable is a *driver function* (the Ray
Train V2 + Tune pattern): it builds the job config with `with_overrides`, names the run
deterministically from its grid point (`<sweep>_annotations=10_repeat=2`: a job that keeps Ray
Train checkpoints under its run name resumes them), and calls the job's `run(cfg, args)` in
the trial's process, so a job that scales out with Ray Train starts its own workers from there.

MLflow: one parent run per sweep in `mlflow.experiment`; every trial's job run goes to the
same experiment and is tagged `mlflow.parentRunId` (plus `sweep`, `sweep_cell`,
`sweep_trial_id`), so the UI nests it. We do not use `ray.air.integrations.mlflow`: its
`MLflowLoggerCallback` opens a second run per trial on the driver (beside the job's own run,
and again after a restore since its trial->run map is not saved), and `setup_mlflow` binds
the fluent API's global active run in the trial process, which the jobs deliberately avoid
(see `landmarks.tracking`). The aggregate (mean +- std over `repeat_key` per grid cell, and
the best cell) is logged to the parent by `landmarks.sweep_aggregate`.

Interrupting (Ctrl-C) and rerunning the same command restores the Tune experiment under
`storage_path/name`: finished trials are kept, unfinished ones run, failed ones rerun when
`retry_failed`. A failing trial does not stop the others; the sweep exits 0 if any trial
finished, and non-zero when all of them failed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from . import tracking
from .cli import JobArgs, build_parser, print_summary, setup_logging
from .config import (
    Section,
    build_config,
    flatten,
    load_config,
    parse_override,
    read_preset,
    set_dotted,
    valid_keys,
    with_overrides,
)
from .errors import ConfigError, UserError
from .progress import write_metrics
from .registry import METRIC_GOALS
from .sweep_aggregate import (
    adopt_failed_runs,
    cell_label,
    close_stale_runs,
    finish_sweep,
    finished_run,
    open_parent_run,
    trial_outcome,
)

SAFE_NAME = re.compile(r"[\w.=+-]+")
SET_BY_SWEEP = ("mlflow.experiment", "mlflow.run_name")


class TrialResources(Section):
    cpu: float = Field(1.0, ge=0.0, description="CPUs held by each trial's driver function")
    gpu: float = Field(0.0, ge=0.0, description="GPUs per trial; a fraction (0.25) packs trials on a GPU")

    @model_validator(mode="after")
    def _not_empty(self):
        if self.cpu == 0 and self.gpu == 0:
            raise ValueError("Tune cannot place a trial that asks for nothing; give it e.g. cpu: 0.1")
        return self


class SweepMlflow(Section):
    experiment: str = "sweeps"
    run_name: str | None = Field(None, description="name of the parent run (default: the sweep name)")


class SweepConfig(Section):
    """A Tune grid over the config keys of one job (see the module doc)."""

    job: str = Field(..., description="a job of landmarks.registry.JOBS")
    base_config: str | None = Field(None, description="preset of that job (jobs/configs/<job>_*.yaml)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted job keys set in every trial")
    grid: dict[str, list[Any]] = Field(..., description="dotted job key -> values; trials = product")
    repeat_key: str = Field("repeat", description="grid key averaged over in the aggregate")
    metric: str | None = Field(None, description="default: the job's headline metric (iod, pck, iou, loss...)")
    mode: Literal["min", "max"] | None = None
    max_concurrent: int = Field(0, ge=0, description="at most this many trials at once; 0: as resources allow")
    resources_per_trial: TrialResources = TrialResources()
    max_failures: int = Field(0, ge=0, description="retries of a failing trial within one run")
    retry_failed: bool = Field(True, description="on resume, rerun trials that failed before")
    wait_for_resources: bool = Field(False, description="do not refuse trials larger than the cluster now")
    mlflow: SweepMlflow = SweepMlflow()
    name: str | None = Field(None, description="sweep name (default: the preset's file name)")
    storage_path: str = Field("runs/tune", description="Tune storage: local dir or s3:// URI")
    resume: bool | Literal["auto"] = Field("auto", description="auto: restore when storage_path/name exists")
    register_model: str | None = Field(None, description="register the best trial's model under this name "
                                                         "(alias best) in the MLflow Model Registry")

    @field_validator("job")
    @classmethod
    def _known_job(cls, job: str) -> str:
        from .registry import JOBS, NOT_SWEPT

        if job not in JOBS or job in NOT_SWEPT:
            raise ValueError(f"unknown job {job!r}; valid jobs: {', '.join(j for j in JOBS if j not in NOT_SWEPT)}")
        return job

    @model_validator(mode="after")
    def _registrable(self) -> SweepConfig:
        from .registry import MODEL_TASKS

        if self.register_model and self.job not in MODEL_TASKS:
            raise ValueError(f"register_model={self.register_model!r}: a {self.job} run logs no model; jobs that do: "
                             f"{', '.join(MODEL_TASKS)}")
        return self

    @field_validator("overrides", "grid", mode="before")
    @classmethod
    def _flat(cls, tree: Any, info: Any) -> Any:
        if not isinstance(tree, dict):
            return tree
        tree = flatten(tree)
        if info.field_name == "grid" and not tree:
            raise ValueError("the grid is empty: give at least one key, e.g. grid: {train.lr: [0.01, 0.001]}")
        for key, values in tree.items() if info.field_name == "grid" else ():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key} must be a non-empty list of values, got {values!r}")
        return tree

    @field_validator("name")
    @classmethod
    def _safe(cls, name: str | None) -> str | None:
        if name is not None and not SAFE_NAME.fullmatch(name):
            raise ValueError(f"name {name!r} may only hold letters, digits and . _ - = + (it names a directory)")
        return name

    @model_validator(mode="after")
    def _metric_mode(self):
        if self.metric and self.mode is None and self.metric not in METRIC_GOALS:
            raise ValueError(f"metric {self.metric!r} has no default mode; set mode: min or mode: max")
        return self


# ---------------------------------------------------------------------------------------------
# Loading: a sweep preset + key=value, where keys the sweep does not have go to the job


def load_sweep(path: str | Path | None, overrides: list[str] = ()) -> SweepConfig:
    """Sweep preset + overrides. `grid.<key>=[..]` sets a grid axis, `overrides.<key>=v` or a
    plain job key (`data.path=...`) a job override; sweep keys win where both have one."""
    tree = read_preset(path) if path else {}
    sweep_keys = set(valid_keys(SweepConfig))
    job_overrides: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        if key in sweep_keys:
            set_dotted(tree, key, value)
        elif key.startswith("grid."):
            tree.setdefault("grid", {})[key[len("grid."):]] = value
        else:
            job_overrides[key.removeprefix("overrides.")] = value
    if job_overrides:
        tree["overrides"] = {**flatten(tree.get("overrides") or {}), **job_overrides}
    if path:
        tree.setdefault("name", Path(path).stem)
        base = tree.get("base_config")
        if base and not Path(base).is_absolute() and (Path(path).parent / base).is_file():
            tree["base_config"] = str(Path(path).parent / base)
    return build_config(SweepConfig, tree, str(path) if path else "sweep config")


# ---------------------------------------------------------------------------------------------
# The plan: everything checked before a trial starts


@dataclass
class SweepPlan:
    cfg: SweepConfig
    name: str
    job_cls: type
    run_fn: Callable
    base: Any  # the job config every trial starts from
    keys: list[str]
    points: list[dict[str, Any]]
    run_names: dict[str, str]  # point id -> MLflow run name
    exp_dir: str

    @property
    def spec_hash(self) -> str:
        """What Tune cannot change on resume: the job and the grid."""
        text = json.dumps({"job": self.cfg.job, "grid": self.cfg.grid}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def point_id(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def trial_run_name(sweep: str, point: dict[str, Any]) -> str:
    """'<sweep>_lr=0.01_annotations=10_repeat=2': leaf key names (full keys where two leaves clash)."""
    leaves = [k.split(".")[-1] for k in point]
    parts = []
    for key, value in point.items():
        label = key.split(".")[-1] if leaves.count(key.split(".")[-1]) == 1 else key
        parts.append(f"{label}=" + re.sub(r"[^\w.+-]", "-", str(value)))
    return "_".join([sweep, *parts])


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Resolve the job, build the base config and every grid point; ConfigError on any bad key/value."""
    from .registry import config_class, run_function
    from .storage import absolute_storage

    name = cfg.name or f"sweep-{cfg.job}"
    try:
        job_cls, run_fn = config_class(cfg.job), run_function(cfg.job)
    except (ImportError, AttributeError) as err:
        raise UserError(f"job {cfg.job!r} cannot be loaded ({err}); is it installed in this version?") from None
    base = load_config(job_cls, cfg.base_config) if cfg.base_config else job_cls()
    keys = valid_keys(job_cls)
    for key in cfg.overrides:
        if key not in keys:
            raise ConfigError(f"sweep overrides: unknown key '{key}' for job {cfg.job}; valid keys: {', '.join(keys)}")
    base = with_overrides(base, cfg.overrides)
    for key in cfg.grid:
        if key not in keys:
            raise ConfigError(f"grid: unknown key '{key}' for job {cfg.job}; valid keys: {', '.join(keys)}")
        if key in SET_BY_SWEEP:
            raise ConfigError(f"grid: '{key}' is set by the sweep itself; grid over other keys")
    grid_keys = list(cfg.grid)
    points = [dict(zip(grid_keys, values)) for values in itertools.product(*cfg.grid.values())]
    run_names: dict[str, str] = {}
    for point in points:
        try:
            with_overrides(base, point)
        except ConfigError as err:
            raise ConfigError(f"grid point {point}: {err}") from None
        run_names[point_id(point)] = trial_run_name(name, point)
    if len(set(run_names.values())) != len(points):
        raise ConfigError("grid: two grid points give the same run name (values equal as text?); make them distinct")
    storage = absolute_storage(cfg.storage_path)
    exp_dir = f"{storage.rstrip('/')}/{name}"
    return SweepPlan(cfg, name, job_cls, run_fn, base, grid_keys, points, run_names, exp_dir)


# ---------------------------------------------------------------------------------------------
# The trainable: runs in a Tune trial process


def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune function trainable: one grid point -> the job's run function, in this process."""
    from ray import tune

    os.environ["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]
    if os.path.isdir(spec["cwd"]):  # relative paths in presets mean the driver's working directory
        os.chdir(spec["cwd"])
    point = {k: config[k] for k in spec["keys"]}
    run_name = spec["run_names"][point_id(point)]
    cfg = with_overrides(spec["job_cls"].model_validate(spec["base"]),
                         {**point, "mlflow.experiment": spec["experiment"], "mlflow.run_name": run_name})
    tags = {tracking.PARENT_RUN_TAG: spec["parent_run_id"], "sweep": spec["name"],
            "sweep_cell": cell_label(point, spec["repeat_key"]), "sweep_trial_id": tune.get_context().get_trial_id()}
    previous = finished_run(spec["experiment"], run_name, spec["parent_start_ms"])
    if previous is not None:  # the job finished, but an interruption came before Tune recorded it
        tracking.RunLogger(previous.info.run_id).set_tags(tags)
        tune.report({**previous.data.metrics, "mlflow_run_id": previous.info.run_id})
        return
    close_stale_runs(spec["experiment"], run_name, tags)
    started = int(time.time() * 1000)
    try:
        metrics = spec["run_fn"](cfg, JobArgs(spec["config_path"], None, spec["verbose"]))
    except BaseException as err:
        adopt_failed_runs(spec["experiment"], run_name, started, tags, f"{type(err).__name__}: {err}")
        raise
    run_id = metrics.get("mlflow_run_id")
    if run_id:
        tracking.RunLogger(run_id).set_tags(tags)
    report = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**report, "mlflow_run_id": run_id or ""})


# ---------------------------------------------------------------------------------------------
# The driver


def run_sweep(cfg: SweepConfig, args: JobArgs) -> dict[str, Any]:
    from ray import tune

    from .cluster import connect, sigint_handler

    plan = plan_sweep(cfg)
    restoring = _should_restore(cfg, plan)
    resources = connect(verbose=args.verbose)
    _check_trial_resources(cfg, resources)
    params = cfg.model_dump(mode="json")
    params["grid"] = {k: json.dumps(v) for k, v in params["grid"].items()}
    parent = open_parent_run(cfg.mlflow.experiment, cfg.mlflow.run_name or plan.name, restoring, params, {
        "job": "sweep", "sweep": plan.name, "sweep_job": cfg.job, "sweep_path": plan.exp_dir,
        "sweep_spec": plan.spec_hash, "sweep_trials": len(plan.points)})
    print(f"[sweep] {plan.name}: {len(plan.points)} trials of {cfg.job} over {', '.join(plan.keys)}"
          f"{' (resuming)' if restoring else ''}; Tune dir {plan.exp_dir}", flush=True)

    spec = {
        "job_cls": plan.job_cls, "run_fn": plan.run_fn, "base": plan.base.model_dump(mode="json"),
        "keys": plan.keys, "run_names": plan.run_names, "name": plan.name, "repeat_key": cfg.repeat_key,
        "experiment": cfg.mlflow.experiment, "parent_run_id": parent.run_id, "tracking_uri": tracking.tracking_uri(),
        "parent_start_ms": tracking.get_run(parent.run_id).info.start_time,
        "cwd": os.getcwd(), "config_path": cfg.base_config, "verbose": args.verbose,
    }
    res = {"cpu": cfg.resources_per_trial.cpu, "gpu": cfg.resources_per_trial.gpu}
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), res)
    # Trials must see the driver's working directory (relative data paths, the local MLflow store).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    try:
        if restoring:
            tuner = tune.Tuner.restore(plan.exp_dir, trainable, restart_errored=cfg.retry_failed)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={k: tune.grid_search(v) for k, v in cfg.grid.items()},
                # A trial keeps no state between runs (the job builds all from its config), so one
                # process runs trial after trial instead of importing torch and MLflow for each.
                tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent or None, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=plan.name, storage_path=plan.exp_dir.rsplit("/", 1)[0],
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    verbose=2 if args.verbose else 1,
                ),
            )
        with sigint_handler(signal.getsignal(signal.SIGINT) or signal.default_int_handler):
            grid = tuner.fit()  # Tune installs its own Ctrl-C handler; ours is back after it
    except BaseException:
        parent.finish("KILLED")
        raise
    # A trial reports once, at its end; one without that report or an error was cut off (Ctrl-C, SIGTERM).
    if any(r.error is None and "mlflow_run_id" not in (r.metrics or {}) for r in grid):
        parent.finish("KILLED")
        raise KeyboardInterrupt
    points = {point_id(p): i for i, p in enumerate(plan.points)}
    outcomes = [trial_outcome(r, {k: r.config.get(k) for k in plan.keys}) for r in grid]
    for o in outcomes:
        o.run_name = plan.run_names[point_id(o.point)]
    outcomes.sort(key=lambda o: points[point_id(o.point)])
    metrics = finish_sweep(plan.name, cfg, outcomes, parent, job=cfg.job)
    if cfg.register_model and metrics.get("best_run_id"):
        version = tracking.register_model(metrics["best_run_id"], cfg.register_model, alias="best")
        metrics["registered"] = f"{cfg.register_model}/{version}"
        parent.set_tags({"registered_model": metrics["registered"]})
        print(f"[sweep] registered the best trial's model as models:/{cfg.register_model}/{version} "
              f"(models:/{cfg.register_model}@best)", flush=True)
    print_summary("sweep", {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return metrics


def _should_restore(cfg: SweepConfig, plan: SweepPlan) -> bool:
    from ray.tune import Tuner

    exists = Tuner.can_restore(plan.exp_dir)
    if cfg.resume is True and not exists:
        raise UserError(f"resume=true but there is no Tune experiment to restore at {plan.exp_dir}")
    if cfg.resume is False and exists:
        raise UserError(f"{plan.exp_dir} already holds this sweep; rerun with resume=auto to continue it, "
                        "or delete the directory / choose another name to start over")
    return exists


def _check_trial_resources(cfg: SweepConfig, resources: dict[str, float]) -> None:
    want = cfg.resources_per_trial
    for kind, need, have in (("CPU", want.cpu, resources.get("CPU", 0)), ("GPU", want.gpu, resources.get("GPU", 0))):
        if need > have and not cfg.wait_for_resources:
            raise UserError(f"resources_per_trial.{kind.lower()}={need:g} but the Ray cluster has {have:g} {kind}; "
                            f"lower it, or set wait_for_resources=true on an autoscaling cluster")


# ---------------------------------------------------------------------------------------------
# Command line


def sweep_main(description: str | None = None, argv: list[str] | None = None) -> int:
    """`python jobs/sweep.py --config PRESET [key=value ...] [--metrics-out PATH]`."""
    parser = build_parser(description, SweepConfig)
    parser.epilog = ("sweep keys: " + ", ".join(valid_keys(SweepConfig)) +
                     "; grid.<job key>=[v1,v2] sets a grid axis; any other key=value overrides the job's config")
    parser.add_argument("--register", metavar="NAME", help="register the best trial's model under NAME (alias best)")
    ns = parser.parse_args(argv)
    if ns.register:
        ns.overrides.append(f"register_model={ns.register}")
    setup_logging(ns.verbose)
    args = JobArgs(ns.config, ns.metrics_out, ns.verbose)
    try:
        metrics = run_sweep(load_sweep(ns.config, ns.overrides), args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume the sweep", file=sys.stderr, flush=True)
        return 130
    write_metrics(args.metrics_out, metrics)
    return 0
