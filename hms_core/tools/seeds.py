"""``hms seeds``: the rows of ``metrics/eval.json`` as mean ± std over DVC experiments (``dvc exp run --queue
-S seed=0`` ...). The finished experiments whose params other than ``seed`` equal the workspace's (``--all``:
every such group), the newest run of a seed winning: each row's mean m = (1/N) sum_i x_i, sample std
s = sqrt( sum_i (x_i - m)^2 / (N - 1) ), and the paired differences d_i = a_i - b_i of the main HMS row a minus
each other row b with the wins #{d_i > 0}, by ``hms report``'s statistics. Percent in the markdown, fractions
in ``--json``."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from hms_core.tools.report import (HMS_PREFIX, SEED, ReportError, Summary, difference_lines, flatten, is_number,
                                   param_differences, params_key, score_lines, summarise_table,
                                   write_bytes)

EVAL_FILE, PARAMS_FILE, SECONDARY_METRIC = "metrics/eval.json", "params.yaml", "pixel_acc"
WORKSPACE = "workspace"
SeedsError = ReportError   # the statistics raise it too: a ValueError, one error line from hms


def read_exp_show(repo: str | Path = ".", all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` (``-A``: the experiments of every commit, not only HEAD's), parsed."""
    if not Path(repo).is_dir():
        raise SeedsError(f"--repo {repo}: not a folder")
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"] + ["-A"] * all_commits,
                          cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-1:]
        raise SeedsError(f"'dvc exp show --json' failed in {Path(repo).resolve()}: "
                         f"{last[0] if last else f'exit status {proc.returncode}'}")
    try:   # from the first '[': a warning may come before the JSON
        return json.loads(proc.stdout[proc.stdout.index("["):])
    except ValueError:
        raise SeedsError("'dvc exp show --json' did not print a JSON list (DVC 3.x is needed)") from None


def _revision(name: str, rev: dict[str, Any], state: str | None) -> dict[str, Any]:
    """A revision ``{"error", "data": {"timestamp", "params", "metrics"}}`` -> a line of :func:`parse_exp_show`."""
    data = rev.get("data") or {}
    params = {key if path == PARAMS_FILE else f"{path}:{key}": value   # other params files' keys as file:key
              for path, file in (data.get("params") or {}).items()
              for key, value in flatten((file or {}).get("data") or {}).items()}
    seed = params.pop(SEED, None)   # only params.yaml's seed has no "file:" prefix
    metrics = ((data.get("metrics") or {}).get(EVAL_FILE) or {}).get("data")
    return {"name": name, "seed": seed, "params": params, "key": params_key(params), "metrics": metrics,
            "time": data.get("timestamp") or "", "why": _why_no_run(state, rev.get("error"), seed, metrics)}


def _why_no_run(state: str | None, error: Any, seed: Any, metrics: Any) -> str:
    """Why a revision is no run ("" when it is one): the first of its queue state, its error, its seed,
    its eval.json that fails."""
    if state not in (None, "success"):
        return state
    if error:
        return error.get("msg") or "error"
    if seed is None:
        return f"no '{SEED}' in {PARAMS_FILE}"
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"{SEED} {seed!r} is not an integer"
    return "" if isinstance(metrics, dict) and metrics else f"no {EVAL_FILE}"


def parse_exp_show(data: list[dict[str, Any]]) -> pd.DataFrame:
    """``dvc exp show --json`` (DVC 3.x: a ``"workspace"`` revision, then per baseline commit ``{"experiments":
    [{"name", "executor": null | {"state"}, "revs": [revision]}]}``) -> a line per experiment, the workspace
    first: name, seed, params (flattened, seed apart), their key, eval.json, commit time, why it is no run ("":
    a run; a failed queue task shows the eval.json it started from, and is none)."""
    lines = []
    for baseline in (b for b in data if isinstance(b, dict)):
        if baseline.get("rev") == WORKSPACE:
            lines.insert(0, _revision(WORKSPACE, {**baseline, "error": None}, None))
            continue
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or [{"error": {"msg": "no revision"}}]
            lines.append(_revision(str(exp.get("name") or revs[0].get("name") or "?"), revs[0],
                                   (exp.get("executor") or {}).get("state")))
    return pd.DataFrame(lines, columns=["name", "seed", "params", "key", "metrics", "time", "why"])


