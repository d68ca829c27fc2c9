"""Results over seeds: the rows of ``metrics/eval.json`` as mean +- std over DVC experiments.

Usage (from the repository root, after the experiments have run)::

    dvc exp run --queue -S seed=0 ; dvc exp run --queue -S seed=1 ; dvc exp run --queue -S seed=2
    dvc queue start --jobs 1            # then wait: dvc queue status
    python -m hms_core.tools.seeds            # prints the markdown tables

What it does:

1. ``read_exp_show`` runs ``dvc exp show --json`` (the only place that talks to DVC) and
   ``parse_exp_show`` turns its output into runs: one per finished experiment, with its
   params (``seed`` apart) and its ``metrics/eval.json``. Queued, running and failed
   experiments are skipped (a failed queue task still shows a stale ``eval.json``), as are
   experiments without an integer ``seed`` or without ``metrics/eval.json``.
2. ``group_runs`` groups the runs that differ only in ``seed``. By default one group: the
   experiments whose other params equal the workspace's ``params.yaml``; ``--all`` prints
   every group of two or more seeds. Of two experiments with the same seed in one group the
   newest is used. The workspace itself is a run only with ``--include-workspace`` (its
   ``metrics/eval.json`` as it is on disk, when its seed is not already an experiment's).
3. ``summarise`` (pure) computes, over the N seeds i = 1..N of a group, for every row of
   ``eval.json`` (the rows every seed has: the names are read, not hard-coded):

   - mean  m = (1/N) sum_i x_i  and sample std  s = sqrt( sum_i (x_i - m)^2 / (N - 1) )
     of the metric (``--metric``, default ``mIoU``) and of ``pixel_acc``;
   - the paired difference of the main HMS row against each other row, seed by seed,
     d_i = HMS_i - baseline_i, as mean +- sample std of the d_i, and the number of seeds
     HMS won (d_i > 0). The main HMS row is the ``hms_*`` row with the most scales
     (``--hms ROW`` picks another).
4. ``markdown`` (pure) prints them in percent (eval.json holds fractions 0..1) with two
   decimals; differences are in percentage points. ``--out FILE`` also writes the markdown,
   ``--json FILE`` the numbers (fractions, per-seed values included).

Errors a user can fix (no experiments, fewer than 2 seeds, rows that differ between
seeds, an unknown row or metric) are one line on stderr and exit status 1.

Why ``dvc exp show --json`` and not ``dvc.api.exp_show()``: in DVC 3.x the API returns one
flat dict per experiment whose metric columns join the nested keys with ``.`` (e.g.
``hms_0.5-1.0-2.0.mIoU``), which cannot be split back into row and metric when the row
names themselves contain dots; it also mixes params, metrics and dependency hashes in one
namespace and turns integer params into floats (``seed`` 2 -> 2.0). The JSON output keeps
the nested ``eval.json``, the params per file, and each queue task's executor state.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

EVAL_FILE = "metrics/eval.json"
PARAMS_FILE = "params.yaml"
SEED_KEY = "seed"
SECONDARY_METRIC = "pixel_acc"
HMS_PREFIX = "hms_"


class SeedsError(Exception):
    """A problem the user can fix from the message alone (printed as one line, exit 1)."""


# --------------------------------------------------------------------------- reading DVC

@dataclass(frozen=True)
class Run:
    """One finished experiment (or the workspace): its seed, other params and eval.json."""
    name: str
    rev: str
    seed: int
    params: dict[str, Any]          # flattened, without the seed: "a.b" (params.yaml) or "file:a.b"
    metrics: dict[str, Any]         # the content of metrics/eval.json
    timestamp: str | None = None    # ISO time of the experiment commit (None: workspace)


@dataclass
class Experiments:
    """What ``parse_exp_show`` found: the workspace's params, the finished runs, what was skipped."""
    workspace_params: dict[str, Any]
    workspace: Run | None                      # None when the workspace has no usable seed / eval.json
    runs: list[Run]
    skipped: list[str] = field(default_factory=list)   # "name: why", for a note on stderr


