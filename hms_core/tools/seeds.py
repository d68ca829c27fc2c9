"""Results over seeds: the rows of ``metrics/eval.json`` as mean ± std over DVC experiments.

After ``dvc exp run --queue -S seed=0`` (1, 2, ...) and ``dvc queue start``:
``hms seeds [--all] [--metric M] [--hms ROW] [--out FILE] [--json FILE]``. ``dvc exp show --json`` keeps
eval.json nested (row names hold dots), the params per file and each queue task's state. The finished
experiments whose params other than ``seed`` equal the workspace's (``--all``: every such group) are
summarised, the newest run of a seed winning: each row's mean m = (1/N) sum_i x_i and sample std
s = sqrt( sum_i (x_i - m)^2 / (N - 1) ), and the paired differences d_i = a_i - b_i of the main HMS row a
minus each other row b, with the wins #{d_i > 0}; the statistics and tables are ``hms report``'s
(hms_core/tools/report.py). Percent in the markdown, fractions in ``--json``. Errors: one line, exit 1.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from hms_core.tools.report import (HMS_PREFIX, SEED, ReportError, Summary, difference_lines, flatten, is_number,
                                   param_differences, params_key, score_lines, summarise_table, write_atomic)
from hms_core.tools.report import mean_std, paired_difference  # noqa: F401 (hms seeds' statistics, as before)

EVAL_FILE, PARAMS_FILE, SECONDARY_METRIC = "metrics/eval.json", "params.yaml", "pixel_acc"
SeedsError = ReportError   # the statistics raise it too: one error line, exit 1, for both commands


@dataclass(frozen=True)
class Run:
    """A finished experiment (or the workspace); params flattened, seed apart, other files' as ``file:key``."""
    name: str
    seed: int
    params: dict[str, Any]
    metrics: dict[str, Any]          # metrics/eval.json
    timestamp: str | None = None     # of the experiment commit (None: the workspace)


@dataclass
class Experiments:
    """The workspace's params and run (None: no usable seed or eval.json), the experiments, the skipped."""
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
    try:   # from the first '[': a warning may come before the JSON
        data = json.loads(proc.stdout[proc.stdout.index("["):])
    except ValueError:
        raise SeedsError("'dvc exp show --json' did not print a JSON list (DVC 3.x is needed)") from None
    return data


def _make_run(name: str, entry: dict[str, Any]) -> tuple[Run | None, str, dict[str, Any]]:
    """An exp show revision entry -> (run or None, why it is skipped, its params without the seed)."""
    data = entry.get("data") or {}
    params = {key if path == PARAMS_FILE else f"{path}:{key}": value
              for path, file in (data.get("params") or {}).items()
              for key, value in flatten((file or {}).get("data") or {}).items()}
    seed = params.pop(SEED, None)   # only params.yaml's seed has no "file:" prefix
    metrics = ((data.get("metrics") or {}).get(EVAL_FILE) or {}).get("data")
    if seed is None:
        return None, f"no '{SEED}' in {PARAMS_FILE}", params
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None, f"{SEED} {seed!r} is not an integer", params
    if not (isinstance(metrics, dict) and metrics):
        return None, f"no {EVAL_FILE}", params
    return Run(name, seed, params, metrics, data.get("timestamp")), "", params


def parse_exp_show(data: list[dict[str, Any]]) -> Experiments:
    """``dvc exp show --json`` (DVC 3.x: per baseline commit ``{"experiments": [{"name", "executor": null |
    {"state"}, "revs": [{"error", "data": {"timestamp", "params", "metrics"}}]}]}``, and a ``"workspace"``
    entry) -> runs. A failed queue task still shows the eval.json it started from: it is skipped."""
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
        changed, missing = param_differences(self.params, workspace_params)
        shown = {**{k: json.dumps(v) for k, v in changed.items()}, **dict.fromkeys(missing, "<absent>")}
        return "params.yaml with " + ", ".join(f"{k}={shown[k]}" for k in sorted(shown))


