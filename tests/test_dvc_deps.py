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


def imported(module: str) -> set[str]:
    """Package modules that `module` imports anywhere in its source."""
    out: set[str] = set()
    for node in ast.walk(ast.parse((PKG / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "inflection_layers":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("inflection_layers.")}
    return {m for m in out if (PKG / f"{m}.py").is_file()}


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
    match = re.search(r"-m inflection_layers\.(\w+)", stage["cmd"])
    assert match, f"stage command does not run a package module: {stage['cmd']}"
    return match.group(1)


def declared(stage: dict) -> set[str]:
    return {Path(d).stem for d in stage.get("deps", []) if str(d).startswith("src/inflection_layers/") and str(d).endswith(".py")}


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
    stage = dict(STAGES["diagnose"], deps=[d for d in STAGES["diagnose"]["deps"] if d != "src/inflection_layers/training.py"])
    assert "training" in closure(script_of(stage)) - declared(stage)
