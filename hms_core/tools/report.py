"""The results report: ``docs/results.md`` written from committed result files, no figure typed by hand.

Usage (from the repository root)::

    hms report                  # writes docs/results.md
    hms report --readme         # ... and the table between the README's markers
    hms report --out -          # prints the report instead

Inputs:

- the default pipeline on the embedded data: ``metrics/eval.json`` (and ``metrics/costs.json``
  when present) with the repository's ``params.yaml``; ``dvc.lock`` is read to tell whether
  ``metrics/`` was written with other params (a note then says which);
- every run folder ``docs/runs/<name>/`` that holds ``eval.json`` and ``params.yaml`` (the
  run's whole params file), and optionally ``times.json`` (``{"stage": seconds}``) and the evaluate
  stage's ``table.csv`` (each row's training images); a folder of ``bench/reference.py`` (with its
  ``reference.json``) adds its rows, as ``ref_<model>*``, to the run with the same params and seed.

Runs whose params are equal except ``seed`` form a group. For each group and each row of
``eval.json`` (the names are read, not hard-coded; a row some runs lack, over the runs that have it):
mIoU in % as mean ± sample standard deviation (ddof = 1) over the N runs, and the paired
differences d_i = H_i - row_i of the headline HMS row H (``hms_`` + the last chain of
``evaluate.hms_scales``) minus every other row, run by run, as mean ± sample std in
percentage points with the wins #{d_i > 0} / N (and the ties d_i = 0). A group of one run shows
its single values. ``docs/runs/pairs.yaml`` (a list of ``{group: A, baseline: B}``, optional) asks for
groups compared seed by seed: for each row both have, d_s = A_s - B_s over the seeds both have (an
ablation minus the default recipe). A last section gives, for each run, the ``dvc exp run -S key=value``
list of its params that differ from the repository's ``params.yaml`` and its stage times when
``times.json`` exists.

:func:`readme_table` returns the README's one results table for a group name (``default``:
``metrics/``); ``--readme`` puts it between ``<!-- results:begin -->`` and
``<!-- results:end -->`` in ``README.md`` and leaves every other byte of the file as it was.

This module imports neither torch nor the rest of the library (only pandas, PyYAML, ``hms_core.text``
and ``hms_core.io``, which imports torch only to read or write a checkpoint), so it runs in a second even
where torch is not installed. ``hms seeds`` (hms_core/tools/seeds.py), the same statistics over DVC
experiments, takes them from here (:func:`summarise_table` and its markdown).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import pandas as pd
import yaml

from hms_core.io import atomic_write
from hms_core.text import chain_name, table_lines

PARAMS_FILE = "params.yaml"
LOCK_FILE = "dvc.lock"
METRICS_DIR = "metrics"
EVAL_FILE = "eval.json"
COSTS_FILE = "costs.json"
TIMES_FILE = "times.json"
TABLE_FILE = "table.csv"
REFERENCE_FILE = "reference.json"
REFERENCE_PREFIX = "ref_"
PAIRS_FILE = "pairs.yaml"   # in the runs folder: which groups to compare seed by seed
RUNS_DIR = "docs/runs"
OUT_FILE = "docs/results.md"
README_FILE = "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
DEFAULT_GROUP = "default"
SEED = "seed"
METRIC = "mIoU"
HMS_PREFIX = "hms_"


class ReportError(ValueError):
    """A problem the user can fix from the message alone (``hms`` prints it as one line, exit status 1)."""


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Run:
    """One finished run: its params (the whole params.yaml), eval.json, and optional costs and times."""
    name: str
    source: str                                  # the folder it was read from, relative to the root
    params: dict[str, Any]
    metrics: dict[str, Any]
    costs: dict[str, Any] | None = None
    times: dict[str, float] | None = None
    budgets: dict[str, str] | None = None        # row -> its training images, "train + fine-tune" (table.csv)
    references: tuple[str, ...] = ()             # reference folders whose rows were added (bench/reference.py)

    @property
    def seed(self) -> Any:
        return self.params.get(SEED)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"{path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a mapping of params")
    return data


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def read_budgets(path: Path) -> dict[str, str]:
    """``table.csv`` (the evaluate stage's) -> ``{row: "train + fine-tune"}``: the training images of the
    weights each row runs."""
    try:
        table = pd.read_csv(path, dtype=str)
        return {r: f"{t} + {f}" for r, t, f in zip(table["row"], table["train images"], table["finetune images"])}
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{path}: {exc} (expected the columns row, train images, finetune images)") from None


def read_run(folder: Path, name: str, root: Path, params: dict[str, Any] | None = None) -> Run:
    """A run folder: ``eval.json`` and ``params.yaml`` (or the ``params`` given), ``costs.json``,
    ``times.json`` and ``table.csv`` when they exist."""
    metrics = _read_json(folder / EVAL_FILE)
    if not isinstance(metrics, dict) or not metrics:
        raise ReportError(f"{folder / EVAL_FILE}: no rows")
    costs = _read_json(folder / COSTS_FILE) if (folder / COSTS_FILE).is_file() else None
    times = None
    if (folder / TIMES_FILE).is_file():
        times = _read_json(folder / TIMES_FILE)
        if not isinstance(times, dict) or not all(is_number(v) for v in times.values()):
            raise ReportError(f"{folder / TIMES_FILE}: must map each stage to its seconds")
    budgets = read_budgets(folder / TABLE_FILE) if (folder / TABLE_FILE).is_file() else None
    return Run(name=name, source=_rel(folder, root),
               params=params if params is not None else _read_yaml(folder / PARAMS_FILE),
               metrics=metrics, costs=costs, times=times, budgets=budgets)


def reference_rows(folder: Path, run: Run) -> Run:
    """A ``bench/reference.py --out`` folder (``reference.json`` beside ``eval.json``) as rows of its own:
    ``reference*`` -> ``ref_<model>*`` (``ref_deeplabv3``, ``ref_deeplabv3_tta_0.5-1.0-2.0``, ...), each with
    its budget, ``reference.json``'s training images."""
    info = _read_json(folder / REFERENCE_FILE)
    if not isinstance(info, dict) or not isinstance(info.get("model"), str) or "images" not in info:
        raise ReportError(f"{folder / REFERENCE_FILE}: expected the model and its training images")
    prefix = REFERENCE_PREFIX + info["model"].split("_")[0]
    metrics = {prefix + row[len("reference"):]: v for row, v in run.metrics.items() if row.startswith("reference")}
    return replace(run, metrics=metrics, costs=None, budgets=dict.fromkeys(metrics, str(info["images"])),
                   references=(run.source,))


def find_runs(root: Path, runs_dir: str = RUNS_DIR) -> list[Run]:
    """Every ``runs_dir/<name>/`` holding ``eval.json`` and ``params.yaml``, by name. The rows of a
    reference folder (:func:`reference_rows`) join the run with the same params and seed, when there is one."""
    base = root / runs_dir
    if not base.is_dir():
        return []
    found = [(d, read_run(d, d.name, root)) for d in sorted(base.iterdir())
             if d.is_dir() and (d / EVAL_FILE).is_file() and (d / PARAMS_FILE).is_file()]
    runs = [r for d, r in found if not (d / REFERENCE_FILE).is_file()]
    # (params, seed) -> the run's place, the first run of that key; each key computed once
    place: dict[tuple[str, str], int] = {}
    for i, r in enumerate(runs):
        place.setdefault((params_key(r.params), str(r.seed)), i)
    for ref in (reference_rows(d, r) for d, r in found if (d / REFERENCE_FILE).is_file()):
        i = place.setdefault((params_key(ref.params), str(ref.seed)), len(runs))
        if i == len(runs):   # no run of its own seed: its rows stand alone, joined by later references
            runs.append(ref)
        else:
            r = runs[i]
            runs[i] = replace(r, metrics={**r.metrics, **ref.metrics}, budgets={**(r.budgets or {}), **ref.budgets},
                              references=r.references + ref.references)
    return runs


def default_run(root: Path, params: dict[str, Any]) -> Run | None:
    """The workspace's ``metrics/`` with the repository's params (None without ``metrics/eval.json``)."""
    folder = root / METRICS_DIR
    if not (folder / EVAL_FILE).is_file():
        return None
    return replace(read_run(folder, DEFAULT_GROUP, root, params=params), times=None)


# --------------------------------------------------------------------------- params

_ABSENT = object()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists and empty dicts are leaves."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _canonical(value: Any) -> Any:
    """Values that compare equal get one form (``1`` and ``1.0``), so that grouping follows ``==``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def params_key(params: dict[str, Any]) -> str:
    """The params other than ``seed``, as one comparable string."""
    flat = {k: _canonical(v) for k, v in flatten(params).items() if k != SEED}
    return json.dumps(flat, sort_keys=True, default=str)


def param_differences(params: dict[str, Any], base: dict[str, Any], skip: Sequence[str] = ()
                      ) -> tuple[dict[str, Any], list[str]]:
    """(the leaves of ``params`` that differ from ``base`` or are not in it, the leaves of ``base``
    missing from ``params``), in the order of ``base``, keys it lacks last."""
    flat, flat_base = flatten(params), flatten(base)
    order = list(flat_base) + [k for k in flat if k not in flat_base]
    changed = {k: flat[k] for k in order if k in flat and k not in skip and flat_base.get(k, _ABSENT) != flat[k]}
    missing = [k for k in flat_base if k not in flat and k not in skip]
    return changed, missing


def format_value(value: Any, compact: bool = True) -> str:
    """A params value as ``dvc exp run -S`` reads it (YAML flow; JSON for lists and mappings, without
    spaces unless not ``compact``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":") if compact else None)