def group_runs(experiments: Experiments, all_groups: bool = False, include_workspace: bool = False) -> list[Group]:
    """The group of the workspace's params, or with ``all_groups`` every group with runs (the workspace's
    first, then by first appearance in time). One run per seed, the newest by commit time;
    ``include_workspace`` adds the workspace's eval.json for a seed no experiment of its group has."""
    ws, ws_key = experiments.workspace, params_key(experiments.workspace_params)
    # The workspace first, then oldest first: the last run of a (params, seed) is kept; each names the one it replaces.
    runs = ([ws] if include_workspace and ws else []) + sorted(experiments.runs, key=lambda r: r.timestamp or "")
    df = pd.DataFrame({"run": pd.Series(runs, dtype=object), "seed": [r.seed for r in runs],
                       "key": [params_key(r.params) for r in runs]})
    df["old"] = df.groupby(["key", "seed"])["run"].shift(1)
    groups = []
    for key in dict.fromkeys([ws_key, *df["key"]]):
        g = df[df["key"] == key]
        kept = g.drop_duplicates("seed", keep="last").sort_values("seed")
        groups.append(Group(dict(experiments.workspace_params if key == ws_key else g["run"].iloc[0].params),
                            dict(zip(kept["seed"], kept["run"])), key == ws_key,
                            [f"{old.name} (seed {old.seed}, replaced by {run.name})" for old, run
                             in zip(g["old"], g["run"]) if isinstance(old, Run) and old is not ws]))
    return [g for g in groups if g.runs] if all_groups else groups[:1]


def _number(eval_json: dict[str, Any], row: str, metric: str, seed: int) -> float:
    """``eval_json[row][metric]``; a dotted metric walks nested dicts (``iou.flat``)."""
    value: Any = eval_json[row]
    for part in [metric] if metric in value else metric.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SeedsError(f"row {row} of seed {seed} has no metric '{metric}'")
        value = value[part]
    if not is_number(value):
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
    table = pd.DataFrame({(r, m): [_number(runs[s], r, m, s) for s in seeds] for r in rows for m in metrics},
                         index=seeds)
    return summarise_table(table, metric, hms, dropped)


def markdown(s: Summary, title: str = "", runs: dict[int, str] | None = None) -> str:
    """Each row's metrics as mean ± sample std in percent, with N; the paired differences
    d_i = HMS_i - row_i in percentage points, with HMS's wins out of N."""
    lines = [f"### {title or 'Results over seeds'}", "", f"Seeds {', '.join(map(str, s.seeds))} (N = {len(s.seeds)}); "
             "mean ± sample std (ddof = 1) over the seeds, in %."]
    lines += ["Runs: " + ", ".join(f"seed {k} `{name}`" for k, name in sorted(runs.items())) + "."] if runs else []
    lines += [f"Rows not in every seed, left out: {', '.join(s.dropped_rows)}."] if s.dropped_rows else []
    lines += ["", *score_lines(s), "", f"Paired differences of {s.metric}, seed by seed: d_i = {s.hms}_i - row_i, "
              "mean ± sample std in percentage points; wins: the seeds with d_i > 0.", "", *difference_lines(s)]
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
            others = len({params_key(r.params) for r in experiments.runs} - {params_key(experiments.workspace_params)})
            raise SeedsError(f"fewer than 2 seeds with the workspace's params (seeds: {seeds})"
                             + (f"; {others} other param set(s): --all" if others else ""))
        if len(group.runs) < 2:
            notes.append(f"{title}: fewer than 2 seeds (seeds: {seeds}), not shown")
            continue
        s = summarise({seed: r.metrics for seed, r in group.runs.items()}, metric, hms, common_rows)
        names = {seed: r.name for seed, r in group.runs.items()}
        parts.append(markdown(s, title, names))
        # json.dumps writes the int seeds of "values" as strings
        numbers.append({"title": title, "params": group.params, "runs": names, "seeds": s.seeds, "n": len(s.seeds),
                        "metric": s.metric, "hms": s.hms, "unit": "fraction (eval.json); differences are fractions too",
                        "rows": {r: {m: st._asdict() for m, st in ms.items()} for r, ms in s.rows.items()},
                        "differences": {d.row: {**d.stat._asdict(), "wins": d.wins, "ties": d.ties}
                                        for d in s.differences}, "dropped_rows": s.dropped_rows})
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
    add("--common-rows", action="store_true", help="use the rows every seed has instead of failing when they differ")
    add("--all-commits", "-A", action="store_true", help="experiments of every commit (default: those of HEAD)")
    add("--out", metavar="FILE", help="also write the markdown to FILE")
    add("--json", metavar="FILE", help="also write the numbers (fractions) to FILE")
    return parser


def main(argv: list[str] | None = None) -> None:
    args, notes, text = build_parser().parse_args(argv), [], None
    try:
        text, numbers = report(parse_exp_show(read_exp_show(args.repo, args.all_commits)), args.metric, args.hms,
                               args.all_groups, args.include_workspace, args.common_rows, notes)
    except SeedsError as exc:
        notes.append(f"error: {exc}")
    print("".join(f"seeds: {note}\n" for note in notes), end="", file=sys.stderr)
    if text is None:
        sys.exit(1)
    print(text, end="")
    for path, content in ((args.out, text), (args.json, json.dumps(numbers, indent=2) + "\n")):
        if path:
            write_atomic(Path(path), content.encode("utf-8"))


if __name__ == "__main__":
    main()
