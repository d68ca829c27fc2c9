"""Every stage's DVC dependencies cover what its script runs: the ``hms_core`` modules it imports,
directly or through other modules (also imports inside functions), so that a changed module can never
leave ``dvc status`` saying "up to date" over a stale output."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from test_layers import ROOT, graph, hms_imports, module_file

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_files(script: Path) -> set[Path]:
    """The files of every ``hms_core`` module ``script`` runs: its imports' transitive closure,
    with each package's ``__init__.py`` (importing a module runs its package's too)."""
    modules, todo, g = set(), list(hms_imports(script)), graph()
    while todo:
        m = todo.pop()
        if m not in modules:
            modules.add(m)
            todo += g.get(m, ())
    files = set()
    for m in modules:
        parts = m.split(".")
        files |= {module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)}
    return {f.relative_to(ROOT) for f in files if f is not None}


def stage_script(stage: dict) -> Path:
    return Path(re.search(r"python (stages/\w+\.py)", stage["do"]["cmd"] if "do" in stage else stage["cmd"]).group(1))


def stage_deps(stage: dict) -> list[str]:
    return (stage["do"] if "do" in stage else stage)["deps"]


def uncovered(stages: dict) -> dict[str, list[str]]:
    """``{stage: [files its script runs that no dependency covers]}`` for every stage with any."""
    out = {}
    for name, stage in stages.items():
        deps = [Path(d) for d in stage_deps(stage) if "${" not in d]
        script = stage_script(stage)
        missing = [str(f) for f in sorted(imported_files(ROOT / script) | {script})
                   if not any(f == d or d in f.parents for d in deps)]
        if missing:
            out[name] = missing
    return out


def test_every_stage_depends_on_every_module_it_runs():
    assert uncovered(STAGES) == {}


@pytest.mark.parametrize("stage, dep", [("evaluate", "hms_core/evaluate"), ("train", "hms_core/models"),
                                        ("prepare", "hms_core/data"), ("finetune", "stages/finetune.py")])
def test_the_check_fails_when_one_dependency_is_dropped(stage, dep):
    mutated = copy.deepcopy(STAGES)
    deps = stage_deps(mutated[stage])
    deps.remove(dep)
    assert stage in uncovered(mutated)


def test_the_evaluate_stage_runs_the_data_modules_it_reads_images_with():
    files = imported_files(ROOT / "stages" / "evaluate.py")
    assert Path("hms_core/data/dataset.py") in files and Path("hms_core/data/labels.py") in files