def set_arguments(changed: dict[str, Any]) -> str:
    """``-S key=value`` for each changed param, quoted for a POSIX shell."""
    return " ".join(f"-S {shlex.quote(f'{k}={format_value(v)}')}" for k, v in changed.items())


def merged(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the leaves of ``changes`` (nested, or keys ``"a.b"``) put in, as a new tree: what a
    run with ``dvc exp run -S`` of those leaves runs with."""
    out: dict[str, Any] = {}
    for key, value in {**flatten(params), **flatten(changes)}.items():   # "a.b": 1 -> {"a": {"b": 1}}
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def lock_params(root: Path) -> dict[str, Any]:
    """The params the stages in ``dvc.lock`` last ran with, flattened (empty without ``dvc.lock``)."""
    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    found: dict[str, Any] = {}
    for stage in (_read_yaml(path).get("stages") or {}).values():
        entries = ((stage or {}).get("params") or {}).get(PARAMS_FILE) or {}
        for key, value in flatten(dict(entries)).items():   # "train" (a section) -> "train.steps", ...
            found.setdefault(key, value)
    return found


def lock_differences(params: dict[str, Any], locked: dict[str, Any]) -> list[str]:
    """The params in ``locked`` (:func:`lock_params`) that differ from ``params``: ``"key: lock value
    (params.yaml: value)"``."""
    flat = flatten(params)
    out = []
    for key, value in locked.items():
        current = flat.get(key, _ABSENT)
        if current is _ABSENT or _canonical(current) != _canonical(value):
            shown = "absent" if current is _ABSENT else format_value(current)
            out.append(f"`{key}`: {format_value(value)} (params.yaml: {shown})")
    return out


# --------------------------------------------------------------------------- rows and statistics

def headline_row(params: dict[str, Any]) -> str:
    """``hms_`` + the last chain of ``evaluate.hms_scales`` (the table's headline HMS row)."""
    try:
        chain = params["evaluate"]["hms_scales"][-1]
        return HMS_PREFIX + chain_name(chain)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ReportError("params have no evaluate.hms_scales to name the headline HMS row") from None


class Stat(NamedTuple):
    """Mean and sample standard deviation of one value per run (the order of ``hms seeds --json``)."""
    n: int
    mean: float
    std: float                        # NaN for one run
    values: dict[Any, float]          # run (seed or name) -> value


class Difference(NamedTuple):
    """Paired differences d_i = headline_i - row_i over the runs i, the headline's wins #{d_i > 0} and ties."""
    row: str
    stat: Stat
    wins: int
    ties: int


def mean_std(values: dict[Any, float] | pd.Series, min_n: int = 2) -> Stat:
    """m = (1/N) sum_i x_i ;  s = sqrt( sum_i (x_i - m)^2 / (N - 1) )  (ddof = 1; N >= ``min_n``, s NaN for N = 1)."""
    x = pd.Series(values, dtype=float)
    if len(x) < min_n:
        raise ReportError(f"a standard deviation needs at least {min_n} seeds, got {len(x)}")
    # The stdlib's correctly rounded fmean/stdev, not x.mean()/x.std(): pandas sums in plain floats and
    # differs in the last bit (one number in 12 on the tests' data), which hms seeds --json would print.
    return Stat(len(x), statistics.fmean(x), statistics.stdev(x) if len(x) > 1 else math.nan, x.to_dict())


def paired_difference(row: str, headline: dict[Any, float] | pd.Series, baseline: dict[Any, float] | pd.Series,
                      min_n: int = 2) -> Difference:
    """d_i = headline_i - baseline_i for every run i; mean ± sample std of the d_i; wins = #{d_i > 0},
    ties = #{d_i = 0}."""
    headline, baseline = pd.Series(headline, dtype=float), pd.Series(baseline, dtype=float)
    if set(headline.index) != set(baseline.index):
        raise ReportError(f"row {row}: the seeds of HMS and the baseline differ")
    d = (headline - baseline).sort_index()   # pandas pairs the values by run
    return Difference(row, mean_std(d, min_n), wins=int((d > 0).sum()), ties=int((d == 0).sum()))


class Summary(NamedTuple):
    """Runs that differ only in the seed, row by row: row -> metric -> Stat, and the headline HMS row
    minus every other row."""
    seeds: list[Any]                  # the runs (hms seeds: their seeds; hms report: their names)
    metric: str                       # of the differences and the first column
    metrics: list[str]
    hms: str                          # the headline row
    rows: dict[str, dict[str, Stat]]
    differences: list[Difference]     # none when the headline row is not one of the rows
    dropped_rows: list[str]           # rows not every run has, left out


def summarise_table(x: pd.DataFrame, metric: str, hms: str, dropped: Sequence[str] = (),
                    min_n: int = 2) -> Summary:
    """``x``: a line per run, a column per (row, metric), fractions, NaN where a run lacks the row -> each
    column's :func:`mean_std` over the runs that have it, and the :func:`paired_difference` of ``metric``,
    row ``hms`` minus each other row, over the runs that have both."""
    rows, metrics = (list(dict.fromkeys(x.columns.get_level_values(level))) for level in (0, 1))
    y = x.xs(metric, axis=1, level=1)   # run x row, the metric of the differences
    pairs = {r: y[[hms, r]].dropna() for r in rows if r != hms} if hms in rows else {}
    return Summary(list(x.index), metric, metrics, hms,
                   {r: {m: mean_std(x[(r, m)].dropna(), min_n) for m in metrics} for r in rows},
                   [paired_difference(r, d[hms], d[r], min_n) for r, d in pairs.items() if len(d)], list(dropped))


def run_scores(run: Run, metric: str = METRIC) -> dict[str, float]:
    """``{row: metric}`` of a run's ``eval.json``, the rows that have a finite number for it."""
    return {row: float(v[metric]) for row, v in run.metrics.items() if isinstance(v, dict) and is_number(v.get(metric))}


def summarise(runs: Sequence[Run], headline: str, metric: str = METRIC) -> Summary:
    """The :func:`summarise_table` of ``metric`` over the N runs (N = 1 too: no std); a row some runs lack
    (a reference trained for some seeds only) is summarised over the runs that have it."""
    # run x row, the rows in order of first appearance; NaN where a run has no number
    x = pd.DataFrame([run_scores(r, metric) for r in runs], index=[r.name for r in runs])
    if x.columns.empty:
        raise ReportError(f"no row with a '{metric}' in the runs {', '.join(r.name for r in runs)}")
    return summarise_table(pd.concat({metric: x}, axis=1).swaplevel(axis=1), metric, headline, min_n=1)


@dataclass
class Group:
    """Runs whose params are equal except ``seed``, and what the report shows of them."""
    name: str
    runs: list[Run]
    summary: Summary                     # of the report's metric, the runs by name
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def budgets(self) -> dict[str, str]:
        """Row -> training images of its weights, "train + fine-tune", from the runs' ``table.csv`` and
        references (empty when no run has them); where runs disagree, their values joined by " / " in
        the order of the runs (a note of the group names the runs)."""
        return {row: " / ".join(values) for row, values in budget_values(self.runs).items()}


def budget_values(runs: Sequence[Run]) -> dict[str, dict[str, list[str]]]:
    """Row -> each training-images value the runs give it -> the runs that give it, in the runs' order."""
    found: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        for row, b in (r.budgets or {}).items():
            found.setdefault(row, {}).setdefault(b, []).append(r.name)
    return found


def _base_name(name: str) -> str:
    return re.sub(r"[-_]?(s|seed)\d+$", "", name)


def group_name(runs: Sequence[Run]) -> str:
    """The run names without their seed suffix (``emb-s0``, ``emb-s1`` -> ``emb``); else their common
    prefix; else the first name."""
    bases = {_base_name(r.name) for r in runs}
    if len(bases) == 1 and next(iter(bases)):
        return next(iter(bases))
    prefix = os.path.commonprefix([r.name for r in runs]).rstrip("-_")
    return prefix or runs[0].name


def make_group(name: str, runs: Sequence[Run], metric: str = METRIC) -> Group:
    runs = sorted(runs, key=lambda r: (str(r.seed), r.name))
    headline = headline_row(runs[0].params)
    s = summarise(runs, headline, metric)
    notes = []
    if headline not in s.rows:
        notes.append(f"the headline row {headline} is not in every run's eval.json: no differences")
    partial = [row for row, stats in s.rows.items() if stats[metric].n < len(runs)]
    if partial:
        notes.append(f"rows not in every run, each over the runs that have it: {', '.join(partial)}")
    # A run folder keeps the table.csv of the code it ran with: say so when two runs count a row differently.
    disagree = {row: v for row, v in budget_values(runs).items() if len(v) > 1}
    if disagree:
        notes.append("the runs' table.csv files give different training images: " + "; ".join(
            f"{row} " + ", ".join(f"{b} ({', '.join(names)})" for b, names in v.items()) for row, v in disagree.items()))
    seeds = [r.seed for r in runs]
    if len(set(map(str, seeds))) < len(seeds):
        notes.append("some runs share a seed; each run counts once")
    return Group(name, list(runs), s, notes)


def group_runs(runs: Sequence[Run], metric: str = METRIC, taken: Sequence[str] = (DEFAULT_GROUP,)) -> list[Group]:
    """Group the runs whose params other than ``seed`` are equal, in the order of their first run."""
    by_key: dict[str, list[Run]] = {}
    for r in runs:
        by_key.setdefault(params_key(r.params), []).append(r)
    names = set(taken)
    groups = []
    for members in by_key.values():
        name = group_name(members)
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name}-{k}", k + 1
        names.add(unique)
        groups.append(make_group(unique, members, metric))
    return groups


