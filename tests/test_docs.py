"""The documentation: the results report (hms_core/tools/report.py) computes what is hand-computed
here, the README's results block is replaced without touching the rest, and README.md stays short,
with figures that come from files and module paths that exist."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hms_core.tools import report
from hms_core.tools.main import main as hms
from hms_core.tools.report import BEGIN, END, ReportError, replace_block

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")

BASE = {"seed": 0, "trunk": "mobilenet_v3_large", "train": {"steps": 600, "batch_size": 8, "crop": 64, "lr": 0.002},
        "evaluate": {"hms_scales": [[0.5, 1.0], [0.5, 1.0, 2.0]]}}


def write_run(root: Path, name: str, params: dict, miou: dict[str, float], times: dict | None = None) -> None:
    folder = root / "docs" / "runs" / name
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    (folder / "eval.json").write_text(json.dumps({row: {"mIoU": v, "pixel_acc": 0.9} for row, v in miou.items()}))
    if times is not None:
        (folder / "times.json").write_text(json.dumps(times))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two seeds of the repository's params and one run with other params (its single values)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE))
    write_run(tmp_path, "emb-s0", BASE, {"scale_1.0": 0.70, "avg": 0.76, "hms_0.5-1.0-2.0": 0.75},
              times={"train@1.0": 61.4, "evaluate": 15.0})
    write_run(tmp_path, "emb-s1", {**BASE, "seed": 1}, {"scale_1.0": 0.74, "avg": 0.77, "hms_0.5-1.0-2.0": 0.80})
    quick = {**BASE, "seed": 2, "train": {**BASE["train"], "steps": 60}, "scales": [1.0]}
    write_run(tmp_path, "quick-s2", quick, {"scale_1.0": 0.60, "hms_0.5-1.0-2.0": 0.65})
    return tmp_path


def test_report_by_hand(repo):
    rep = report.collect(repo)
    assert rep.default is None                                      # no metrics/eval.json here
    emb, quick = rep.groups
    assert emb.name == "emb" and [r.name for r in emb.runs] == ["emb-s0", "emb-s1"] and quick.name == "quick"
    # scale_1.0: 70, 74 -> mean 72, s = sqrt((2^2 + 2^2) / 1) = 2.828; HMS: 75, 80 -> 77.5, sqrt(12.5) = 3.536
    rows, diffs = emb.summary.rows, {d.row: d for d in emb.summary.differences}
    assert rows["scale_1.0"]["mIoU"].mean == pytest.approx(0.72)
    assert rows["scale_1.0"]["mIoU"].std == pytest.approx(0.08 ** 0.5 / 10)
    # d = HMS - row: scale_1.0 5, 6 -> +5.5 +- 0.707, 2 wins; avg -1, 3 -> +1.0 +- 2.828, 1 win
    assert diffs["scale_1.0"].stat.mean == pytest.approx(0.055)
    assert diffs["scale_1.0"].stat.std == pytest.approx(0.005 ** 0.5 / 10)
    assert (diffs["scale_1.0"].wins, diffs["avg"].wins) == (2, 1)
    assert "hms_0.5-1.0-2.0" not in diffs

    text = report.markdown(rep)
    for line in ["| scale_1.0 | 2 | 72.00 ± 2.83 |", "| avg | 2 | 76.50 ± 0.71 |", "| hms_0.5-1.0-2.0 | 2 | 77.50 ± 3.54 |",
                 "| scale_1.0 | 2 | +5.50 ± 0.71 | 2/2 |", "| avg | 2 | +1.00 ± 2.83 | 1/2 |",
                 # a group of one seed: its single values
                 "| scale_1.0 | 1 | 60.00 |", "| scale_1.0 | 1 | +5.00 | 1/1 |",
                 # how to reproduce: the params that differ from params.yaml, and the stage times
                 "- `emb-s0` (seed 0): `dvc exp run`; stage times: train@1.0 61 s, evaluate 15 s; total 76 s (1.3 min)",
                 "- `emb-s1` (seed 1): `dvc exp run -S seed=1`",
                 "- `quick-s2` (seed 2): `dvc exp run -S seed=2 -S train.steps=60 -S 'scales=[1.0]'`"]:
        assert line in text.splitlines(), line
    assert "No `metrics/eval.json` yet" in text

    table = report.readme_table(rep)                                # default: the runs with params.yaml's params
    assert "| hms_0.5-1.0-2.0 | 77.50 ± 3.54 | headline |  |" in table
    assert "| scale_1.0 | 72.00 ± 2.83 | +5.50 ± 0.71 | 2/2 |" in table
    assert "| scale_1.0 | 60.00 | +5.00 | 1/1 |" in report.readme_table(rep, "quick")
    with pytest.raises(ReportError, match="no group named"):
        report.readme_table(rep, "nope")


def test_reference_rows_join_the_run_of_their_seed(repo):
    """A bench/reference.py folder adds its rows, renamed after the model, to the run with its params and
    seed; a row some seeds lack is averaged over the seeds that have it and paired with HMS on those."""
    write_run(repo, "emb-s1-ref-deeplabv3", {**BASE, "seed": 1}, {"reference": 0.70, "reference_tta_0.5-1.0-2.0": 0.74})
    (repo / "docs/runs/emb-s1-ref-deeplabv3/reference.json").write_text(json.dumps(
        {"model": "deeplabv3_mobilenet_v3_large (ASPP rates 6, 12, 18)", "images": 4800}))
    (repo / "docs/runs/emb-s0/table.csv").write_text(
        "method,row,train images,finetune images\nscale 1.0,scale_1.0,2400,1200\nHMS,hms_0.5-1.0-2.0,7200,1200\n")
    rep = report.collect(repo)
    emb = rep.group("emb")
    assert [r.name for r in emb.runs] == ["emb-s0", "emb-s1"] and len(rep.groups) == 2
    rows, diffs = emb.summary.rows, {d.row: d for d in emb.summary.differences}
    assert rows["ref_deeplabv3"]["mIoU"].n == 1 and rows["scale_1.0"]["mIoU"].n == 2
    # seed 1 only: HMS 80 - reference 70 = +10, and 80 - 74 = +6
    assert diffs["ref_deeplabv3"].stat.mean == pytest.approx(0.10) and diffs["ref_deeplabv3"].stat.n == 1
    table = report.readme_table(rep, "emb").splitlines()
    assert "| row | mIoU (%) | N | Δ (pp) | wins | training images (train + fine-tune) |" in table
    assert "| scale_1.0 | 72.00 ± 2.83 | 2 | +5.50 ± 0.71 | 2/2 | 2400 + 1200 |" in table
    assert "| avg | 76.50 ± 0.71 | 2 | +1.00 ± 2.83 | 1/2 | - |" in table
    assert "| ref_deeplabv3_tta_0.5-1.0-2.0 | 74.00 | 1 | +6.00 | 1/1 | 4800 |" in table
    assert "the `ref_*` rows from `docs/runs/emb-s1-ref-deeplabv3`" in report.markdown(rep)


def test_runs_that_count_training_images_differently_are_named(repo):
    """Two runs' table.csv files that give a row different training images: both values, and a note
    that names the runs, never one of them silently."""
    head = "method,row,train images,finetune images\n"
    (repo / "docs/runs/emb-s0/table.csv").write_text(head + "HMS,hms_0.5-1.0-2.0,9600,2400\nscale 1.0,scale_1.0,3200,0\n")
    (repo / "docs/runs/emb-s1/table.csv").write_text(head + "HMS,hms_0.5-1.0-2.0,12800,2400\nscale 1.0,scale_1.0,3200,0\n")
    rep = report.collect(repo)
    emb = rep.group("emb")
    assert emb.budgets == {"hms_0.5-1.0-2.0": "9600 + 2400 / 12800 + 2400", "scale_1.0": "3200 + 0"}
    assert ("- the runs' table.csv files give different training images: hms_0.5-1.0-2.0 9600 + 2400 (emb-s0), "
            "12800 + 2400 (emb-s1)") in report.markdown(rep).splitlines()
    table = report.readme_table(rep, "emb")
    assert "| hms_0.5-1.0-2.0 | 77.50 ± 3.54 | headline |  | 9600 + 2400 / 12800 + 2400 |" in table.splitlines()
    assert "the runs' `table.csv` files disagree" in table
    (repo / "docs/runs/emb-s1/table.csv").write_text(head + "HMS,hms_0.5-1.0-2.0,9600,2400\nscale 1.0,scale_1.0,3200,0\n")
    agreed = report.collect(repo).group("emb")
    assert agreed.budgets["hms_0.5-1.0-2.0"] == "9600 + 2400" and not agreed.notes


def test_groups_listed_in_pairs_yaml_are_compared_seed_by_seed(repo):
    """An ablation minus the default recipe, seed by seed, over the rows and seeds both groups have."""
    abl = {**BASE, "train": {**BASE["train"], "lr": 0.01}}
    write_run(repo, "abl-s0", abl, {"scale_1.0": 0.73, "avg": 0.76, "hms_0.5-1.0-2.0": 0.78, "new_row": 0.5})
    write_run(repo, "abl-s1", {**abl, "seed": 1}, {"scale_1.0": 0.72, "avg": 0.79, "hms_0.5-1.0-2.0": 0.79})
    write_run(repo, "abl-s5", {**abl, "seed": 5}, {"scale_1.0": 0.10, "avg": 0.10, "hms_0.5-1.0-2.0": 0.10})
    (repo / "docs/runs/pairs.yaml").write_text("- {group: abl, baseline: emb}\n")
    d = report.paired_groups(report.collect(repo).group("abl"), report.collect(repo).group("emb"))
    # seeds 0 and 1 only (emb has no seed 5); HMS 78 - 75 = +3, 79 - 80 = -1: mean +1, std 2.83, 1 win
    assert list(d.index) == ["scale_1.0", "avg", "hms_0.5-1.0-2.0"] and [c for c in d.columns][:2] == [0, 1]
    assert d.loc["hms_0.5-1.0-2.0", [0, 1]].tolist() == pytest.approx([3.0, -1.0])
    assert (d.loc["hms_0.5-1.0-2.0", "mean"], d.loc["hms_0.5-1.0-2.0", "wins"]) == (pytest.approx(1.0), 1)
    lines = report.markdown(report.collect(repo)).splitlines()
    assert "### abl minus emb" in lines and "| hms_0.5-1.0-2.0 | +3.00 | -1.00 | +1.00 ± 2.83 | 1/2 |" in lines
    (repo / "docs/runs/pairs.yaml").write_text("- {group: abl, baseline: nope}\n")
    with pytest.raises(ReportError, match=r"pairs.yaml: no group named 'nope'.*expected a list of \{group"):
        report.collect(repo)
    (repo / "docs/runs/pairs.yaml").write_text("- {group: abl, baseline: emb\n")
    with pytest.raises(ReportError, match=r"pairs.yaml: .*expected a list of \{group"):
        report.collect(repo)


def test_report_has_the_statistics_of_hms_seeds(repo):
    """The same eval.json files give hms seeds' numbers and difference table."""
    from hms_core.tools import seeds
    emb = report.collect(repo).group("emb")
    s = seeds.summarise({r.seed: r.metrics for r in emb.runs})
    assert ({row: m["mIoU"][:3] for row, m in s.rows.items()}                  # n, mean, std
            == {row: m["mIoU"][:3] for row, m in emb.summary.rows.items()})
    assert report.difference_lines(s) == report.difference_lines(emb.summary)


