"""Results over seeds (hms_core/tools/seeds.py): the aggregation by hand, the errors, and a real tiny DVC repo."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hms_core.tools import seeds
from hms_core.tools.main import main as hms
from hms_core.tools.report import mean_std, paired_difference
from hms_core.tools.seeds import SeedsError, summarise

ROOT = Path(__file__).resolve().parents[1]


def row(miou: float, acc: float = 0.9, **extra) -> dict:
    return {"mIoU": miou, "pixel_acc": acc, "mean_class_acc": 0.5, "iou": {"a": miou / 2, "b": 0.1}, **extra}


def three_seeds() -> dict[int, dict]:
    """HMS beats scale_1.0 on every seed and avg on 2 of 3; hms_0.5-1.0 ties hms on seed 2."""
    return {
        0: {"scale_1.0": row(0.50, 0.80), "avg": row(0.62), "hms_0.5-1.0": row(0.55), "hms_0.5-1.0-2.0": row(0.60, 0.90)},
        1: {"scale_1.0": row(0.52, 0.82), "avg": row(0.60), "hms_0.5-1.0": row(0.56), "hms_0.5-1.0-2.0": row(0.61, 0.91)},
        2: {"scale_1.0": row(0.54, 0.84), "avg": row(0.63), "hms_0.5-1.0": row(0.64), "hms_0.5-1.0-2.0": row(0.64, 0.95)},
    }


# ---------------------------------------------------------------- statistics by hand

def test_mean_and_sample_std():
    stat = mean_std({0: 1.0, 1: 2.0, 2: 6.0})
    # mean 3; deviations -2, -1, 3; sum of squares 14; / (N - 1) = 7
    assert stat.mean == pytest.approx(3.0) and stat.std == pytest.approx(math.sqrt(7.0)) and stat.n == 3
    assert mean_std({4: 0.5, 7: 0.5}).std == 0.0


def test_std_needs_two_values():
    with pytest.raises(SeedsError, match="at least 2"):
        mean_std({0: 1.0})


def test_paired_difference_and_wins():
    d = paired_difference("b", {0: 0.60, 1: 0.61, 2: 0.64}, {0: 0.62, 1: 0.60, 2: 0.63})
    # d = -0.02, +0.01, +0.01: mean 0, sample std sqrt((4 + 1 + 1) / 2) * 0.01 = sqrt(3) * 0.01
    assert d.stat.mean == pytest.approx(0.0, abs=1e-12)
    assert d.stat.std == pytest.approx(math.sqrt(3) * 0.01)
    assert (d.wins, d.ties, d.stat.n) == (2, 0, 3)
    tie = paired_difference("b", {0: 0.5, 1: 0.7}, {0: 0.5, 1: 0.6})
    assert (tie.wins, tie.ties) == (1, 1)


def test_summarise_by_hand():
    s = summarise(three_seeds())
    assert s.seeds == [0, 1, 2] and s.hms == "hms_0.5-1.0-2.0" and s.metrics == ["mIoU", "pixel_acc"]
    assert list(s.rows) == ["scale_1.0", "avg", "hms_0.5-1.0", "hms_0.5-1.0-2.0"]
    # scale_1.0: 0.50, 0.52, 0.54 -> mean 0.52, sample std 0.02
    assert s.rows["scale_1.0"]["mIoU"].mean == pytest.approx(0.52)
    assert s.rows["scale_1.0"]["mIoU"].std == pytest.approx(0.02)
    assert s.rows["scale_1.0"]["pixel_acc"].mean == pytest.approx(0.82)
    # hms: 0.60, 0.61, 0.64 -> mean 0.61667; deviations (-5, -2, 7) / 300: sum of squares 78 / 90000 / 2
    assert s.rows["hms_0.5-1.0-2.0"]["mIoU"].mean == pytest.approx(1.85 / 3)
    assert s.rows["hms_0.5-1.0-2.0"]["mIoU"].std == pytest.approx(math.sqrt(78 / 90000 / 2))
    diffs = {d.row: d for d in s.differences}
    assert list(diffs) == ["scale_1.0", "avg", "hms_0.5-1.0"]
    # hms - scale_1.0 = 0.10, 0.09, 0.10: mean 0.09667, std sqrt((1 + 4 + 1) / 9 / 2) * 0.01
    assert diffs["scale_1.0"].stat.mean == pytest.approx(0.29 / 3)
    assert diffs["scale_1.0"].stat.std == pytest.approx(math.sqrt(1 / 3) * 0.01)
    assert diffs["scale_1.0"].wins == 3
    assert diffs["avg"].wins == 2 and diffs["avg"].stat.mean == pytest.approx(0.0, abs=1e-12)
    assert (diffs["hms_0.5-1.0"].wins, diffs["hms_0.5-1.0"].ties) == (2, 1)


def test_markdown_in_percent():
    text = seeds.markdown(summarise(three_seeds()), "title", {0: "a", 1: "b", 2: "c"})
    assert "### title" in text and "Seeds 0, 1, 2 (N = 3)" in text and "seed 1 `b`" in text
    assert "| scale_1.0 | 3 | 52.00 ± 2.00 | 82.00 ± 2.00 |" in text
    assert "| hms_0.5-1.0-2.0 | 3 | 61.67 ± 2.08 | 92.00 ± 2.65 |" in text
    assert "| scale_1.0 | 3 | +9.67 ± 0.58 | 3/3 |" in text
    assert "| avg | 3 | +0.00 ± 1.73 | 2/3 |" in text
    assert "| hms_0.5-1.0 | 3 | +3.33 ± 2.89 | 2/3 (1 tie) |" in text


def test_metric_and_hms_options():
    s = summarise(three_seeds(), metric="iou.a", hms="avg")
    assert s.metrics == ["iou.a", "pixel_acc"] and s.hms == "avg"
    assert s.rows["scale_1.0"]["iou.a"].mean == pytest.approx(0.26)
    assert [d.row for d in s.differences] == ["scale_1.0", "hms_0.5-1.0", "hms_0.5-1.0-2.0"]
    assert summarise(three_seeds(), metric="pixel_acc").metrics == ["pixel_acc"]


def test_main_hms_row_is_the_one_with_most_scales():
    assert seeds.main_hms_row(["hms_0.5-1.0-2.0", "tta_0.5-1.0-2.0-4.0", "hms_0.5-1.0"]) == "hms_0.5-1.0-2.0"
    assert seeds.main_hms_row(["hms_1.0-2.0", "hms_0.5-1.0"]) == "hms_1.0-2.0"


def test_rows_are_read_not_hard_coded():
    runs = {s: {"new_row": row(0.1 * s + 0.3), "hms_1.0-2.0": row(0.5), "note": "not a row"} for s in (3, 4)}
    s = summarise(runs)
    assert list(s.rows) == ["new_row", "hms_1.0-2.0"] and s.hms == "hms_1.0-2.0"
    assert s.rows["new_row"]["mIoU"].values == {3: pytest.approx(0.6), 4: pytest.approx(0.7)}


# ---------------------------------------------------------------- errors

def test_errors():
    runs = three_seeds()
    with pytest.raises(SeedsError, match="only one seed"):
        summarise({0: runs[0]})
    with pytest.raises(SeedsError, match="no runs"):
        summarise({})
    with pytest.raises(SeedsError, match="--hms nope"):
        summarise(runs, hms="nope")
    with pytest.raises(SeedsError, match="no metric 'foo'"):
        summarise(runs, metric="foo")
    with pytest.raises(SeedsError, match="no HMS row"):
        summarise({s: {"scale_1.0": r["scale_1.0"]} for s, r in runs.items()})
    bad = three_seeds()
    bad[1]["avg"]["mIoU"] = float("nan")
    with pytest.raises(SeedsError, match="not a finite number"):
        summarise(bad)


def test_rows_that_differ_between_seeds():
    runs = three_seeds()
    runs[2]["tta_0.5-1.0-2.0"] = row(0.7)
    del runs[0]["avg"]
    with pytest.raises(SeedsError, match=r"differ between seeds \(seed 0 lacks avg, tta_0.5-1.0-2.0; "
                                         r"seed 1 lacks tta_0.5-1.0-2.0\)") as err:
        summarise(runs)
    assert "\n" not in str(err.value)
    s = summarise(runs, common_rows=True)
    assert list(s.rows) == ["scale_1.0", "hms_0.5-1.0", "hms_0.5-1.0-2.0"]
    assert s.dropped_rows == ["avg", "tta_0.5-1.0-2.0"]


# ---------------------------------------------------------------- parsing `dvc exp show --json`

def entry(rev: str, name: str | None, seed, ev: dict | None, error=None, lr=0.1, ts="2026-01-01T00:00:00") -> dict:
    """One revision entry in the format of `dvc exp show --json` (DVC 3.x)."""
    return {"rev": rev, "name": name, "error": error, "experiments": None,
            "data": {"rev": rev, "timestamp": ts,
                     "params": {"params.yaml": {"data": {"seed": seed, "lr": lr, "model": {"w": 8}}}},
                     "metrics": {"metrics/eval.json": {"data": ev}} if ev is not None else {},
                     "deps": {}, "outs": {}, "meta": {}}}


def exp(name: str, seed, ev: dict | None, state=None, error=None, lr=0.1, ts="2026-01-01T00:00:00") -> dict:
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    return {"name": name, "executor": executor, "revs": [entry(name + "-sha", name, seed, ev, error, lr, ts)]}


def fake_exp_show() -> list[dict]:
    r = three_seeds()
    base = entry("abc", "main", 0, r[0], ts="2026-01-01T00:00:00")
    base["experiments"] = [
        exp("e0", 0, r[0], ts="2026-01-02T00:00:00"), exp("e1", 1, r[1], state="success"),
        exp("e2", 2, r[2]), exp("queued", 3, None, state="queued"),
        exp("failed", 4, r[0], state="failed", error={"msg": "Experiment run failed", "type": ""}),
        exp("other-lr", 0, r[0], lr=0.2), exp("other-lr2", 1, r[1], lr=0.2),
        exp("text-seed", "abc", r[0]), exp("e0-old", 0, r[2], ts="2025-12-31T00:00:00"),
    ]
    ws = entry("workspace", None, 7, r[1], ts=None)
    return [ws, base]


def test_parse_exp_show():
    found = seeds.parse_exp_show(fake_exp_show())
    ws = found.iloc[0]
    assert ws["name"] == "workspace" and ws["params"] == {"lr": 0.1, "model.w": 8} and ws["seed"] == 7
    runs, skipped = found[found["why"] == ""], found[found["why"] != ""]
    assert runs["name"].tolist() == ["workspace", "e0", "e1", "e2", "other-lr", "other-lr2", "e0-old"]
    assert (skipped["name"] + ": " + skipped["why"]).tolist() == [
        "queued: queued", "failed: failed", "text-seed: seed 'abc' is not an integer"]


def test_groups():
    found = seeds.parse_exp_show(fake_exp_show())
    [(title, params, runs, replaced)] = seeds.group_runs(found)
    assert title == "params as in the workspace's params.yaml" and params == {"lr": 0.1, "model.w": 8}
    assert runs["name"].to_dict() == {0: "e0", 1: "e1", 2: "e2"}   # the newest seed-0 run
    assert replaced == ["e0-old (seed 0, replaced by e0)"]
    groups = seeds.group_runs(found, all_groups=True, include_workspace=True)
    assert [g[2].index.tolist() for g in groups] == [[0, 1, 2, 7], [0, 1]]
    assert groups[1][0] == "params.yaml with lr=0.2"


def test_report_and_cli_errors(monkeypatch, capsys, tmp_path):
    data = fake_exp_show()
    monkeypatch.setattr(seeds, "read_exp_show", lambda repo, all_commits=False: data)
    assert hms(["seeds", "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "s.md")]) == 0
    out, err = capsys.readouterr()
    assert "| scale_1.0 | 3 | +9.67 ± 0.58 | 3/3 |" in out and "skipped experiments: queued: queued" in err
    assert (tmp_path / "s.md").read_text() == out
    [numbers] = json.loads((tmp_path / "s.json").read_text())
    assert numbers["seeds"] == [0, 1, 2] and numbers["differences"]["avg"]["wins"] == 2
    assert numbers["rows"]["scale_1.0"]["mIoU"]["std"] == pytest.approx(0.02)

    assert hms(["seeds", "--all"]) == 0
    out, err = capsys.readouterr()
    assert out.count("### ") == 2 and "### params.yaml with lr=0.2" in out

    data[1]["experiments"] = [e for e in data[1]["experiments"] if e["name"] in ("e1", "other-lr")]
    assert hms(["seeds"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "hms seeds: error: fewer than 2 seeds with the workspace's params (seeds: 1); 1 other param set(s): --all")

    data[1]["experiments"] = []
    assert hms(["seeds"]) == 1
    assert capsys.readouterr().err.startswith("hms seeds: error: no finished experiments")


# ---------------------------------------------------------------- a real DVC repository

GEN = '''\
import json, os, yaml
seed = yaml.safe_load(open("params.yaml"))["seed"]
avg = {0: 0.62, 1: 0.60, 2: 0.63}[seed]
rows = {"scale_1.0": {"mIoU": 0.50 + 0.02 * seed, "pixel_acc": 0.80},
        "avg": {"mIoU": avg, "pixel_acc": 0.85},
        "hms_0.5-1.0": {"mIoU": 0.55, "pixel_acc": 0.86},
        "hms_0.5-1.0-2.0": {"mIoU": 0.60 + 0.01 * seed * seed, "pixel_acc": 0.90 + 0.01 * seed}}
os.makedirs("metrics", exist_ok=True)
with open("metrics/eval.json", "w") as f:
    json.dump(rows, f, indent=2)
'''

DVC_YAML = '''\
stages:
  evaluate:
    cmd: python gen.py
    deps: [gen.py]
    params: [seed, lr]
    metrics:
      - metrics/eval.json:
          cache: false
'''


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_real_dvc_experiments(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "gen.py").write_text(GEN)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("seed: 0\nlr: 0.1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(git + ["add", "-A"], repo)
    _run(git + ["commit", "-q", "-m", "init"], repo)
    seeds_cmd = [sys.executable, "-m", "hms_core.tools.main", "seeds"]

    proc = _run(seeds_cmd, repo, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "hms seeds: error: no finished experiments (run e.g. `dvc exp run --queue -S seed=0` ... and "
        "`dvc queue start`)"]

    for seed in (0, 1, 2):
        _run(["dvc", "exp", "run", "-q", "-S", f"seed={seed}"], repo)
    _run(["dvc", "exp", "run", "-q", "-S", "seed=1", "-S", "lr=0.2"], repo)   # another group, one seed
    # `dvc exp run -S` (not queued) leaves its params in the workspace: back to the default group.
    (repo / "params.yaml").write_text("seed: 0\nlr: 0.1\n")

    proc = _run(seeds_cmd + ["--json", "numbers.json"], repo)
    out = proc.stdout
    assert "Seeds 0, 1, 2 (N = 3)" in out
    assert "| scale_1.0 | 3 | 52.00 ± 2.00 | 80.00 ± 0.00 |" in out
    assert "| hms_0.5-1.0-2.0 | 3 | 61.67 ± 2.08 | 91.00 ± 1.00 |" in out
    assert "| scale_1.0 | 3 | +9.67 ± 0.58 | 3/3 |" in out
    assert "| avg | 3 | +0.00 ± 1.73 | 2/3 |" in out
    assert "| hms_0.5-1.0 | 3 | +6.67 ± 2.08 | 3/3 |" in out
    numbers = json.loads((repo / "numbers.json").read_text())
    assert numbers[0]["seeds"] == [0, 1, 2] and numbers[0]["hms"] == "hms_0.5-1.0-2.0"

    proc = _run(seeds_cmd + ["--all"], repo)
    assert proc.stdout.count("### ") == 1
    assert "params.yaml with lr=0.2: fewer than 2 seeds (seeds: 1), not shown" in proc.stderr


SWEEP_GEN = '''\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
base = {"resnet50": 0.70, "mobilenet_v3_large": 0.60}[p["trunk"]]
rows = {"scale_1.0": {"mIoU": base - 0.05, "pixel_acc": 0.80},
        "hms_0.5-1.0-2.0": {"mIoU": base + 0.01 * p["seed"], "pixel_acc": 0.90}}
os.makedirs("metrics", exist_ok=True)
with open("metrics/eval.json", "w") as f:
    json.dump(rows, f, indent=2)
'''

# The README's sweep commands, on a one-stage pipeline that writes eval.json from its params.
SWEEP = ["dvc", "exp", "run", "--queue", "-S", "trunk=resnet50,mobilenet_v3_large", "-S", "seed=0,1"]
SHOW = ["dvc", "exp", "show", "--csv", "--drop", ".*", "--keep", r"Experiment|^trunk$|^seed$|hms_0\.5-1\.0-2\.0\.mIoU"]


def _wait_for_queue(repo: Path, timeout: float = 300.0) -> str:
    """``dvc queue start`` returns at once and a worker runs the tasks: poll until none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _run(["dvc", "queue", "status"], repo).stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(2)
    raise AssertionError(f"queue not finished after {timeout} s:\n{status}")