# --------------------------------------------------------------------------- markdown

def pct(stat: Stat, signed: bool = False) -> str:
    """A fraction's mean (± std from 2 runs) in percent, or a difference's in percentage points, 2 decimals."""
    text = f"{100 * stat.mean:{'+' if signed else ''}.2f}"
    return f"{text} ± {100 * stat.std:.2f}" if stat.n >= 2 else text


def score_lines(s: Summary) -> list[str]:
    """Markdown: a line per row with N and each metric's :func:`pct`."""
    return table_lines(["row", "N", *(f"{m} (%)" for m in s.metrics)],
                       ([row, str(len(s.seeds)), *(pct(stats[m]) for m in s.metrics)]
                        for row, stats in s.rows.items()))


def difference_lines(s: Summary) -> list[str]:
    """Markdown: a line per :class:`Difference`, its N, mean ± std in percentage points, the wins (and ties)."""
    return table_lines([f"{s.hms} minus", "N", f"Δ {s.metric} (pp)", "wins (d_i > 0)"],
                       ([d.row, str(d.stat.n), pct(d.stat, signed=True), f"{d.wins}/{d.stat.n}"
                         + (f" ({d.ties} tie{'s' if d.ties > 1 else ''})" if d.ties else "")] for d in s.differences))


def _seeds_text(group: Group) -> str:
    seeds = ", ".join(str(r.seed) for r in group.runs)
    if group.n == 1:
        return f"N = 1 (seed {seeds})"
    return f"N = {group.n} (seeds {seeds}); mean ± sample std (ddof = 1) over the runs"


