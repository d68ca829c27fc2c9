"""Results over seeds: the rows of ``metrics/eval.json`` as mean ± std over DVC experiments.

After ``dvc exp run --queue -S seed=0`` (1, 2, ...) and ``dvc queue start``, from the repository root:
``python -m hms_core.tools.seeds [--all] [--metric M] [--hms ROW] [--out FILE] [--json FILE]``.

``read_exp_show`` runs ``dvc exp show --json``, the only call to DVC: unlike ``dvc.api.exp_show()`` it
keeps eval.json nested (row names contain dots), the params per file, integer seeds and each queue
task's state. ``parse_exp_show`` keeps the finished experiments with an integer ``seed`` and an
eval.json; ``group_runs`` groups the runs whose other params are equal (by default the workspace's
params.yaml; ``--all``: every group), the newest run of a seed winning. For each row r of eval.json
(read, not hard-coded) and metric M (``--metric``, then ``pixel_acc``), ``summarise`` takes the
x_i = eval_i[r][M] of the N seeds i and gives

    mean m = (1/N) sum_i x_i   and sample std   s = sqrt( sum_i (x_i - m)^2 / (N - 1) )   (ddof = 1),

and, of the main HMS row a (the ``hms_*`` row with the most scales, or ``--hms``) against each other
row b, the paired difference d_i = row_a_i - row_b_i seed by seed, as mean ± s of the d_i, with the
wins #{d_i > 0} and ties #{d_i = 0}. ``markdown`` prints percent (eval.json holds fractions) and
differences in percentage points; ``--json`` writes the fractions. Errors a user can fix: one line, exit 1.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

EVAL_FILE = "metrics/eval.json"
PARAMS_FILE = "params.yaml"
SEED_KEY = "seed"
SECONDARY_METRIC = "pixel_acc"
HMS_PREFIX = "hms_"


class SeedsError(Exception):
    """A problem the user can fix from the message alone (printed as one line, exit 1)."""


@dataclass(frozen=True)
class Run:
    """A finished experiment (or the workspace); params flattened, seed apart, other files' as ``file:key``."""
    name: str
    rev: str
    seed: int
    params: dict[str, Any]
    metrics: dict[str, Any]          # metrics/eval.json
    timestamp: str | None = None     # of the experiment commit (None: the workspace)


@dataclass
class Experiments:
    """What ``parse_exp_show`` found: the workspace's params and run (None: no usable seed or eval.json)."""
    workspace_params: dict[str, Any]
    workspace: Run | None
    runs: list[Run] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # "name: why", a note on stderr