def read_exp_show(repo: str | Path = ".", all_commits: bool = False) -> list[dict[str, Any]]:
    """Run ``dvc exp show --json`` in ``repo`` and return its parsed output (DVC 3.x list format).

    This is the only function that talks to DVC. Experiments derived from ``HEAD`` are listed;
    ``all_commits`` adds ``-A`` (experiments of every commit).
    """
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["-A"] if all_commits else [])
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    except OSError as exc:
        raise SeedsError(f"cannot run dvc: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise SeedsError(f"'dvc exp show --json' failed in {Path(repo).resolve()}: "
                         f"{lines[-1] if lines else f'exit status {proc.returncode}'}")
    out = proc.stdout
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        # Anything printed before the JSON (a warning on stdout): parse from the first '['.
        start = out.find("[")
        try:
            data = json.loads(out[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise SeedsError("'dvc exp show --json' did not print JSON") from None
    if not isinstance(data, list):
        raise SeedsError("'dvc exp show --json' printed an unknown format (DVC 3.x is needed)")
    return data


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _split_params(params_by_file: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """exp show's ``params`` -> (seed or None, flattened other params).

    ``params.yaml`` keys keep their dotted name, other params files are prefixed ``file:``.
    """
    seed = None
    flat: dict[str, Any] = {}
    for path, entry in (params_by_file or {}).items():
        data = (entry or {}).get("data") or {}
        for key, value in flatten(data).items():
            if path == PARAMS_FILE and key == SEED_KEY:
                seed = value
            else:
                flat[key if path == PARAMS_FILE else f"{path}:{key}"] = value
    return seed, flat


def _eval_json(data: dict[str, Any]) -> dict[str, Any] | None:
    entry = (data.get("metrics") or {}).get(EVAL_FILE) or {}
    result = entry.get("data")
    return result if isinstance(result, dict) and result else None


def _make_run(name: str, entry: dict[str, Any]) -> tuple[Run | None, str | None]:
    """One exp show revision entry -> (run, None) or (None, why it is skipped)."""
    data = entry.get("data") or {}
    seed, params = _split_params(data.get("params"))
    if seed is None:
        return None, f"no '{SEED_KEY}' in {PARAMS_FILE}"
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None, f"{SEED_KEY} {seed!r} is not an integer"
    metrics = _eval_json(data)
    if metrics is None:
        return None, f"no {EVAL_FILE}"
    rev = str(entry.get("rev") or data.get("rev") or "")
    return Run(name=name, rev=rev, seed=seed, params=params, metrics=metrics,
               timestamp=data.get("timestamp")), None


def parse_exp_show(data: list[dict[str, Any]]) -> Experiments:
    """Turn the output of ``dvc exp show --json`` (DVC 3.x) into runs.

    The format (one list entry per baseline; ``rev`` ``"workspace"`` first)::

        [{"rev": "workspace", "name": null, "error": null, "experiments": null,
          "data": {"rev": ..., "timestamp": null,
                   "params": {"params.yaml": {"data": {"seed": 2, ...}}},
                   "metrics": {"metrics/eval.json": {"data": {"scale_1.0": {"mIoU": ...}}}}, ...}},
         {"rev": "<sha>", "name": "main", "data": {...}, "error": null,
          "experiments": [{"name": "pithy-jube",
                           "executor": null | {"state": "queued|running|success|failed", ...},
                           "revs": [{"rev": "<sha>", "name": "pithy-jube", "data": {...},
                                     "error": null | {"msg": "Experiment run failed"}}]}]}]

    Baseline commits themselves are not runs (only their experiments are). A queue task that
    failed still carries the ``eval.json`` of the workspace it started from: entries with an
    ``error`` or an executor state other than ``success`` are skipped.
    """
    workspace_params: dict[str, Any] = {}
    workspace: Run | None = None
    runs: list[Run] = []
    skipped: list[str] = []
    for baseline in data:
        if not isinstance(baseline, dict):
            continue
        if baseline.get("rev") == "workspace":
            _, workspace_params = _split_params((baseline.get("data") or {}).get("params"))
            workspace, _ = _make_run("workspace", baseline)
            continue
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or []
            name = str(exp.get("name") or (revs[0].get("name") if revs else None) or "?")
            state = (exp.get("executor") or {}).get("state")
            if state not in (None, "success"):
                skipped.append(f"{name}: {state}")
                continue
            if not revs:
                skipped.append(f"{name}: no revision")
                continue
            if revs[0].get("error"):
                skipped.append(f"{name}: {(revs[0]['error'] or {}).get('msg') or 'error'}")
                continue
            run, why = _make_run(name, revs[0])
            if run is None:
                skipped.append(f"{name}: {why}")
            else:
                runs.append(run)
    return Experiments(workspace_params=workspace_params, workspace=workspace, runs=runs, skipped=skipped)


# --------------------------------------------------------------------------- grouping

@dataclass
class Group:
    """Runs that differ only in the seed (one per seed)."""
    params: dict[str, Any]            # the group's non-seed params
    runs: dict[int, Run]              # seed -> run
    is_workspace: bool                # its params are the workspace's
    duplicates: list[str] = field(default_factory=list)   # runs replaced by a newer one of the same seed

    def title(self, workspace_params: dict[str, Any]) -> str:
        if self.is_workspace:
            return "params as in the workspace's params.yaml"
        keys = sorted(set(self.params) | set(workspace_params))
        diff = [f"{k}={json.dumps(self.params[k]) if k in self.params else '<absent>'}"
                for k in keys if self.params.get(k, _ABSENT) != workspace_params.get(k, _ABSENT)]
        return "params.yaml with " + ", ".join(diff)


_ABSENT = object()


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def group_runs(experiments: Experiments, all_groups: bool = False,
               include_workspace: bool = False) -> list[Group]:
    """Group the runs whose params other than ``seed`` are equal.

    Default: the one group with the workspace's params (possibly empty). ``all_groups``: every
    group, the workspace's first, then in order of first appearance. Within a group one run per
    seed: the newest experiment (by commit time). ``include_workspace`` adds the workspace as a
    run of its group when its seed is not already there.
    """
    runs = list(experiments.runs)
    ws_key = _key(experiments.workspace_params)
    groups: dict[str, Group] = {ws_key: Group(dict(experiments.workspace_params), {}, True)}
    for run in sorted(runs, key=lambda r: r.timestamp or ""):   # oldest first: newer ones replace
        key = _key(run.params)
        group = groups.setdefault(key, Group(dict(run.params), {}, key == ws_key))
        if run.seed in group.runs:
            group.duplicates.append(f"{group.runs[run.seed].name} (seed {run.seed}, replaced by {run.name})")
        group.runs[run.seed] = run
    if include_workspace and experiments.workspace is not None:
        ws = experiments.workspace
        group = groups.setdefault(_key(ws.params), Group(dict(ws.params), {}, _key(ws.params) == ws_key))
        group.runs.setdefault(ws.seed, ws)
    for group in groups.values():
        group.runs = dict(sorted(group.runs.items()))
    if not all_groups:
        return [groups[ws_key]]
    return [g for g in groups.values() if g.runs]


# --------------------------------------------------------------------------- statistics (pure)

@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) of one value per seed."""
    mean: float
    std: float
    n: int
    values: dict[int, float]          # seed -> value

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "values": {str(s): v for s, v in self.values.items()}}


def mean_std(values: dict[int, float]) -> Stat:
    """m = (1/N) sum_i x_i ;  s = sqrt( sum_i (x_i - m)^2 / (N - 1) )  (needs N >= 2)."""
    xs = list(values.values())
    if len(xs) < 2:
        raise SeedsError(f"a standard deviation needs at least 2 seeds, got {len(xs)}")
    return Stat(mean=statistics.fmean(xs), std=statistics.stdev(xs), n=len(xs), values=dict(values))


@dataclass(frozen=True)
class Difference:
    """Paired difference d_i = HMS_i - baseline_i over the seeds i, and HMS's wins (d_i > 0)."""
    row: str
    stat: Stat
    wins: int
    ties: int

    def to_json(self) -> dict[str, Any]:
        return {**self.stat.to_json(), "wins": self.wins, "ties": self.ties}


def paired_difference(row: str, hms: dict[int, float], baseline: dict[int, float]) -> Difference:
    """d_i = hms_i - baseline_i for every seed i; mean +- sample std of the d_i; wins = #{d_i > 0}."""
    if set(hms) != set(baseline):
        raise SeedsError(f"row {row}: the seeds of HMS and the baseline differ")
    d = {seed: hms[seed] - baseline[seed] for seed in sorted(hms)}
    return Difference(row=row, stat=mean_std(d), wins=sum(v > 0 for v in d.values()),
                      ties=sum(v == 0 for v in d.values()))


@dataclass(frozen=True)
class Summary:
    """Everything one group's tables show."""
    seeds: list[int]
    metric: str                       # the metric of the differences (and the first column)
    metrics: list[str]                # the columns: metric, then pixel_acc
    hms: str                          # the main HMS row
    rows: dict[str, dict[str, Stat]]  # row -> metric -> Stat
    differences: list[Difference]     # HMS minus every other row, in row order
    dropped_rows: list[str]           # rows not every seed has (only with common_rows)

    def to_json(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "n": len(self.seeds), "metric": self.metric, "hms": self.hms,
                "unit": "fraction (eval.json); differences are fractions too",
                "rows": {r: {m: s.to_json() for m, s in stats.items()} for r, stats in self.rows.items()},
                "differences": {d.row: d.to_json() for d in self.differences},
                "dropped_rows": self.dropped_rows}


def lookup(row: dict[str, Any], metric: str) -> Any:
    """``row[metric]``; a dotted name walks nested dicts (``iou.flat`` -> ``row["iou"]["flat"]``)."""
    if metric in row:
        return row[metric]
    head, dot, rest = metric.partition(".")
    if dot and isinstance(row.get(head), dict):
        return lookup(row[head], rest)
    raise KeyError(metric)


def row_names(runs: dict[int, dict[str, Any]], common_rows: bool = False) -> tuple[list[str], list[str]]:
    """The table rows: the keys of eval.json whose value is a dict, in the first seed's order.

    Every seed must have the same rows; with ``common_rows`` the rows every seed has are used
    and the others returned as dropped. Returns (rows, dropped).
    """
    per_seed = {seed: [k for k, v in ev.items() if isinstance(v, dict)] for seed, ev in runs.items()}
    first = per_seed[min(per_seed)]
    union = list(dict.fromkeys(k for seed in sorted(per_seed) for k in per_seed[seed]))
    common = [k for k in union if all(k in names for names in per_seed.values())]
    dropped = [k for k in union if k not in common]
    if dropped and not common_rows:
        lacking = [f"seed {s} lacks {', '.join(k for k in dropped if k not in names)}"
                   for s, names in sorted(per_seed.items()) if any(k not in names for k in dropped)]
        raise SeedsError(f"the rows of {EVAL_FILE} differ between seeds ({'; '.join(lacking)}); "
                         "--common-rows keeps the rows every seed has")
    rows = [k for k in first if k in common] + [k for k in common if k not in first]
    if not rows:
        raise SeedsError(f"no row common to every seed's {EVAL_FILE}")
    return rows, dropped


def main_hms_row(rows: Iterable[str]) -> str:
    """The ``hms_*`` row with the most scales (``hms_0.5-1.0-2.0``: 3); the first such on a tie."""
    hms_rows = [r for r in rows if r.startswith(HMS_PREFIX)]
    if not hms_rows:
        raise SeedsError(f"no HMS row (named {HMS_PREFIX}...) in {EVAL_FILE}: choose one with --hms ROW")
    return max(hms_rows, key=lambda r: len(r[len(HMS_PREFIX):].split("-")))   # max keeps the first


def summarise(runs: dict[int, dict[str, Any]], metric: str = "mIoU", hms: str | None = None,
              common_rows: bool = False) -> Summary:
    """Aggregate ``{seed: eval.json}`` over the seeds.

    For every row r and each metric M in (``metric``, ``pixel_acc``): x_i = eval_i[r][M] for
    the seeds i = 1..N, mean m = (1/N) sum_i x_i, sample std s = sqrt(sum_i (x_i - m)^2 / (N-1)).
    For every row b other than the main HMS row H: the paired differences of ``metric``
    d_i = H_i - b_i, their mean and sample std, and the wins #{i : d_i > 0}.
    """
    if not runs:
        raise SeedsError("no runs to summarise")
    if len(runs) < 2:
        raise SeedsError(f"only one seed ({next(iter(runs))}); results over seeds need at least 2")
    rows, dropped = row_names(runs, common_rows)
    if hms is None:
        hms = main_hms_row(rows)
    elif hms not in rows:
        raise SeedsError(f"--hms {hms}: not a row of every seed's {EVAL_FILE} (rows: {', '.join(rows)})")
    metrics = list(dict.fromkeys([metric, SECONDARY_METRIC]))
    seeds = sorted(runs)
    table: dict[str, dict[str, Stat]] = {}
    for row in rows:
        table[row] = {}
        for m in metrics:
            values: dict[int, float] = {}
            for seed in seeds:
                try:
                    value = lookup(runs[seed][row], m)
                except KeyError:
                    raise SeedsError(f"row {row} of seed {seed} has no metric '{m}'") from None
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise SeedsError(f"row {row} of seed {seed}: '{m}' is {value!r}, not a finite number")
                values[seed] = float(value)
            table[row][m] = mean_std(values)
    differences = [paired_difference(row, table[hms][metric].values, table[row][metric].values)
                   for row in rows if row != hms]
    return Summary(seeds=seeds, metric=metric, metrics=metrics, hms=hms, rows=table,
                   differences=differences, dropped_rows=dropped)


def _pct(stat: Stat, signed: bool = False) -> str:
    mean = f"{100 * stat.mean:+.2f}" if signed else f"{100 * stat.mean:.2f}"
    return f"{mean} ± {100 * stat.std:.2f}"


def markdown(summary: Summary, title: str = "", runs: dict[int, str] | None = None) -> str:
    """Two markdown tables: each row's metrics as mean ± sample std in percent, with N; and the
    paired differences d_i = HMS_i - row_i in percentage points, with HMS's wins out of N."""
    n = len(summary.seeds)
    lines = [f"### {title}" if title else "### Results over seeds", ""]
    seeds = ", ".join(str(s) for s in summary.seeds)
    lines.append(f"Seeds {seeds} (N = {n}); mean ± sample std (ddof = 1) over the seeds, in %.")
    if runs:
        lines.append("Runs: " + ", ".join(f"seed {s} `{name}`" for s, name in sorted(runs.items())) + ".")
    if summary.dropped_rows:
        lines.append(f"Rows not in every seed, left out: {', '.join(summary.dropped_rows)}.")
    lines += ["", "| row | N | " + " | ".join(f"{m} (%)" for m in summary.metrics) + " |",
              "|---|---|" + "---|" * len(summary.metrics)]
    for row, stats in summary.rows.items():
        lines.append(f"| {row} | {n} | " + " | ".join(_pct(stats[m]) for m in summary.metrics) + " |")
    lines += ["", f"Paired differences of {summary.metric}, seed by seed: d_i = {summary.hms}_i - row_i, "
                  "mean ± sample std in percentage points; wins: the seeds with d_i > 0.", "",
              f"| {summary.hms} minus | N | Δ {summary.metric} (pp) | wins (d_i > 0) |", "|---|---|---|---|"]
    for d in summary.differences:
        ties = f" ({d.ties} tie{'s' if d.ties > 1 else ''})" if d.ties else ""
        lines.append(f"| {d.row} | {d.stat.n} | {_pct(d.stat, signed=True)} | {d.wins}/{d.stat.n}{ties} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

def report(experiments: Experiments, metric: str = "mIoU", hms: str | None = None, all_groups: bool = False,
           include_workspace: bool = False, common_rows: bool = False,
           notes: list[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Markdown and JSON of every group to print; ``notes`` collects lines for stderr."""
    notes = notes if notes is not None else []
    if experiments.skipped:
        notes.append("skipped experiments: " + "; ".join(experiments.skipped))
    if not experiments.runs and not (include_workspace and experiments.workspace):
        raise SeedsError("no finished experiments (run e.g. `dvc exp run --queue -S seed=0` ... and "
                         "`dvc queue start`)")
    groups = group_runs(experiments, all_groups, include_workspace)
    parts: list[str] = []
    numbers: list[dict[str, Any]] = []
    for group in groups:
        title = group.title(experiments.workspace_params)
        if group.duplicates:
            notes.append(f"{title}: older runs of the same seed not used: {'; '.join(group.duplicates)}")
        if len(group.runs) < 2:
            seeds = ", ".join(str(s) for s in group.runs) or "none"
            if not all_groups:
                others = len({_key(r.params) for r in experiments.runs} - {_key(experiments.workspace_params)})
                hint = f"; {others} other param set(s): --all" if others else ""
                raise SeedsError(f"fewer than 2 seeds with the workspace's params (seeds: {seeds}){hint}")
            notes.append(f"{title}: fewer than 2 seeds (seeds: {seeds}), not shown")
            continue
        summary = summarise({s: r.metrics for s, r in group.runs.items()}, metric, hms, common_rows)
        names = {s: r.name for s, r in group.runs.items()}
        parts.append(markdown(summary, title, names))
        numbers.append({"title": title, "params": group.params, "runs": {str(s): n for s, n in names.items()},
                        **summary.to_json()})
    if not parts:
        raise SeedsError("no group of experiments with 2 or more seeds")
    return "\n".join(parts), numbers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hms_core.tools.seeds",
        description="Mean ± sample std over seeds of the rows of metrics/eval.json in the DVC experiments, "
                    "and the paired differences of the main HMS row against every other row.")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: .)")
    parser.add_argument("--metric", default="mIoU",
                        help="metric of the first column and of the differences (default: mIoU; "
                             "a nested one as iou.CLASS)")
    parser.add_argument("--hms", metavar="ROW", help="the HMS row (default: the hms_* row with the most scales)")
    parser.add_argument("--all", action="store_true", dest="all_groups",
                        help="every group of experiments that differ only in seed "
                             "(default: the experiments with the workspace's other params)")
    parser.add_argument("--include-workspace", action="store_true",
                        help="count the workspace's metrics/eval.json as a run when its seed is not an experiment's")
    parser.add_argument("--common-rows", action="store_true",
                        help="use the rows every seed has instead of failing when they differ")
    parser.add_argument("--all-commits", "-A", action="store_true",
                        help="experiments of every commit (default: those derived from HEAD)")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers (fractions) to FILE")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    notes: list[str] = []
    try:
        experiments = parse_exp_show(read_exp_show(args.repo, args.all_commits))
        text, numbers = report(experiments, args.metric, args.hms, args.all_groups, args.include_workspace,
                               args.common_rows, notes)
    except SeedsError as exc:
        for note in notes:
            print(f"seeds: {note}", file=sys.stderr)
        print(f"seeds: error: {exc}", file=sys.stderr)
        sys.exit(1)
    for note in notes:
        print(f"seeds: {note}", file=sys.stderr)
    print(text, end="")
    if args.out or args.json:
        from hms_core.io import write_text  # imported here: printing the table needs no torch
        if args.out:
            write_text(args.out, text)
        if args.json:
            write_text(args.json, json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