def difference_table(group: Group) -> list[str]:
    """The paired differences of the headline row minus every other row, as markdown lines after a blank
    one (none when the headline row is missing)."""
    if not group.summary.differences:
        return []
    return ["", f"Paired differences, run by run: d_i = {group.summary.hms}_i - row_i, in percentage points; "
            "wins: the runs with d_i > 0.", "", *difference_lines(group.summary)]


def _fmt(value: Any, scale: float, digits: int) -> str:
    return f"{value * scale:.{digits}f}" if is_number(value) else "-"


def default_tables(run: Run) -> list[str]:
    """The default run's full table (scores, and costs when present) and its IoU per class."""
    costs = run.costs or {}
    rows = {row: m for row, m in run.metrics.items() if isinstance(m, dict)}
    head = ["row", "mIoU (%)", "pixel acc (%)", "mean class acc (%)"]
    cells = {row: [row, *(_fmt(m.get(k), 100, 2) for k in ("mIoU", "pixel_acc", "mean_class_acc"))]
             for row, m in rows.items()}
    if costs:
        head += ["params (M)", "ms/image", "peak MB"]
        for row in rows:
            c = costs.get(row) or {}
            cells[row] += [_fmt(c.get("params"), 1e-6, 2), _fmt(c.get("ms_per_image"), 1, 1),
                           _fmt(c.get("peak_mem_mb"), 1, 1)]
    lines = table_lines(head, cells.values())
    classes = list(dict.fromkeys(c for m in rows.values() for c in (m.get("iou") or {})))
    if classes:
        lines += ["", "IoU per class (%):", "", *table_lines(["row", *classes], (
            [row, *(_fmt((m.get("iou") or {}).get(c), 100, 2) for c in classes)] for row, m in rows.items()))]
    return lines