def group_runs(exps: pd.DataFrame, all_groups: bool = False, include_workspace: bool = False
               ) -> list[tuple[str, dict[str, Any], pd.DataFrame, list[str]]]:
    """(title, params, the runs by seed, the runs a newer one of their seed replaced) of the group of the
    workspace's params, or with ``all_groups`` of every group with runs (the workspace's first, then by first
    appearance in time). ``include_workspace`` counts the workspace's eval.json for a seed no experiment
    of its group has."""
    ws = exps[exps["name"] == WORKSPACE]
    ws_params = ws["params"].iloc[0] if len(ws) else {}
    # The workspace first, then oldest first: the last run of a (params, seed) is kept.
    runs = pd.concat([ws] * include_workspace + [exps[exps["name"] != WORKSPACE].sort_values("time", kind="stable")])
    runs = runs[runs["why"] == ""].assign(old=lambda d: d.groupby(["key", "seed"])["name"].shift(1))
    groups = []
    for key in dict.fromkeys([params_key(ws_params), *runs["key"]]):
        g = runs[runs["key"] == key]
        params = g["params"].iloc[0] if groups else ws_params
        changed, missing = param_differences(params, ws_params)
        shown = {**{k: json.dumps(v) for k, v in changed.items()}, **dict.fromkeys(missing, "<absent>")}
        title = ("params.yaml with " + ", ".join(f"{k}={shown[k]}" for k in sorted(shown)) if groups
                 else "params as in the workspace's params.yaml")
        groups.append((title, params, g.drop_duplicates("seed", keep="last").sort_values("seed").set_index("seed"),
                       [f"{o} (seed {s}, replaced by {n})" for o, s, n in zip(g["old"], g["seed"], g["name"])
                        if isinstance(o, str) and o != WORKSPACE]))
    return [g for g in groups if len(g[2])] if all_groups else groups[:1]


def _number(eval_json: dict[str, Any], row: str, metric: str, seed: int) -> float:
    """``eval_json[row][metric]``; a dotted metric names a nested one (``iou.flat``)."""
    if (value := flatten(eval_json[row]).get(metric, KeyError)) is KeyError:
        raise SeedsError(f"row {row} of seed {seed} has no metric '{metric}'")
    if is_number(value):
        return float(value)
    raise SeedsError(f"row {row} of seed {seed}: '{metric}' is {value!r}, not a finite number")


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


def markdown(s: Summary, title: str, runs: dict[int, str]) -> str:
    """Each row's metrics as mean ± sample std in percent, with N; the paired differences
    d_i = HMS_i - row_i in percentage points, with HMS's wins out of N."""
    lines = [f"### {title}", "", f"Seeds {', '.join(map(str, s.seeds))} (N = {len(s.seeds)}); "
             "mean ± sample std (ddof = 1) over the seeds, in %.",
             "Runs: " + ", ".join(f"seed {k} `{name}`" for k, name in sorted(runs.items())) + "."]
    lines += [f"Rows not in every seed, left out: {', '.join(s.dropped_rows)}."] if s.dropped_rows else []
    lines += ["", *score_lines(s), "", f"Paired differences of {s.metric}, seed by seed: d_i = {s.hms}_i - row_i, "
              "mean ± sample std in percentage points; wins: the seeds with d_i > 0.", "", *difference_lines(s)]
    return "\n".join(lines) + "\n"


