"""One seed of the whole pipeline, run apart from the workspace, its results kept in docs/runs/NAME/.

    python bench/run_seed.py NAME --seed N [--preset presets/X.yaml ...] [--set key=value ...]
                             [--dataset DIR] [--reference MODEL ...] [--reference-only]

A git worktree of ``HEAD`` is made in a temporary folder; its ``params.yaml`` is the repository's
with the presets applied in order (as ``hms run`` does), ``seed`` set, and ``--dataset`` as
``data.convert.root`` (an absolute path, as the worktree is elsewhere). ``dvc repro`` runs there;
every stage's wall time comes from its own "done in N s" line. Into ``docs/runs/NAME/`` go
``eval.json``, ``params.yaml``, ``table.md``, ``table.csv`` (each row's training images),
``attention.json`` (when written), ``times.json`` (``{"stage": seconds}``) and ``repro.log``;
``--reference`` then trains each named torchvision model with ``bench/reference.py`` on the same
prepared data into ``docs/runs/NAME-ref-MODEL/``, with its ``reference.log`` (``--reference-only``:
only the stages up to ``prepare`` run, for the reference of a seed whose pipeline run is kept).
``--without-baselines`` (for ablations of the recipe): the stages up to ``finetune``, then the evaluate
stage's script without the explicit-attention baseline and the equal-budget control, which are most of
the time of a run; every other row (the experts, pooling, TTA, HMS) is the pipeline's own.
``--warm-start`` (with ``--without-baselines``; an ablation the DAG cannot express yet): ``train@1.0``, then
the other experts start from its weights (``stages/train.py --init``), then ``transplant`` and ``finetune``;
the saved params carry ``bench.warm_start_from: 1.0`` so that the report keeps these runs apart.
``hms report`` reads those folders.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hms_core.config import load_params, validate  # noqa: E402
from hms_core.text import scale_name  # noqa: E402
from hms_core.tools.preset import merged, read_preset  # noqa: E402

BASELINES = ("--explicit", "--control")   # evaluate's options that add the baselines' rows
WARM_SOURCE = 1.0   # --warm-start: the expert the others start from
WARM_PARAMS = {"bench": {"warm_start_from": WARM_SOURCE}}   # added to such a run's saved params (no pipeline key)
KEPT = ("metrics/eval.json", "metrics/table.md", "metrics/table.csv", "metrics/attention.json")
STAGE = re.compile(r"^Running stage '([^']+)'")
DONE = re.compile(r"^\S+: done in ([0-9.]+) s$")
PROGRESS = re.compile(r"\d(s/)?(step|batch|it)(/s)?[,\]]|\?(step|batch|it)/s")  # tqdm's rate field


def stage_times(log: str) -> dict[str, float]:
    """``{"train@0.5": 512.3, ...}`` from a ``dvc repro`` log: each "done in" line belongs to the
    stage DVC announced last."""
    times: dict[str, float] = {}
    stage = None
    for line in log.splitlines():
        if m := STAGE.match(line):
            stage = m.group(1)
        elif (m := DONE.match(line)) and stage is not None:
            times[stage] = float(m.group(1))
    return times


def evaluate_without_baselines(dvc_yaml: Path) -> list[str]:
    """The ``evaluate`` stage's command in ``dvc_yaml`` without its ``--explicit`` and ``--control`` models,
    run by this interpreter."""
    words = shlex.split(yaml.safe_load(dvc_yaml.read_text())["stages"]["evaluate"]["cmd"])
    dropped = {i + k for i, w in enumerate(words) if w in BASELINES for k in (0, 1)}
    return [sys.executable] + [w for i, w in enumerate(words) if i not in dropped][1:]   # words[0]: "python"


def warm_expert_command(dvc_yaml: Path, scale: float, source: float) -> list[str]:
    """The ``train@scale`` command of ``dvc_yaml`` with ``--init`` the trained ``train@source`` expert's model,
    run by this interpreter."""
    cmd = yaml.safe_load(dvc_yaml.read_text())["stages"]["train"]["do"]["cmd"]
    words = shlex.split(cmd.replace("${item}", scale_name(scale)))
    return [sys.executable] + words[1:] + ["--init", f"models/experts/scale_{scale_name(source)}/model.pt"]


def run_params(seed: int, presets: list[str], sets: list[str], dataset: str | None) -> dict:
    """The params of the run: the repository's, presets applied, then seed, dataset and ``--set``."""
    params = load_params(ROOT / "params.yaml")
    for path in presets:
        params = merged(params, read_preset(ROOT / path))
    # merged() takes dotted keys as they are: "data.convert.root", or a --set's "finetune.steps".
    extra = {"seed": seed, **({"data.convert.root": str(Path(dataset).resolve())} if dataset else {})}
    for item in sets:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    params = merged(params, extra)
    validate(params)
    return params