def describe(params: dict[str, Any]) -> str:
    """One line of what a run trained, read from its params (keys it lacks are left out)."""
    p = flatten(params)
    parts = [("trunk {} + {}", "trunk", "head"), ("scales {}", "scales"), ("hms.mode {}", "hms.mode"),
             ("finetune.train_all {}", "finetune.train_all"),
             ("train {} steps x {} crops of {}", "train.steps", "train.batch_size", "train.crop"),
             ("finetune {} steps x {} crops of {}", "finetune.steps", "finetune.batch_size", "finetune.crop"),
             ("data.root {}", "data.root")]
    return "; ".join(text.format(*(format_value(p[k]) for k in keys)) for text, *keys in parts
                     if all(k in p for k in keys))


def times_text(times: dict[str, float]) -> str:
    total = sum(times.values())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
    return f"stage times: {stages}; total {total:.0f} s ({total / 60:.1f} min)"


@dataclass
class Report:
    """Everything read: the repository's params, the default run and its notes, the groups of runs."""
    params: dict[str, Any]
    default: Group | None
    groups: list[Group]
    runs_dir: str = RUNS_DIR
    stale: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)   # (group, baseline), pairs.yaml's order

    def group(self, name: str) -> Group:
        groups = ([self.default] if self.default else []) + self.groups
        for g in groups:
            if g.name == name:
                return g
        names = ", ".join(g.name for g in groups) or "none"
        raise ReportError(f"no group named '{name}' (groups: {names})")

    def readme_group(self) -> str:
        """The group the README shows by default: the runs with the repository's params (except seed)
        with the most runs, when two or more; else ``default``."""
        key = params_key(self.params)
        same = [g for g in self.groups if params_key(g.runs[0].params) == key and g.n >= 2]
        if same:
            return max(same, key=lambda g: g.n).name
        if self.default is None:
            raise ReportError(f"no {METRICS_DIR}/{EVAL_FILE} and no group of runs with the params of "
                              f"{PARAMS_FILE}: name one with --group")
        return DEFAULT_GROUP