def report(exps: pd.DataFrame, metric: str = "mIoU", hms: str | None = None, all_groups: bool = False,
           include_workspace: bool = False, common_rows: bool = False,
           notes: list[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Markdown and ``--json``'s numbers of every group to print; ``notes`` collects lines for stderr."""
    notes = notes if notes is not None else []
    done, is_exp = exps["why"] == "", exps["name"] != WORKSPACE
    skipped = exps[~done & is_exp]
    notes += ["skipped experiments: " + "; ".join(skipped["name"] + ": " + skipped["why"])] if len(skipped) else []
    if not (done & (is_exp | include_workspace)).any():
        raise SeedsError("no finished experiments (run e.g. `dvc exp run --queue -S seed=0` ... and "
                         "`dvc queue start`)")
    parts, numbers = [], []
    for title, params, runs, replaced in group_runs(exps, all_groups, include_workspace):
        notes += [f"{title}: older runs of the same seed not used: {'; '.join(replaced)}"] if replaced else []
        seeds, names = ", ".join(map(str, runs.index)) or "none", runs["name"].to_dict()
        if len(runs) < 2 and not all_groups:
            others = exps.loc[done & is_exp & (exps["key"] != params_key(params)), "key"].nunique()
            raise SeedsError(f"fewer than 2 seeds with the workspace's params (seeds: {seeds})"
                             + (f"; {others} other param set(s): --all" if others else ""))
        if len(runs) < 2:
            notes.append(f"{title}: fewer than 2 seeds (seeds: {seeds}), not shown")
            continue
        s = summarise(runs["metrics"].to_dict(), metric, hms, common_rows)
        parts.append(markdown(s, title, names))
        numbers.append({"title": title, "params": params, "runs": names, "seeds": s.seeds, "n": len(s.seeds),
                        "metric": s.metric, "hms": s.hms, "unit": "fraction (eval.json); differences are fractions too",
                        "rows": {r: {m: st._asdict() for m, st in ms.items()} for r, ms in s.rows.items()},
                        "differences": {d.row: {**d.stat._asdict(), "wins": d.wins, "ties": d.ties}
                                        for d in s.differences}, "dropped_rows": s.dropped_rows})
    if not parts:
        raise SeedsError("no group of experiments with 2 or more seeds")
    return "\n".join(parts), numbers


DESCRIPTION = ("Mean ± sample std over seeds of the rows of metrics/eval.json in the DVC experiments, "
               "and the paired differences of the main HMS row against every other row.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``hms seeds``, on ``p``."""
    p.add_argument("--repo", default=".", help="the DVC repository (default: .)")
    p.add_argument("--metric", default="mIoU",
                   help="metric of the first column and the differences (default: mIoU; nested: iou.CLASS)")
    p.add_argument("--hms", metavar="ROW", help="the HMS row (default: the hms_* row with the most scales)")
    p.add_argument("--all", action="store_true", dest="all_groups",
                   help="every group of runs that differ only in seed (default: the workspace's params)")
    p.add_argument("--include-workspace", action="store_true",
                   help="count the workspace's metrics/eval.json as a run for a seed no experiment has")
    p.add_argument("--common-rows", action="store_true", help="use the rows every seed has instead of failing")
    p.add_argument("--all-commits", "-A", action="store_true", help="experiments of every commit (default: HEAD's)")
    p.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    p.add_argument("--json", metavar="FILE", help="also write the numbers (fractions) to FILE")


def run(args: argparse.Namespace, prog: str = "hms seeds") -> int:
    """Print the markdown (and write ``--out``, ``--json``), the notes on stderr; an error raises."""
    notes: list[str] = []
    try:
        text, numbers = report(parse_exp_show(read_exp_show(args.repo, args.all_commits)), args.metric, args.hms,
                               args.all_groups, args.include_workspace, args.common_rows, notes)
    finally:   # the notes gathered before an error come first
        print("".join(f"{prog}: {note}\n" for note in notes), end="", file=sys.stderr)
    print(text, end="")
    for path, content in ((args.out, text), (args.json, json.dumps(numbers, indent=2) + "\n")):
        if path:
            write_bytes(Path(path), content)
    return 0
