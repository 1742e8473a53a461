"""The paper's tables with our numbers beside theirs (Tables 1, 3-9 of the paper / supplement).

Each table is a `TableSpec`: its key columns (the setting: init, backbone, representation,
dimension, budget, ...), which of our runs belong to it, and how to read the paper's CSV
(`landmarks/resources/paper_results`). Our runs are grouped by (key, dataset, metric) into
mean, sample std and count over repeats; a group sits beside the paper's number whose setting
it matches, with the difference ours - paper. Paper rows we have not run keep an empty "ours";
our rows with no paper counterpart (another backbone, the synthetic faces) keep an empty "paper".

    results = build_tables(load_records(["regress"]))
    write_tables(results, Path("report/tables"))   # <name>.csv (long) and <name>.md (wide, paper-like)
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..registry import METRIC_GOALS
from .runs import HYPERCOLUMN_DIMS, RunRecord

FACES = ("mafl", "aflw_m", "aflw_r", "300w")
LABELS = {"iod": "IOD %", "pck": "PCK %", "iou": "IoU", "match_same_px": "same id px", "match_diff_px": "diff id px",
          "iod_best_on_test": "IOD % best epoch on test"}
LOWER_IS_BETTER = {metric: goal == "min" for metric, goal in METRIC_GOALS.items()}
METHOD_INIT = {"ours": "ours", "ours_proj": "ours", "contrastive": "ours", "none": "random", "dve": "dve"}


@dataclass
class PaperCell:
    key: dict[str, str]  # the setting as the table shows it
    match: dict[str, str]  # the part of it our group must equal
    dataset: str
    metric: str
    value: float
    std: float | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem, as the paper CSV's
    title: str
    keys: tuple[str, ...]
    metrics: tuple[str, ...]
    select: Callable[[list[RunRecord]], list[RunRecord]]
    paper: Callable[[], list[PaperCell]]


@dataclass
class TableResult:
    spec: TableSpec
    rows: list[dict] = field(default_factory=list)  # long format: keys, dataset, metric, ours.., paper.., diff

    @property
    def matched(self) -> list[dict]:
        return [r for r in self.rows if r["ours"] != "" and r["paper"] != ""]

    @property
    def ours_rows(self) -> list[dict]:
        return [r for r in self.rows if r["ours"] != ""]


# ----------------------------------------------------------------------------- the paper's CSVs


def read_paper(name: str) -> list[dict[str, str]]:
    """Rows of resources/paper_results/<name>.csv as dicts of strings."""
    text = resources.files("landmarks").joinpath("resources", "paper_results", f"{name}.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def _num(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def _dim(row: dict[str, str], backbone: str, projected: str) -> str:
    """The README: Tables 4/5 print 3840 for every unprojected hypercolumn; use the true count."""
    if projected == "0" and backbone in HYPERCOLUMN_DIMS:
        return str(HYPERCOLUMN_DIMS[backbone])
    return str(int(float(row["dim"])))


def _budget(text: str, full: str) -> str:
    return "all" if str(int(float(text))) == full else str(int(float(text)))


def _no_dim_unless_projected(key: dict[str, str]) -> dict[str, str]:
    """Unprojected representations are fixed by the backbone: their dim need not match."""
    return {k: v for k, v in key.items() if k != "dim" or key.get("projected", "1") == "1"}


def _paper_t1() -> list[PaperCell]:
    return [PaperCell(key, key, ds, "iod", float(r[f"{ds}_iod"]))
            for r in read_paper("table1_finetune")
            for key in [{"init": "ours", "backbone": r["backbone"], "representation": r["representation"],
                         "finetuned": r["finetuned"]}] for ds in FACES]


def _paper_t3() -> list[PaperCell]:
    cells = []
    for r in read_paper("table3_resolution"):
        key = {"init": "ours", "backbone": r["backbone"], "representation": r["representation"],
               "image_size": r["image_size"]}
        cells += [PaperCell(key, key, ds, "iod", float(r[f"{ds}_iod"])) for ds in FACES]
        cells.append(PaperCell(key, key, "cub", "pck", float(r["cub_pck"])))
    return cells


def _init_key(r: dict[str, str]) -> dict[str, str]:
    key = {"init": METHOD_INIT.get(r["init"], r["init"]), "backbone": r["backbone"],
           "in_the_wild": r["in_the_wild"], "projected": r["projected"]}
    key["dim"] = _dim(r, r["backbone"], r["projected"])
    return key


def _paper_t4() -> list[PaperCell]:
    cells = []
    for r in read_paper("table4_matching"):
        key = _init_key(r)
        for metric, column in (("match_same_px", "same_identity_px"), ("match_diff_px", "diff_identity_px")):
            cells.append(PaperCell(key, _no_dim_unless_projected(key), "mafl", metric, float(r[column])))
    return cells


def _paper_t5() -> list[PaperCell]:
    return [PaperCell(key, _no_dim_unless_projected(key), ds, "iod", float(r[f"{ds}_iod"]))
            for r in read_paper("table5_regression") for key in [_init_key(r)] for ds in FACES]


def _paper_t6() -> list[PaperCell]:
    cells = []
    for r in read_paper("table6_segmentation"):
        for column in [c for c in r if c.startswith("iou_")]:
            key = {"init": METHOD_INIT.get(r["init"], r["init"]), "backbone": "",
                   "representation": r["representation"], "finetuned": "0" if r["backbone_fixed"] == "1" else "1",
                   "budget": _budget(column[4:], "1241")}
            match = {k: v for k, v in key.items() if k != "backbone"}  # the paper does not say which
            cells.append(PaperCell(key, match, "cub", "iou", float(r[column])))
    return cells


def _budget_key(r: dict[str, str], budget: str) -> dict[str, str]:
    projected = "1" if r["representation"] == "projected" else "0"
    return {"init": METHOD_INIT.get(r["method"], r["method"]), "backbone": r["backbone"],
            "representation": r["representation"], "dim": str(int(float(r["dim"]))), "budget": budget,
            "projected": projected}


def _paper_t7() -> list[PaperCell]:
    cells = []
    for r in read_paper("table7_aflw_m_budget"):
        key = _budget_key(r, _budget(r["annotations"], "10122"))
        match = {k: v for k, v in _no_dim_unless_projected(key).items() if k != "projected"}
        key.pop("projected")
        cells.append(PaperCell(key, match, "aflw_m", "iod", float(r["iod_mean"]), _num(r["iod_std"])))
    return cells


def _paper_t8() -> list[PaperCell]:
    cells = []
    for r in read_paper("table8_cub_budget"):
        for column in [c for c in r if c.startswith("pck_")]:
            key = _budget_key(r, _budget(column[4:], "1241"))
            match = {k: v for k, v in _no_dim_unless_projected(key).items() if k != "projected"}
            key.pop("projected")
            cells.append(PaperCell(key, match, "cub", "pck", float(r[column])))
    return cells


def _paper_t9() -> list[PaperCell]:
    cells = []
    for r in read_paper("table9_pretrain_fraction"):
        projected = "1" if r["method"] == "ours_proj" else "0"
        key = {"init": METHOD_INIT.get(r["method"], r["method"]),
               "backbone": "dve_hourglass" if r["method"] == "dve" else "resnet50", "projected": projected,
               "dim": str(int(float(r["dim"]))), "fraction": f"{float(r['pretrain_fraction']):.2f}"}
        cells.append(PaperCell(key, _no_dim_unless_projected(key), "aflw_m", "iod", float(r["aflw_m_iod"])))
    return cells


# ----------------------------------------------------------------------------- which runs go where


def _where(**conditions: Callable[[RunRecord], bool]) -> Callable[[list[RunRecord]], list[RunRecord]]:
    return lambda records: [r for r in records if all(test(r) for test in conditions.values())]


def _budget_curves(records: list[RunRecord], cub: bool) -> list[RunRecord]:
    """Regression runs of settings that were run with a limited budget (and their 'all' point), and the
    baselines run at those budgets (`jobs/baseline.py`: init mean_shape / supervised, beside them)."""
    runs = [r for r in records if r.job in ("regress", "baseline") and (r.dataset == "cub") == cub]

    def setting(r: RunRecord) -> tuple:
        return r.dataset, r.init, r.backbone, r.representation, r.dim

    limited = {setting(r) for r in runs if r.budget != "all"}
    return [r for r in runs if setting(r) in limited or (cub and r.budget == "all")]


TABLES: tuple[TableSpec, ...] = (
    TableSpec("table1_finetune", "Table 1: conv4 of ResNet50, linear vs fine-tuned (IOD %, lower is better)",
              ("init", "backbone", "representation", "finetuned"), ("iod",),
              _where(job=lambda r: r.job in ("regress", "finetune"), rep=lambda r: r.representation == "conv4",
                     budget=lambda r: r.budget == "all"), _paper_t1),
    TableSpec("table3_resolution", "Table 3: 96 vs 128 px input, hypercolumn (IOD %, PCK %)",
              ("init", "backbone", "representation", "image_size"), ("iod", "pck"),
              _where(job=lambda r: r.job == "regress", rep=lambda r: r.representation == "hypercolumn",
                     budget=lambda r: r.budget == "all", init=lambda r: r.init == "ours"), _paper_t3),
    TableSpec("table4_matching", "Table 4: landmark matching on MAFL, pixel error at 70x70 (lower is better)",
              ("init", "backbone", "in_the_wild", "projected", "dim"), ("match_same_px", "match_diff_px"),
              _where(job=lambda r: r.job == "match"), _paper_t4),
    TableSpec("table5_regression", "Table 5: landmark regression, full annotations (IOD %, lower is better)",
              ("init", "backbone", "in_the_wild", "projected", "dim"), ("iod",),
              _where(job=lambda r: r.job == "regress", budget=lambda r: r.budget == "all",
                     rep=lambda r: r.representation in ("hypercolumn", "projected")), _paper_t5),
    TableSpec("table6_segmentation", "Table 6: CUB figure-ground segmentation (mean IoU, higher is better)",
              ("init", "backbone", "representation", "finetuned", "budget"), ("iou",),
              _where(job=lambda r: r.job == "segment"), _paper_t6),
    # The paper is compared with the last epoch's error; the official script also kept the epoch with the
    # lowest test error (track_test), shown beside it, never in its place.
    TableSpec("table7_aflw_m_budget", "Table 7: AFLW_M regression vs annotations, mean +- std over repeats "
              "(IOD %, last epoch vs the paper; the best epoch on test beside it)",
              ("init", "backbone", "representation", "dim", "budget"), ("iod", "iod_best_on_test"),
              lambda records: _budget_curves(records, cub=False), _paper_t7),
    TableSpec("table8_cub_budget", "Table 8: CUB regression vs annotations (PCK@0.05 %, higher is better)",
              ("init", "backbone", "representation", "dim", "budget"), ("pck",),
              lambda records: _budget_curves(records, cub=True), _paper_t8),
    TableSpec("table9_pretrain_fraction", "Table 9: AFLW_M error vs fraction of CelebA used for pretraining (IOD %)",
              ("init", "backbone", "projected", "dim", "fraction"), ("iod",),
              _where(job=lambda r: r.job == "regress", budget=lambda r: r.budget == "all",
                     fraction=lambda r: r.fraction != "", data=lambda r: r.dataset != "cub"), _paper_t9),
)


# ----------------------------------------------------------------------------- building


@dataclass
class _Group:
    key: dict[str, str]
    dataset: str
    metric: str
    values: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def group_runs(spec: TableSpec, records: list[RunRecord]) -> list[_Group]:
    """Our runs of this table, grouped by (setting, dataset, metric) over repeats."""
    groups: dict[tuple, _Group] = {}
    for r in spec.select(records):
        key = {k: str(getattr(r, k)) for k in spec.keys}
        for metric in spec.metrics:
            value = r.metrics.get(metric)
            if value is None or not math.isfinite(value):
                continue
            g = groups.setdefault((tuple(key.values()), r.dataset, metric), _Group(key, r.dataset, metric))
            g.values.append(value)
            g.run_ids.append(r.run_id)
    return sorted(groups.values(), key=lambda g: (_sortable(g.key.values()), g.dataset, g.metric))


def _sortable(values) -> tuple:
    out = []
    for v in values:
        try:
            out.append((0, float(v), ""))
        except ValueError:
            out.append((1, math.inf, v) if v == "all" else (2, 0.0, v))
    return tuple(out)


def _row(spec: TableSpec, key: dict[str, str], dataset: str, metric: str, group: _Group | None,
         paper: PaperCell | None) -> dict:
    mean = statistics.fmean(group.values) if group else None
    std = statistics.stdev(group.values) if group and len(group.values) > 1 else None
    return {**{k: key.get(k, "") for k in spec.keys}, "dataset": dataset, "metric": metric,
            "ours": _f(mean), "ours_std": _f(std), "n": len(group.values) if group else "",
            "paper": _f(paper.value if paper else None), "paper_std": _f(paper.std if paper else None),
            "diff": _f(mean - paper.value if group and paper else None),
            "runs": " ".join(group.run_ids) if group else ""}


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")


def build_table(spec: TableSpec, records: list[RunRecord]) -> TableResult:
    groups = group_runs(spec, records)
    used: set[int] = set()
    rows = []
    for cell in spec.paper():
        hits = [i for i, g in enumerate(groups) if g.dataset == cell.dataset and g.metric == cell.metric
                and all(g.key.get(k) == v for k, v in cell.match.items())]
        for i in hits:
            rows.append(_row(spec, groups[i].key, cell.dataset, cell.metric, groups[i], cell))
        used.update(hits)
        if not hits:
            rows.append(_row(spec, cell.key, cell.dataset, cell.metric, None, cell))
    rows += [_row(spec, g.key, g.dataset, g.metric, g, None) for i, g in enumerate(groups) if i not in used]
    return TableResult(spec, rows)


def build_tables(records: list[RunRecord]) -> list[TableResult]:
    return [build_table(spec, records) for spec in TABLES]


# ----------------------------------------------------------------------------- writing


def to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """CSV text of `rows` under `columns` (default: the first row's keys); "" with neither."""
    columns = list(rows[0]) if columns is None and rows else columns
    if not columns:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows` under `columns` (default: the first row's keys); "(no rows)" with neither."""
    columns = list(rows[0]) if columns is None and rows else columns
    if not columns:
        return "(no rows)\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _pm(mean: str, std: str, n: object = "") -> str:
    if mean == "":
        return ""
    text = f"{float(mean):.2f}" + (f" ± {float(std):.2f}" if std != "" else "")
    return text + (f" (n={n})" if isinstance(n, int) and n > 1 else "")


def table_markdown(result: TableResult) -> str:
    """Wide, like the paper: one line per setting, per (dataset, metric) 'ours | paper | diff'."""
    spec = result.spec
    columns: list[tuple[str, str]] = list(dict.fromkeys((r["dataset"], r["metric"]) for r in result.rows))
    lines: dict[tuple, dict] = {}
    for r in result.rows:
        line = lines.setdefault(tuple(r[k] for k in spec.keys), {})
        line[(r["dataset"], r["metric"])] = (_pm(r["ours"], r["ours_std"], r["n"]), _pm(r["paper"], r["paper_std"]),
                                             f"{float(r['diff']):+.2f}" if r["diff"] != "" else "")
    # A dataset the paper does not report (e.g. the synthetic faces) gets an "ours" column only.
    parts = {col: 3 if any(r["paper"] != "" for r in result.rows if (r["dataset"], r["metric"]) == col) else 1
             for col in columns}
    head = list(spec.keys) + [f"{d} {LABELS.get(m, m)} {part}" for d, m in columns
                              for part in ("ours", "paper", "Δ")[:parts[(d, m)]]]
    wide = [dict(zip(head, list(key) + [v for col in columns for v in cells.get(col, ("", "", ""))[:parts[col]]]))
            for key, cells in lines.items()]
    return f"### {spec.title}\n\n" + to_markdown(wide, head)


def write_tables(results: list[TableResult], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for result in results:
        csv_path, md_path = directory / f"{result.spec.name}.csv", directory / f"{result.spec.name}.md"
        csv_path.write_text(to_csv(result.rows, None if result.rows else ["empty"]))
        md_path.write_text(table_markdown(result))
        written += [csv_path, md_path]
    return written