def test_ties_are_counted(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE))
    for seed, avg in ((0, 0.75), (1, 0.70)):
        write_run(tmp_path, f"t-s{seed}", {**BASE, "seed": seed}, {"avg": avg, "hms_0.5-1.0-2.0": 0.75})
    # d = 0, 5 pp: mean 2.5, s = sqrt(2 * 2.5^2 / 1) = 3.54; one win, one tie
    assert "| avg | 2 | +2.50 ± 3.54 | 1/2 (1 tie) |" in report.markdown(report.collect(tmp_path)).splitlines()


def test_default_pipeline_and_stale_metrics(repo):
    (repo / "metrics").mkdir()
    (repo / "metrics" / "eval.json").write_text(json.dumps(
        {"scale_1.0": {"mIoU": 0.5, "iou": {"sky": 0.9}}, "hms_0.5-1.0-2.0": {"mIoU": 0.625, "iou": {"sky": 0.95}}}))
    (repo / "metrics" / "costs.json").write_text(json.dumps({"scale_1.0": {"params": 4878295, "ms_per_image": 6.94}}))
    (repo / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train@1.0": {"params": {
        "params.yaml": {"seed": 0, "train": {**BASE["train"], "steps": 300}}}}}}))
    rep = report.collect(repo)
    assert rep.stale == ["`train.steps`: 300 (params.yaml: 600)"]
    text = report.markdown(rep)
    assert "| scale_1.0 | 50.00 | - | - | 4.88 | 6.9 | - |" in text and "| hms_0.5-1.0-2.0 | 95.00 |" in text
    assert "**Stale:**" in text and "train 300 steps x 8 crops of 64" in text      # described as it ran
    assert "| scale_1.0 | 50.00 | +12.50 | 1/1 |" in report.readme_table(rep, "default")