def read_exp_show(repo: str | Path = ".", all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` (``-A``: the experiments of every commit, not only HEAD's), parsed."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"] + ["-A"] * all_commits,
                              cwd=repo, capture_output=True, text=True)
    except OSError as exc:
        raise SeedsError(f"cannot run dvc: {exc}") from None
    if proc.returncode != 0:
        last = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-1:]
        raise SeedsError(f"'dvc exp show --json' failed in {Path(repo).resolve()}: "
                         f"{last[0] if last else f'exit status {proc.returncode}'}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        try:  # a warning printed on stdout before the JSON: parse from the first '['
            data = json.loads(proc.stdout[proc.stdout.index("["):])
        except ValueError:
            raise SeedsError("'dvc exp show --json' did not print JSON") from None
    if not isinstance(data, list):
        raise SeedsError("'dvc exp show --json' printed an unknown format (DVC 3.x is needed)")
    return data


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists, scalars and empty dicts are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def _make_run(name: str, entry: dict[str, Any]) -> tuple[Run | None, str, dict[str, Any]]:
    """An exp show revision entry -> (run or None, why it is skipped, its params without the seed)."""
    data = entry.get("data") or {}
    params = {key if path == PARAMS_FILE else f"{path}:{key}": value
              for path, file in (data.get("params") or {}).items()
              for key, value in flatten((file or {}).get("data") or {}).items()}
    seed = params.pop(SEED_KEY, None)   # only params.yaml's seed has no "file:" prefix
    metrics = ((data.get("metrics") or {}).get(EVAL_FILE) or {}).get("data")
    if seed is None:
        return None, f"no '{SEED_KEY}' in {PARAMS_FILE}", params
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None, f"{SEED_KEY} {seed!r} is not an integer", params
    if not (isinstance(metrics, dict) and metrics):
        return None, f"no {EVAL_FILE}", params
    rev = str(entry.get("rev") or data.get("rev") or "")
    return Run(name, rev, seed, params, metrics, data.get("timestamp")), "", params


def parse_exp_show(data: list[dict[str, Any]]) -> Experiments:
    """``dvc exp show --json`` (DVC 3.x) -> runs: the ``experiments`` of each baseline commit, ``{"name",
    "executor": null | {"state"}, "revs": [{"rev", "error", "data": {"timestamp", "params": {file: {"data"}},
    "metrics": {file: {"data"}}}}]}``; the ``"workspace"`` entry gives the workspace's params. A failed
    queue task still shows the eval.json it started from: an ``error``, or a state but ``success``, skips."""
    found = Experiments({}, None)
    for baseline in (b for b in data if isinstance(b, dict)):
        if baseline.get("rev") == "workspace":
            found.workspace, _, found.workspace_params = _make_run("workspace", baseline)
            continue
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or []
            name = str(exp.get("name") or (revs[0].get("name") if revs else None) or "?")
            state = (exp.get("executor") or {}).get("state")
            if state not in (None, "success"):
                run, why = None, state
            elif not revs:
                run, why = None, "no revision"
            elif revs[0].get("error"):
                run, why = None, (revs[0]["error"] or {}).get("msg") or "error"
            else:
                run, why, _ = _make_run(name, revs[0])
            if run is None:
                found.skipped.append(f"{name}: {why}")
            else:
                found.runs.append(run)
    return found


@dataclass
class Group:
    """Runs that differ only in the seed: seed -> run, and the runs a newer one of their seed replaced."""
    params: dict[str, Any]
    runs: dict[int, Run]
    is_workspace: bool
    duplicates: list[str] = field(default_factory=list)

    def title(self, workspace_params: dict[str, Any]) -> str:
        if self.is_workspace:
            return "params as in the workspace's params.yaml"
        keys, absent = sorted(set(self.params) | set(workspace_params)), object()
        return "params.yaml with " + ", ".join(
            f"{k}={json.dumps(self.params[k]) if k in self.params else '<absent>'}"
            for k in keys if self.params.get(k, absent) != workspace_params.get(k, absent))


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def group_runs(experiments: Experiments, all_groups: bool = False,
               include_workspace: bool = False) -> list[Group]:
    """The group of the workspace's params, or with ``all_groups`` every group with runs (the workspace's
    first, then by first appearance in time). One run per seed, the newest by commit time;
    ``include_workspace`` adds the workspace's eval.json for a seed no experiment of its group has."""
    ws_key, ws = _key(experiments.workspace_params), experiments.workspace
    runs = ([ws] if include_workspace and ws is not None else []) + experiments.runs
    df = pd.DataFrame({"run": pd.Series(runs, dtype=object), "seed": [r.seed for r in runs],
                       "key": [_key(r.params) for r in runs], "exp": [r is not ws for r in runs],
                       "ts": [r.timestamp or "" for r in runs]})
    # The workspace first, then the experiments oldest first (stable): the last run of a (params, seed) is
    # the one kept, and each run names the one it replaces, in time order.
    df = df.sort_values(["exp", "ts"], kind="stable").reset_index(drop=True)
    df["old"] = df.groupby(["key", "seed"], sort=False)["run"].shift(1)
    groups = []
    for key in dict.fromkeys([ws_key, *df["key"][df["exp"]], *df["key"]]):   # the workspace's own run last
        g = df[df["key"] == key]
        kept = g.drop_duplicates("seed", keep="last").sort_values("seed")
        # the group's params: the workspace's, else its first experiment's (idxmax: the first True)
        params = experiments.workspace_params if key == ws_key else g["run"][g["exp"].idxmax()].params
        groups.append(Group(dict(params), dict(zip(kept["seed"], kept["run"])), key == ws_key,
                            [f"{old.name} (seed {old.seed}, replaced by {run.name})" for old, run
                             in zip(g["old"], g["run"]) if isinstance(old, Run) and old is not ws]))
    return [g for g in groups if g.runs] if all_groups else groups[:1]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) of one value per seed (fields in --json's order)."""
    n: int
    mean: float
    std: float
    values: dict[int, float]          # seed -> value


@dataclass(frozen=True)
class Difference:
    """Paired difference d_i = HMS_i - baseline_i over the seeds i, HMS's wins (d_i > 0) and ties."""
    row: str
    stat: Stat
    wins: int
    ties: int


@dataclass(frozen=True)
class Summary:
    """One group's tables: row -> metric -> Stat, and the main HMS row minus every other row."""
    seeds: list[int]
    metric: str                       # of the differences and the first column
    metrics: list[str]
    hms: str
    rows: dict[str, dict[str, Stat]]
    differences: list[Difference]
    dropped_rows: list[str]           # rows not every seed has (only with common_rows)


def mean_std(values: dict[int, float] | pd.Series) -> Stat:
    """m = (1/N) sum_i x_i ;  s = sqrt( sum_i (x_i - m)^2 / (N - 1) )  (needs N >= 2)."""
    x = pd.Series(values, dtype=float)
    if len(x) < 2:
        raise SeedsError(f"a standard deviation needs at least 2 seeds, got {len(x)}")
    # The stdlib's correctly rounded fmean/stdev, not x.mean()/x.std(): pandas sums in plain floats and
    # differs in the last bit (one number in 12 on the tests' data), which --json would print.
    return Stat(n=len(x), mean=statistics.fmean(x), std=statistics.stdev(x), values=x.to_dict())


def paired_difference(row: str, hms: dict[int, float] | pd.Series,
                      baseline: dict[int, float] | pd.Series) -> Difference:
    """d_i = hms_i - baseline_i for every seed i; mean ± sample std of the d_i; wins = #{d_i > 0}."""
    hms, baseline = pd.Series(hms, dtype=float), pd.Series(baseline, dtype=float)
    if set(hms.index) != set(baseline.index):
        raise SeedsError(f"row {row}: the seeds of HMS and the baseline differ")
    d = (hms - baseline).sort_index()   # pandas pairs the values by seed
    return Difference(row, mean_std(d), wins=int((d > 0).sum()), ties=int((d == 0).sum()))


def lookup(row: dict[str, Any], metric: str) -> Any:
    """``row[metric]``; a dotted name walks nested dicts (``iou.flat`` -> ``row["iou"]["flat"]``)."""
    head, dot, rest = metric.partition(".")
    if metric not in row and dot and isinstance(row.get(head), dict):
        return lookup(row[head], rest)
    return row[metric]


def _number(runs: dict[int, dict[str, Any]], row: str, metric: str, seed: int) -> float:
    try:
        value = lookup(runs[seed][row], metric)
    except KeyError:
        raise SeedsError(f"row {row} of seed {seed} has no metric '{metric}'") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SeedsError(f"row {row} of seed {seed}: '{metric}' is {value!r}, not a finite number")
    return float(value)


def main_hms_row(rows: Iterable[str]) -> str:
    """The ``hms_*`` row with the most scales (``hms_0.5-1.0-2.0``: 3); the first such on a tie."""
    hms_rows = [r for r in rows if r.startswith(HMS_PREFIX)]
    if not hms_rows:
        raise SeedsError(f"no HMS row (named {HMS_PREFIX}...) in {EVAL_FILE}: choose one with --hms ROW")
    return max(hms_rows, key=lambda r: len(r[len(HMS_PREFIX):].split("-")))   # max keeps the first


def summarise(runs: dict[int, dict[str, Any]], metric: str = "mIoU", hms: str | None = None,
              common_rows: bool = False) -> Summary:
    """``{seed: eval.json}`` -> mean and sample std over the seeds of ``metric`` and ``pixel_acc`` of each row
    (a key of eval.json whose value is a dict, in the first seed's order; with ``common_rows``, the rows
    every seed has), and the paired differences of ``metric``: the main HMS row minus each other row."""
    if len(runs) < 2:
        raise SeedsError(f"only one seed ({next(iter(runs))}); results over seeds need at least 2" if runs
                         else "no runs to summarise")
    seeds = sorted(runs)
    has = pd.DataFrame([{k: 1 for k, v in runs[s].items() if isinstance(v, dict)} for s in seeds],
                       index=seeds).notna()   # seed x row, the rows in order of first appearance
    rows, dropped = has.columns[has.all()].tolist(), has.columns[~has.all()].tolist()
    if dropped and not common_rows:
        lacking = "; ".join(f"seed {s} lacks {', '.join(has.columns[~has.loc[s]])}"
                            for s in seeds if not has.loc[s].all())
        raise SeedsError(f"the rows of {EVAL_FILE} differ between seeds ({lacking}); "
                         "--common-rows keeps the rows every seed has")
    if not rows:
        raise SeedsError(f"no row common to every seed's {EVAL_FILE}")
    if hms is not None and hms not in rows:
        raise SeedsError(f"--hms {hms}: not a row of every seed's {EVAL_FILE} (rows: {', '.join(rows)})")
    hms, metrics = main_hms_row(rows) if hms is None else hms, list(dict.fromkeys([metric, SECONDARY_METRIC]))
    # seed x (row, metric), read row by row, metric by metric, seed by seed: the first bad value is reported
    table = pd.DataFrame({(r, m): [_number(runs, r, m, s) for s in seeds] for r in rows for m in metrics},
                         index=seeds)
    x = table.xs(metric, axis=1, level=1)   # seed x row, the metric of the differences
    return Summary(seeds, metric, metrics, hms, {r: {m: mean_std(table[(r, m)]) for m in metrics} for r in rows},
                   [paired_difference(r, x[hms], x[r]) for r in rows if r != hms], dropped)


def _pct(stat: Stat, sign: str = "") -> str:
    return f"{100 * stat.mean:{sign}.2f} ± {100 * stat.std:.2f}"


def markdown(summary: Summary, title: str = "", runs: dict[int, str] | None = None) -> str:
    """Each row's metrics as mean ± sample std in percent, with N; the paired differences
    d_i = HMS_i - row_i in percentage points, with HMS's wins out of N."""
    s, n = summary, len(summary.seeds)
    lines = [f"### {title or 'Results over seeds'}", "",
             f"Seeds {', '.join(map(str, s.seeds))} (N = {n}); mean ± sample std (ddof = 1) over the seeds, in %."]
    lines += ["Runs: " + ", ".join(f"seed {k} `{name}`" for k, name in sorted(runs.items())) + "."] if runs else []
    lines += [f"Rows not in every seed, left out: {', '.join(s.dropped_rows)}."] if s.dropped_rows else []
    lines += ["", "| row | N | " + " | ".join(f"{m} (%)" for m in s.metrics) + " |",
              "|---|---|" + "---|" * len(s.metrics)]
    lines += [f"| {row} | {n} | " + " | ".join(_pct(stats[m]) for m in s.metrics) + " |"
              for row, stats in s.rows.items()]
    lines += ["", f"Paired differences of {s.metric}, seed by seed: d_i = {s.hms}_i - row_i, mean ± sample std "
                  "in percentage points; wins: the seeds with d_i > 0.", "",
              f"| {s.hms} minus | N | Δ {s.metric} (pp) | wins (d_i > 0) |", "|---|---|---|---|"]
    lines += [f"| {d.row} | {d.stat.n} | {_pct(d.stat, '+')} | {d.wins}/{d.stat.n}"
              + (f" ({d.ties} tie{'s' if d.ties > 1 else ''})" if d.ties else "") + " |" for d in s.differences]
    return "\n".join(lines) + "\n"


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
    parts, numbers = [], []
    for group in group_runs(experiments, all_groups, include_workspace):
        title, seeds = group.title(experiments.workspace_params), ", ".join(map(str, group.runs)) or "none"
        if group.duplicates:
            notes.append(f"{title}: older runs of the same seed not used: {'; '.join(group.duplicates)}")
        if len(group.runs) < 2 and not all_groups:
            others = len({_key(r.params) for r in experiments.runs} - {_key(experiments.workspace_params)})
            raise SeedsError(f"fewer than 2 seeds with the workspace's params (seeds: {seeds})"
                             + (f"; {others} other param set(s): --all" if others else ""))
        if len(group.runs) < 2:
            notes.append(f"{title}: fewer than 2 seeds (seeds: {seeds}), not shown")
            continue
        s = summarise({seed: r.metrics for seed, r in group.runs.items()}, metric, hms, common_rows)
        names = {seed: r.name for seed, r in group.runs.items()}
        parts.append(markdown(s, title, names))
        # asdict keeps the field order; json.dumps writes the int seeds of "values" as strings
        numbers.append({"title": title, "params": group.params, "runs": names, "seeds": s.seeds,
                        "n": len(s.seeds), "metric": s.metric, "hms": s.hms,
                        "unit": "fraction (eval.json); differences are fractions too",
                        "rows": {r: {m: asdict(st) for m, st in ms.items()} for r, ms in s.rows.items()},
                        "differences": {d.row: {**asdict(d.stat), "wins": d.wins, "ties": d.ties}
                                        for d in s.differences},
                        "dropped_rows": s.dropped_rows})
    if not parts:
        raise SeedsError("no group of experiments with 2 or more seeds")
    return "\n".join(parts), numbers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hms seeds", description=(
        "Mean ± sample std over seeds of the rows of metrics/eval.json in the DVC experiments, "
        "and the paired differences of the main HMS row against every other row."))
    add = parser.add_argument
    add("--repo", default=".", help="the DVC repository (default: .)")
    add("--metric", default="mIoU",
        help="metric of the first column and of the differences (default: mIoU; a nested one as iou.CLASS)")
    add("--hms", metavar="ROW", help="the HMS row (default: the hms_* row with the most scales)")
    add("--all", action="store_true", dest="all_groups", help="every group of experiments that differ only in "
        "seed (default: the experiments with the workspace's other params)")
    add("--include-workspace", action="store_true",
        help="count the workspace's metrics/eval.json as a run when its seed is not an experiment's")
    add("--common-rows", action="store_true",
        help="use the rows every seed has instead of failing when they differ")
    add("--all-commits", "-A", action="store_true",
        help="experiments of every commit (default: those derived from HEAD)")
    add("--out", metavar="FILE", help="also write the markdown to FILE")
    add("--json", metavar="FILE", help="also write the numbers (fractions) to FILE")
    return parser


def main(argv: list[str] | None = None) -> None:
    args, notes = build_parser().parse_args(argv), []
    try:
        text, numbers = report(parse_exp_show(read_exp_show(args.repo, args.all_commits)), args.metric, args.hms,
                               args.all_groups, args.include_workspace, args.common_rows, notes)
    except SeedsError as exc:
        print("".join(f"seeds: {note}\n" for note in notes) + f"seeds: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print("".join(f"seeds: {note}\n" for note in notes), end="", file=sys.stderr)
    print(text, end="")
    if args.out or args.json:
        from hms_core.io import write_text  # imported here: printing the table needs no torch
        for path, content in ((args.out, text), (args.json, json.dumps(numbers, indent=2) + "\n")):
            if path:
                write_text(path, content)


if __name__ == "__main__":
    main()
