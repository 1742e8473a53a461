"""The package's floors: every import of `landmarks` goes down (or across one floor), never up, and no
module imports another's private name. README's "Layout" draws the same map.

Read from the source with `ast` (imports inside functions count too), so it runs in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform" / "landmarks"

# Lowest first. A module may import its own floor and the floors below it.
FLOORS = [
    {"errors", "registry", "storage", "progress"},  # names, errors, paths: no torch, no Ray, no MLflow
    {"coords", "metrics", "losses", "schedules", "precision", "dist", "matching", "augment", "models"},  # pure torch
    {"config"},  # typed settings (the models' constants at most)
    {"tracking", "cluster"},  # MLflow glue, Ray glue
    {"data", "features", "probe"},  # datasets (ingest runs on Ray), the feature cache, the pretraining probe
    {"sources", "cli"},  # backbone / projector sources (run ids via tracking); the jobs' command line
    {"train", "evaluate", "predict"},  # the jobs
    {"sweep", "sweep_aggregate", "report", "demo_summary"},  # over many runs
    {"demo"},
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path], source: str | None = None
             ) -> list[tuple[str, str | None, int]]:
    """(imported landmarks module, imported name or None, line) for every import in `path` (or `source`)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("landmarks")]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.startswith("landmarks"):
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.append((sub, None, node.lineno) if sub in modules else (target, a.name, node.lineno))
    return found


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_module_has_a_floor():
    tops = {_top(m) for m in _modules()} - {""}
    assert tops <= set(FLOOR), f"modules with no floor in FLOORS: {sorted(tops - set(FLOOR))}"


def _upward(module: str, path: Path, modules: dict[str, Path], source: str | None = None) -> list[str]:
    out = []
    for target, _, line in _imports(module, path, modules, source):
        a, b = _top(module), _top(target)
        if a and b and a != b and FLOOR[b] > FLOOR[a]:
            out.append(f"{path.relative_to(ROOT.parent)}:{line} ({a}, floor {FLOOR[a]}) imports {target} "
                       f"(floor {FLOOR[b]})")
    return out


def test_imports_go_down_the_floors():
    modules = _modules()
    upward = [line for module, path in modules.items() for line in _upward(module, path, modules)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_a_private_name_of_another():
    modules = _modules()
    private = [f"{path.relative_to(ROOT.parent)}:{line} imports {name} from {target}"
               for module, path in modules.items() for target, name, line in _imports(module, path, modules)
               if name and name.startswith("_") and not name.startswith("__") and target != module]
    assert not private, "\n".join(private)


def test_the_checker_sees_an_upward_import():
    """The rule can fail: Ray glue importing the training jobs (as cluster.py once did) is reported."""
    modules = _modules()
    source = "def fit():\n    from .train.checkpoint import remove_orphan_temp_dirs\n"
    assert _upward("landmarks.cluster", ROOT / "cluster.py", modules, source) == [
        "landmarks/cluster.py:2 (cluster, floor 3) imports landmarks.train.checkpoint (floor 6)"]
    downward = "from ..cluster import join_cluster\n"  # the driver (floor 6) using the Ray glue: allowed
    assert _upward("landmarks.train.driver", ROOT / "train" / "driver.py", modules, downward) == []


# Each job implements these for itself (its command line, its run's name, its Ray Train loop): one
# interface, many implementations, not one function written twice.
PER_JOB = {"main", "run_name", "train_loop_per_worker"}


def test_no_public_function_or_class_is_defined_in_two_modules():
    where: dict[str, list[str]] = {}
    for module, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(module)
    twice = {name: mods for name, mods in where.items() if len(mods) > 1 and name not in PER_JOB}
    assert not twice, twice