def test_replace_block_keeps_every_other_byte():
    text = README.read_bytes().decode("utf-8")
    for block in ["| a | b |\n|---|---|\n| 1.00 | 2.00 |\n", "", "one line without newline"]:
        new = replace_block(text, block)
        head = text[:text.index("\n", text.index(BEGIN)) + 1]
        tail = text[text.rfind("\n", 0, text.index(END)) + 1:]
        assert new.startswith(head) and new.endswith(tail)
        assert new[len(head):len(new) - len(tail)] == (block.rstrip("\n") + "\n" if block else "")
        assert replace_block(new, block) == new
    crlf = "a\r\n" + BEGIN + "\r\nold\r\n" + END + "\r\nb\r\n"
    assert replace_block(crlf, "x\ny\n") == "a\r\n" + BEGIN + "\r\nx\r\ny\r\n" + END + "\r\nb\r\n"
    with pytest.raises(ReportError):
        replace_block("no markers", "x")


def test_main_writes_the_report_and_the_readme(repo, capsys):
    readme = "# T\n\nintro 1.5 %\n" + BEGIN + "\nplaceholder\n" + END + "\n\nend\n"
    (repo / "README.md").write_text(readme)
    assert hms(["report", "--root", str(repo), "--readme"]) == 0
    new = (repo / "README.md").read_text()
    assert new.startswith("# T\n\nintro 1.5 %\n" + BEGIN + "\n") and new.endswith(END + "\n\nend\n")
    assert "77.50 ± 3.54" in new and "77.50 ± 3.54" in (repo / "docs" / "results.md").read_text()
    assert hms(["report", "--root", str(repo / "docs"), "--out", "-"]) == 1
    assert "hms report: error: no params.yaml" in capsys.readouterr().err