def save_run(work: Path, out: Path, params: dict, text: str, dataset: Path | None, given: str | None) -> None:
    """``docs/runs/NAME/``, whole or not at all: the kept metrics, the params, the log without its progress
    bars (the dataset's absolute path written as ``given``) and the stage times."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in KEPT:
        if (work / rel).exists():
            shutil.copy(work / rel, tmp / Path(rel).name)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lines = [line for line in text.replace("\r", "\n").splitlines() if not PROGRESS.search(line)]
    log = "\n".join(lines) + "\n"
    (tmp / "repro.log").write_text(log.replace(str(dataset), given) if dataset and given else log)
    (tmp / "times.json").write_text(json.dumps(stage_times(text), indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"run_seed: {out.relative_to(ROOT)}", file=sys.stderr)


def warm_start_repro(work: Path, params: dict, env: dict, log: IO[str]) -> int:
    """``dvc repro train@1.0``; each other expert from it (:func:`warm_expert_command`), announced as DVC
    announces a stage; then ``transplant`` and ``finetune`` alone (``--single-item``: DVC would retrain the
    experts it did not train itself). Returns the first non-zero exit status, else 0."""
    status = subprocess.call([sys.executable, "-m", "dvc", "repro", f"train@{scale_name(WARM_SOURCE)}"], cwd=work,
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    for scale in (float(s) for s in params["scales"] if float(s) != WARM_SOURCE):
        if status == 0:
            log.write(f"Running stage 'train@{scale_name(scale)}':\n")
            log.flush()
            status = subprocess.call(warm_expert_command(work / "dvc.yaml", scale, WARM_SOURCE), cwd=work, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
    for stage in ("transplant", "finetune"):
        if status == 0:
            status = subprocess.call([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=work,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--preset", action="append", default=[])
    p.add_argument("--set", action="append", default=[], help="key.path=value (JSON for numbers and lists)")
    p.add_argument("--dataset", help="data.convert.root (made absolute)")
    p.add_argument("--reference", action="append", default=[], help="a bench/reference.py --model to train too")
    # Each stops dvc repro at its own stage: never both.
    until = p.add_mutually_exclusive_group()
    until.add_argument("--reference-only", action="store_true", help="run only up to 'prepare', then the references")
    until.add_argument("--without-baselines", action="store_true",
                       help="up to 'finetune', then evaluate without the explicit baseline and the control")
    p.add_argument("--warm-start", action="store_true",
                   help="train@1.0 first, then every other expert starting from it (stages/train.py --init), "
                        "outside DVC; needs --without-baselines. The saved params get bench.warm_start_from: 1.0")
    p.add_argument("--keep", action="store_true", help="keep the worktree")
    args = p.parse_args(argv)
    if args.warm_start and not args.without_baselines:
        p.error("--warm-start needs --without-baselines")

    params = run_params(args.seed, args.preset, args.set, args.dataset)
    out = ROOT / "docs" / "runs" / args.name
    work = Path(tempfile.mkdtemp(prefix=f"hms-{args.name}-"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "worktree", "add", "--detach", str(work), "HEAD"], cwd=ROOT, check=True)
    try:
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        target = ["prepare"] if args.reference_only else ["finetune"] if args.without_baselines else []
        with open(work / "repro.log", "w") as log:
            if args.warm_start:
                status = warm_start_repro(work, params, env, log)
            else:
                status = subprocess.call([sys.executable, "-m", "dvc", "repro", *target],
                                         cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
            if status == 0 and args.without_baselines:
                # Announced as dvc announces a stage, so that stage_times() gives it its own time.
                log.write("Running stage 'evaluate':\n")
                log.flush()
                status = subprocess.call(evaluate_without_baselines(work / "dvc.yaml"),
                                         cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        text = (work / "repro.log").read_text()
        if status != 0:
            print(text[-3000:], file=sys.stderr)
            print(f"run_seed: dvc repro failed (exit status {status}); worktree kept at {work}", file=sys.stderr)
            args.keep = True
            return 1
        # The saved params and log name the dataset as given (relative to the repository), not the
        # worktree's absolute path, so that a run and its references have equal params.
        given = args.dataset and os.path.relpath(Path(args.dataset).resolve(), ROOT)
        params["data"]["convert"]["root"] = given or params["data"]["convert"]["root"]
        if args.warm_start:   # tells the report's groups apart
            params.update(WARM_PARAMS)
        if not args.reference_only:
            save_run(work, out, params, text, Path(args.dataset).resolve() if given else None, given)
        for model in args.reference:
            ref = ROOT / "docs" / "runs" / f"{args.name}-ref-{model.split('_')[0]}"
            ref.mkdir(parents=True, exist_ok=True)
            # The worktree's own reference.py, so that it runs the same library as the pipeline above.
            with open(ref / "reference.log", "w") as log:   # its progress and scores, beside its eval.json
                subprocess.run([sys.executable, str(work / "bench" / "reference.py"), "--params", "params.yaml",
                                "--prepared", "data/prepared", "--model", model, "--out", str(ref)],
                               cwd=work, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
            (ref / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return 0
    finally:
        if not args.keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=ROOT, check=False)


if __name__ == "__main__":
    sys.exit(main())
