"""The CI template (.github/workflows/reproduce.yml): it sets up a CPU torch, reproduces the smoke profile,
writes the metrics and params diffs against main into the job summary, and calls only make targets that exist.

The summary step is also run for real (bash, with `dvc` and `git` stubbed) to check its redirections.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/reproduce.yml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(wf: dict) -> dict:
    """The `on:` mapping (YAML 1.1 reads the bare key `on` as True)."""
    on = wf.get("on", wf.get(True))
    return {on: None} if isinstance(on, str) else dict.fromkeys(on) if isinstance(on, list) else on


def steps(job: dict) -> list[dict]:
    return job["steps"]


def the_job(wf: dict) -> tuple[str, dict]:
    """The job that runs the smoke reproduction."""
    found = [
        (name, job) for name, job in wf["jobs"].items() if any("profile=smoke" in s.get("run", "") for s in steps(job))
    ]
    assert len(found) == 1, f"expected one job running the smoke profile, found {[n for n, _ in found]}"
    return found[0]


def commands(script: str) -> list[list[str]]:
    """Each simple command of a `run:` script as shell words (comments dropped; ;, &&, ||, | and braces split)."""
    out = []
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for w in words:
            if w in (";", "&&", "||", "|", "{", "}") or w.endswith(";"):
                if w.endswith(";") and w != ";":
                    current.append(w[:-1])
                if current:
                    out.append(current)
                current = []
            else:
                current.append(w)
        if current:
            out.append(current)
    return out


def makefile_targets() -> set[str]:
    """Every target the Makefile defines (rules `name: ...`, not assignments `name := ...`)."""
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.$()/-][^:=\s]*(?:\s+[^:=\s]+)*)\s*:(?![=])", line)
        if m and not line.startswith("\t"):
            targets |= {t for t in m.group(1).split() if not t.startswith((".", "$"))}
    return targets


def make_goals(words: list[str]) -> list[str]:
    """The targets of one `make ...` command: not options, not VAR=value."""
    goals, skip = [], False
    for w in words[1:]:
        if skip:
            skip = False
        elif w in ("-C", "-f", "-j", "-I", "-o", "-W"):
            skip = True
        elif not w.startswith("-") and "=" not in w:
            goals.append(w)
    return goals


def test_it_runs_on_push_and_pull_request_with_python_3_11() -> None:
    wf = workflow()
    assert {"push", "pull_request"} <= set(triggers(wf))
    _, job = the_job(wf)
    setup = [s for s in steps(job) if s.get("uses", "").startswith("actions/setup-python@")]
    assert len(setup) == 1 and str(setup[0]["with"]["python-version"]) == "3.11"
    checkout = [s for s in steps(job) if s.get("uses", "").startswith("actions/checkout@")]
    assert (
        checkout and checkout[0].get("with", {}).get("fetch-depth") == 0
    )  # the diff against main needs main's history


def test_setup_takes_the_cpu_torch() -> None:
    """`make setup` runs with TORCH_INDEX the CPU index (step, job or workflow env, or on the command line); nothing
    else installs torch."""
    wf = workflow()
    _, job = the_job(wf)
    setups = 0
    for step in steps(job):
        env = {**wf.get("env", {}), **job.get("env", {}), **step.get("env", {})}
        for words in commands(step.get("run", "")):
            if words[0] == "make" and "setup" in make_goals(words):
                setups += 1
                inline = {
                    w.split("=", 1)[0]: w.split("=", 1)[1] for w in words[1:] if "=" in w and not w.startswith("-")
                }
                index = inline.get("TORCH_INDEX", env.get("TORCH_INDEX"))
                if index == "$TORCH_INDEX":
                    index = env.get("TORCH_INDEX")
                assert index == CPU_INDEX, f"make setup with TORCH_INDEX={index!r}"
            if "pip" in words and "install" in words and any(w.startswith("torch") for w in words):
                assert f"--index-url={CPU_INDEX}" in words or CPU_INDEX in words, (
                    f"a torch install without the CPU index: {words}"
                )
    assert setups == 1
    assert (
        "TORCH_INDEX ?=" in (ROOT / "Makefile").read_text()
        and "--index-url $(TORCH_INDEX)" in (ROOT / "Makefile").read_text()
    )


def test_the_smoke_reproduction_runs_after_setup() -> None:
    _, job = the_job(workflow())
    runs = [s.get("run", "") for s in steps(job)]
    setup = next(i for i, r in enumerate(runs) if any(w[0] == "make" and "setup" in make_goals(w) for w in commands(r)))
    smoke = next(
        i
        for i, r in enumerate(runs)
        if any(w[:3] == ["dvc", "exp", "run"] and "profile=smoke" in w for w in commands(r))
    )
    assert setup < smoke
    assert any(
        w[:3] == ["git", "config", "user.name"] for r in runs[: smoke + 1] for w in commands(r)
    )  # dvc exp run commits


def test_both_diffs_against_main_go_to_the_job_summary(tmp_path: Path) -> None:
    """Run the summary step with bash, `dvc` and `git` stubbed: both diffs must land in $GITHUB_STEP_SUMMARY."""
    _, job = the_job(workflow())
    runs = [s.get("run", "") for s in steps(job)]
    smoke = next(i for i, r in enumerate(runs) if "profile=smoke" in r)
    (step,) = [r for r in runs if "metrics diff" in r and "params diff" in r]
    assert runs.index(step) > smoke
    for kind in ("metrics", "params"):
        assert any(w[:3] == ["dvc", kind, "diff"] and "--md" in w and "main" in w for w in commands(step)), (
            f"dvc {kind} diff --md main"
        )
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run the step")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("dvc", "git"):
        (stubs / name).write_text(f'#!/bin/sh\necho "STUB {name} $*"\n')
        (stubs / name).chmod((stubs / name).stat().st_mode | stat.S_IEXEC)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/dvc").symlink_to(stubs / "dvc")  # for a template that calls .venv/bin/dvc
    summary = tmp_path / "summary.md"
    env = {
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
        "HOME": str(tmp_path),
    }
    ran = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", step], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    text = summary.read_text()
    assert "STUB dvc metrics diff --md main" in text and "STUB dvc params diff --md main" in text
    assert "dvc" not in ran.stdout  # nothing of the diffs went to the log instead


def test_every_make_target_called_is_defined() -> None:
    defined = makefile_targets()
    assert {"setup", "test", "study"} <= defined  # the parser reads the Makefile
    called = [
        (goal, run)
        for job in workflow()["jobs"].values()
        for s in steps(job)
        for run in [s.get("run", "")]
        for words in commands(run)
        if words[0] == "make"
        for goal in make_goals(words)
    ]
    assert called, "the template calls no make target"
    missing = sorted({goal for goal, _ in called} - defined)
    assert missing == [], f"make targets not in the Makefile: {missing}"


def test_the_makefile_parser_sees_targets_not_assignments(tmp_path: Path) -> None:
    text = "A := 1\nB ?= 2\n.PHONY: x y\nx: y\n\techo a: b\ny:\n\ttrue\nz w: x\n"
    words = re.findall(r"^([A-Za-z0-9_.$()/-][^:=\s]*(?:\s+[^:=\s]+)*)\s*:(?![=])", text, flags=re.M)
    assert words == [".PHONY", "x", "y", "z w"]
    assert make_goals(["make", "-s", "setup", "TORCH_INDEX=x", "-C", "dir", "test"]) == ["setup", "test"]
    assert commands('make setup && echo "a; b" # c\n{ dvc x; } >> "$F"') == [
        ["make", "setup"],
        ["echo", "a; b"],
        ["dvc", "x"],
        [">>", "$F"],
    ]