def collect(root: str | Path = ".", runs_dir: str = RUNS_DIR, metric: str = METRIC) -> Report:
    """Read ``params.yaml``, ``metrics/`` and the run folders under ``root`` and compute every group."""
    root = Path(root)
    if not (root / PARAMS_FILE).is_file():
        raise ReportError(f"no {PARAMS_FILE} in {root.resolve()}: run from the repository root or give --root")
    params = _read_yaml(root / PARAMS_FILE)
    locked = lock_params(root)
    # metrics/ holds what the stages ran with: params.yaml where dvc.lock agrees, dvc.lock's values where not.
    run = default_run(root, merged(params, locked))
    default = make_group(DEFAULT_GROUP, [run], metric) if run else None
    stale = lock_differences(params, locked) if run else []
    report = Report(params, default, group_runs(find_runs(root, runs_dir), metric), runs_dir, stale)
    path = root / runs_dir / PAIRS_FILE
    try:
        report.pairs = [(p["group"], p["baseline"]) for p in
                        ((yaml.safe_load(path.read_text()) or []) if path.is_file() else [])]
        for name in {name for pair in report.pairs for name in pair}:
            report.group(name)   # an unknown name fails here, with the names of the groups
    except (TypeError, KeyError, yaml.YAMLError, ReportError) as exc:
        raise ReportError(f"{path}: {' '.join(str(exc).split())} (expected a list of "
                          f"{{group: NAME, baseline: NAME}} of the groups in {runs_dir}/)") from None
    return report


def paired_groups(a: Group, b: Group, metric: str = METRIC) -> pd.DataFrame:
    """Group ``a`` minus group ``b`` seed by seed: for each row of ``a`` that both have, d_s = a_s - b_s
    over the seeds of both (columns: one per seed, then mean, std, wins = #{d_s > 0}, in percentage points)."""
    x, y = (pd.DataFrame({r.seed: run_scores(r, metric) for r in g.runs}).T for g in (a, b))   # seed x row
    d = 100 * (x - y).loc[x.index.intersection(y.index), [c for c in x.columns if c in y.columns]].dropna(axis=1)
    if d.empty:
        raise ReportError(f"groups {a.name} and {b.name} have no seed and row in common")
    stats = {row: mean_std(d[row], min_n=1) for row in d.columns}
    return d.sort_index().T.assign(mean=[s.mean for s in stats.values()], std=[s.std for s in stats.values()],
                                   wins=(d > 0).sum().to_numpy())