def test_queued_sweep_over_trunks_and_seeds(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "gen.py").write_text(SWEEP_GEN)
    (repo / "dvc.yaml").write_text(DVC_YAML.replace("[seed, lr]", "[seed, trunk]"))
    params = "seed: 0\ntrunk: mobilenet_v3_large\n"
    (repo / "params.yaml").write_text(params)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], git + ["add", "-A"], git + ["commit", "-q", "-m", "init"]):
        _run(cmd, repo)
    assert _run(SWEEP, repo).stdout.count("Queued experiment") == 4  # the 2 x 2 grid
    assert (repo / "params.yaml").read_text() == params  # queueing leaves the workspace alone
    # The worker `dvc queue start` spawns may outlive it, holding its output pipes: no capture.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "queue", "start", "--jobs", "1"], cwd=repo, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_queue(repo).count("Success") == 4
    finally:
        _run(["dvc", "queue", "stop"], repo, check=False)

    lines = _run(SHOW, repo).stdout.splitlines()
    assert lines[0] == "Experiment,hms_0.5-1.0-2.0.mIoU,seed,trunk"
    runs = sorted(tuple(line.split(",")[1:]) for line in lines[1:] if line.split(",")[0])
    assert runs == [("0.6", "0", "mobilenet_v3_large"), ("0.61", "1", "mobilenet_v3_large"),
                    ("0.7", "0", "resnet50"), ("0.71", "1", "resnet50")]

    out = _run([sys.executable, "-m", "hms_core.tools.main", "seeds", "--all"], repo).stdout
    workspace, resnet = out.split("### params.yaml with trunk=\"resnet50\"")
    assert "| hms_0.5-1.0-2.0 | 2 | 60.50 ± 0.71 | 90.00 ± 0.00 |" in workspace
    assert "| hms_0.5-1.0-2.0 | 2 | 70.50 ± 0.71 | 90.00 ± 0.00 |" in resnet
    assert "| scale_1.0 | 2 | +5.50 ± 0.71 | 2/2 |" in resnet
