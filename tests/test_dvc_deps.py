"""dvc.yaml's promise: a change to code reruns the stages it affects. Each stage's `deps` must list every
package module its script imports, directly or through other modules (imports anywhere in a module
count, including those inside functions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "inflection_layers"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def path_of(module: str) -> Path:
    """The file of a package module given by its dotted name below the package ('reporting.claims')."""
    return PKG / f"{module.replace('.', '/')}.py"


def imported(module: str) -> set[str]:
    """Package modules (dotted names below the package) that `module` imports anywhere in its source."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path_of(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "inflection_layers":
            below = node.module.split(".", 1)[1] if "." in node.module else ""
            out |= {f"{below}.{a.name}".lstrip(".") for a in node.names} | ({below} if below else set())
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("inflection_layers.")}
    return {m for m in out if path_of(m).is_file()}


def closure(module: str) -> set[str]:
    """`module` and every package module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(imported(m))
    return seen


def script_of(stage: dict) -> str:
    """The module a stage's command runs (`python -m inflection_layers.<module>`)."""
    match = re.search(r"-m inflection_layers\.([\w.]+)", stage["cmd"])
    assert match, f"stage command does not run a package module: {stage['cmd']}"
    return match.group(1)


def declared(stage: dict) -> set[str]:
    """The package modules a stage lists in its deps, as dotted names below the package."""
    prefix = "src/inflection_layers/"
    return {
        str(d)[len(prefix) : -3].replace("/", ".")
        for d in stage.get("deps", [])
        if str(d).startswith(prefix) and str(d).endswith(".py")
    }


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_module_is_a_dependency(name: str) -> None:
    stage = STAGES[name]
    missing = closure(script_of(stage)) - declared(stage)
    assert not missing, f"stage {name} imports {sorted(missing)} but does not list them in deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_dependency_on_a_module_the_stage_does_not_import(name: str) -> None:
    stage = STAGES[name]
    extra = declared(stage) - closure(script_of(stage))
    assert not extra, f"stage {name} lists {sorted(extra)} in deps but never imports them (a needless rerun)"


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"validate"}))
def test_every_stage_runs_after_validation(name: str) -> None:
    assert "data/validated.json" in STAGES[name]["deps"], f"stage {name} must depend on validate's output"


def test_the_check_fails_when_a_module_is_dropped() -> None:
    """The test above is not vacuous: without training.py, diagnose's deps are incomplete."""
    stage = dict(
        STAGES["diagnose"], deps=[d for d in STAGES["diagnose"]["deps"] if d != "src/inflection_layers/training.py"]
    )
    assert "training" in closure(script_of(stage)) - declared(stage)


def test_no_module_imports_a_stage_script() -> None:
    """Stage scripts are leaves: library code that two places need lives in a library module, never in a stage."""
    scripts = {script_of(stage) for stage in STAGES.values()}
    modules = [".".join(f.relative_to(PKG).with_suffix("").parts) for f in PKG.rglob("*.py") if f.name != "__init__.py"]
    offenders = {m: sorted((imported(m) & scripts) - {m}) for m in modules}
    assert {m: s for m, s in offenders.items() if s} == {}


def test_the_layers_are_visible_in_the_folders() -> None:
    """The report's library and the hand-run tools each have a sub-package; no stage script lives in one."""
    scripts = {script_of(stage) for stage in STAGES.values()}
    assert (PKG / "reporting" / "claims.py").is_file() and (PKG / "tools" / "benchmark.py").is_file()
    assert all("." not in s for s in scripts), sorted(scripts)