def markdown(report: Report) -> str:
    """docs/results.md."""
    lines = ["<!-- Written by `hms report` from the files it names: do not edit by hand. -->",
             "", "# Results", "",
             "mIoU in %. Over several runs: mean ± sample standard deviation (ddof = 1) over the runs, N the "
             "number of runs. Differences are paired, run by run, headline HMS row minus the row, in "
             "percentage points (pp), with the runs the headline row wins. Row names are those of "
             "`eval.json` (README.md, \"The method in brief\").", ""]
    lines += ["## The default pipeline on the embedded data", ""]
    if report.default is None:
        lines += [f"No `{METRICS_DIR}/{EVAL_FILE}` yet: run `dvc repro`.", ""]
    else:
        g = report.default
        run = g.runs[0]
        lines += [f"`{run.source}/{EVAL_FILE}`" + (f" and `{run.source}/{COSTS_FILE}`" if run.costs else "")
                  + f", written by the pipeline with seed {run.seed}: {describe(run.params)}.", ""]
        if report.stale:
            lines += [f"**Stale:** `{METRICS_DIR}/` was written by stages that ran with other params than "
                      f"`{PARAMS_FILE}` (`{LOCK_FILE}`): " + "; ".join(report.stale)
                      + ". The tables below are of that run; `dvc repro`, then this report, brings them up "
                      "to date.", ""]
        lines += [f"- {n}" for n in g.notes] + ([""] if g.notes else [])
        lines += default_tables(run) + difference_table(g) + [""]
    lines += [f"## Runs in `{report.runs_dir}/`", ""]
    if not report.groups:
        lines += [f"No run folders yet. A run folder `{report.runs_dir}/<name>/` holds the run's `{EVAL_FILE}` "
                  f"and `{PARAMS_FILE}` (from `{METRICS_DIR}/` and the workspace after `dvc repro`, or from "
                  f"`dvc exp show`), and optionally `{TIMES_FILE}` (`{{\"stage\": seconds}}`).", ""]
    for g in report.groups:
        changed, missing = param_differences(g.runs[0].params, report.params, skip=(SEED,))
        same = ("params as in `params.yaml`" if not changed and not missing
                else "`params.yaml` with " + ", ".join(f"`{k}={format_value(v)}`" for k, v in changed.items())
                + ("".join(f", no `{k}`" for k in missing)))
        refs = [f"`{ref}`" for r in g.runs for ref in r.references]
        lines += [f"### {g.name}", "",
                  f"{_seeds_text(g)}; runs " + ", ".join(f"`{r.source}`" for r in g.runs)
                  + (f", the `{REFERENCE_PREFIX}*` rows from {', '.join(refs)}" if refs else "") + f". {same}.", ""]
        lines += [f"- {n}" for n in g.notes] + ([""] if g.notes else [])
        lines += score_lines(g.summary) + difference_table(g) + [""]
        if g.budgets:
            lines += ["Training images of the weights each row runs (train + fine-tune):", "",
                      *table_lines(["row", "images"], g.budgets.items()), ""]
    if report.pairs:
        lines += ["## Groups compared seed by seed", "", f"Listed in `{report.runs_dir}/{PAIRS_FILE}`. Per row, "
                  "d_s = group_s - baseline_s for each seed s of both, in percentage points; mean ± sample std "
                  "over those seeds; wins: the seeds with d_s > 0.", ""]
    for name, base in report.pairs:
        d = paired_groups(report.group(name), report.group(base))
        seeds = [c for c in d.columns if c not in ("mean", "std", "wins")]
        cells = ([row, *(f"{v[s]:+.2f}" for s in seeds),
                  f"{v['mean']:+.2f}" + (f" ± {v['std']:.2f}" if len(seeds) > 1 else ""),
                  f"{int(v['wins'])}/{len(seeds)}"] for row, v in d.iterrows())
        lines += [f"### {name} minus {base}", "",
                  *table_lines(["row", *(f"seed {s}" for s in seeds), "mean", "wins"], cells), ""]
    if report.groups:
        lines += ["## How to reproduce each run", "",
                  f"Each command sets the params in which the run differs from the repository's `{PARAMS_FILE}` "
                  "(the code may have changed since it ran).", ""]
        for g in report.groups:
            for r in g.runs:
                changed, missing = param_differences(r.params, report.params)
                cmd = "dvc exp run" + (f" {set_arguments(changed)}" if changed else "")
                lines += [f"- `{r.name}` (seed {r.seed}): `{cmd}`"]
                if missing:
                    lines[-1] += "; its params had no " + ", ".join(f"`{k}`" for k in missing)
                if r.times:
                    lines[-1] += f"; {times_text(r.times)}"
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def readme_table(report: Report, name: str | None = None) -> str:
    """The README's results table for group ``name`` (``default``: ``metrics/``; None: see
    :meth:`Report.readme_group`): mIoU per row and the headline row's paired differences."""
    g = report.group(name or report.readme_group())
    source = (f"`{METRICS_DIR}/{EVAL_FILE}` (`dvc repro` with `{PARAMS_FILE}`)" if g.name == DEFAULT_GROUP
              else f"`{report.runs_dir}/` group `{g.name}`")
    lines = [f"{source}: {describe(g.runs[0].params)}; {_seeds_text(g)}. Δ: {g.summary.hms} minus the row (pp), "
             "with the runs it wins.", ""]
    if g.name == DEFAULT_GROUP and report.stale:
        lines += [f"**Stale:** written with other params than `{PARAMS_FILE}` (docs/results.md says which).", ""]
    # The number of runs per row when a row has fewer (a reference trained for some seeds), and each row's
    # training images when a run folder holds the evaluate stage's table.csv or a reference.
    budgets = g.budgets
    counts = {row: stats[g.summary.metric].n for row, stats in g.summary.rows.items()}
    with_n = set(counts.values()) != {g.n}
    head = ["row", f"{METRIC} (%)", *["N"] * with_n, "Δ (pp)", "wins",
            *["training images (train + fine-tune)"] * bool(budgets)]
    diffs = {d.row: d for d in g.summary.differences}
    cells = []
    for row, stats in g.summary.rows.items():
        if row in diffs:
            delta, wins = pct(diffs[row].stat, signed=True), f"{diffs[row].wins}/{diffs[row].stat.n}"
        else:
            delta, wins = ("headline", "") if row == g.summary.hms else ("-", "")
        cells.append([row, pct(stats[g.summary.metric]), *[str(counts[row])] * with_n, delta, wins,
                      *[budgets.get(row, "-")] * bool(budgets)])
    lines += table_lines(head, cells)
    if any(len(values) > 1 for values in budget_values(g.runs).values()):
        lines += ["", "Training images a / b: the runs' `table.csv` files disagree (`docs/results.md` names the runs)."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the line holding ``BEGIN`` and the line holding ``END``
    replaced by ``block``; the marker lines and every byte outside them stay as they are."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ReportError(f"the README must hold '{BEGIN}' and '{END}' once each")
    start = text.index(BEGIN)
    line_end = text.find("\n", start)
    if line_end < 0 or text.index(END) < line_end:
        raise ReportError(f"'{END}' must be on a line after '{BEGIN}'")
    stop = text.rfind("\n", 0, text.index(END)) + 1      # the start of the END marker's line
    newline = "\r\n" if text[line_end - 1:line_end] == "\r" else "\n"
    body = block.replace("\r\n", "\n").rstrip("\n")
    body = newline.join(body.split("\n")) + newline if body else ""
    return text[:line_end + 1] + body + text[stop:]


def write_bytes(path: Path, text: str) -> None:
    """``text`` as UTF-8 bytes, atomically (:func:`hms_core.io.atomic_open`: never half a file)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def update_readme(path: Path, block: str) -> bool:
    """Replace the README's results block; True when the file changed."""
    try:
        old = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: {exc}") from None
    new = replace_block(old, block)
    if new != old:
        write_bytes(path, new)
    return new != old


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


# --------------------------------------------------------------------------- command line

DESCRIPTION = ("Write docs/results.md from metrics/ and the run folders under docs/runs/ "
               "(mean ± sample std over seeds, paired differences, how to reproduce each run).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms report``, on ``p``."""
    p.add_argument("--root", default=".", help="the repository root (default: .)")
    p.add_argument("--out", default=OUT_FILE, help="the report, relative to the root; '-' prints it (default: %(default)s)")
    p.add_argument("--runs", default=RUNS_DIR, help="folder of run folders, relative to the root (default: %(default)s)")
    p.add_argument("--readme", nargs="?", const=README_FILE, metavar="FILE",
                   help=f"also replace the table between '{BEGIN}' and '{END}' in FILE (default: {README_FILE})")
    p.add_argument("--group", help="the group the README table shows (default: the runs with params.yaml's "
                                   "params and most seeds, else 'default': metrics/)")


def run(args: argparse.Namespace, prog: str = "hms report") -> int:
    """Write the report (and the README's table) as ``args`` say; returns 0, an error raises."""
    root = Path(args.root)
    report = collect(root, args.runs)
    text = markdown(report)
    table = readme_table(report, args.group) if args.readme else None
    if args.out == "-":
        print(text, end="")
    else:
        write_bytes(root / args.out, text)
        print(f"{prog}: wrote {args.out}", file=sys.stderr)
    if table is not None:
        changed = update_readme(root / args.readme, table)
        print(f"{prog}: {args.readme}: results table {'updated' if changed else 'unchanged'}", file=sys.stderr)
    return 0