def test_report_imports_no_torch():
    code = "import sys, hms_core.tools.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --------------------------------------------------------------------------- README.md itself

def readme_lines() -> list[str]:
    return README.read_text().splitlines()


def test_readme_is_short_and_has_the_results_block():
    lines = readme_lines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move details to docs/"
    assert lines.count(BEGIN) == 1 and lines.count(END) == 1 and lines.index(BEGIN) < lines.index(END)
    assert ".venv/bin/python -m pytest -q" in README.read_text()    # the test command .ci/run runs


def checked_numbers(lines: list[str]) -> list[tuple[int, str]]:
    """The figures the README states: every decimal number in the results block, and outside code
    blocks in the lines that speak of results ('%' or 'mIoU'). Code blocks (versions, commands)
    and the other lines (scales such as 0.5, 1.0, 2.0) are not figures."""
    found, in_code, in_block = [], False, False
    for i, line in enumerate(lines, 1):
        if line.strip() == BEGIN:
            in_block = True
        elif line.strip() == END:
            in_block = False
        elif line.lstrip().startswith("```"):
            in_code = not in_code
        elif in_block or (not in_code and ("%" in line or "mIoU" in line)):
            found += [(i, n) for n in NUMBER.findall(line)]
    return found


def tracked_text(*folders: str) -> str:
    """The text of the files under ``folders`` that git tracks or would track (not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *folders], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        paths = [ROOT / p for p in out]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for f in folders for p in (ROOT / f).rglob("*")]
    texts = []
    for p in paths:
        if p.is_file() and p.suffix in {".md", ".json", ".csv", ".tsv", ".yaml", ".txt"}:
            texts.append(p.read_text(errors="ignore"))
    return "\n".join(texts)


def test_readme_figures_come_from_files():
    corpus = tracked_text("docs", "metrics")
    missing = [(i, n) for i, n in checked_numbers(readme_lines())
               if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", corpus)]
    assert not missing, f"README figures in no file under docs/ or metrics/ (line, figure): {missing}"


def test_checked_numbers_rule():
    lines = ["torch==2.14.1 reached 80.47 mIoU", "```", "pip install torch==2.14.1 # 1.5 %", "```",
             "scales 0.5, 1.0 and 2.0", BEGIN, "| hms | 81.00 ± 1.40 |", END]
    assert checked_numbers(lines) == [(1, "80.47"), (7, "81.00"), (7, "1.40")]


DOCS = [README, ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
GENERATED = {"results.md", "experts_seeds.md"}


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name not in GENERATED], ids=lambda p: p.name)
def test_module_paths_and_links_exist(doc):
    text = doc.read_text()
    bad = []
    for name in set(re.findall(r"hms_core(?:[./][A-Za-z_]\w*)+", text)):
        parts = name.replace("/", ".").removesuffix(".py").split(".")
        path = ROOT.joinpath(*parts)
        # a module, a package, or a name in a module (hms_core.tools.stage.training_session)
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
                or path.parent.with_suffix(".py").is_file()):
            bad.append(name)
    for link in re.findall(r"\]\(([^)#:]+\.(?:md|png))\)", text):
        if not (doc.parent / link).is_file():
            bad.append(link)
    assert not bad, f"{doc.name}: names no file: {sorted(bad)}"
