"""Nothing lost when a stage fails or is killed, under the real DVC: a failed `report` run leaves the previous report
and summary byte for byte; killing dvc's own pid ends the stage's process within seconds, leaves no temporary folder,
and the next `dvc repro` resumes to a clean `dvc status`; SIGTERM prints one line saying how to resume."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "dvc").is_file() or shutil.which("git") is None, reason="needs dvc and git"),
]
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
}


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert not check or res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res


def dvc_project(root: Path, stages: dict) -> Path:
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "t@t")
    sh(root, "git", "config", "user.name", "t")
    sh(root, "dvc", "init", "-q")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_a_failed_report_run_leaves_the_previous_report_and_summary_byte_for_byte(
    tiny_study: Path, tmp_path: Path
) -> None:
    """The real `report` stage of dvc.yaml (its code deps left out) on a tiny study's outputs: a good run, then a
    corrupt input."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    stage["deps"] = [d for d in stage["deps"] if not str(d).startswith("src/") and d != "data/validated.json"]
    project = tmp_path / "project"
    for part in ("metrics", "models", "plots", "data"):
        shutil.copytree(
            tiny_study / part, project / part, symlinks=False, ignore=shutil.ignore_patterns("report", "summary.json")
        )
    shutil.copy(tiny_study / "params.yaml", project / "params.yaml")
    dvc_project(project, {"report": stage})
    sh(project, "dvc", "repro", "report")
    outputs = [*sorted((project / "plots" / "report").iterdir()), project / "metrics" / "summary.json"]
    before = digest(outputs)
    (project / "metrics" / "source" / "over-7.json").write_bytes(os.urandom(64))
    res = sh(project, "dvc", "repro", "report", check=False)
    assert (
        res.returncode != 0 and "metrics/source/over-7.json: truncated or corrupt JSON file" in res.stderr + res.stdout
    )
    assert digest(outputs) == before and sorted((project / "plots" / "report").iterdir()) == outputs[:-1]


SLOW_STAGE = """
import os, time
from pathlib import Path
from inflection_layers.artifacts import atomic_path
from inflection_layers.errors import run_main

def main():
    with atomic_path("out", is_dir=True) as folder:
        (folder / "part").write_text("half")
        Path("started").write_text(str(os.getpid()))
        for _ in range(0 if os.environ.get("FAST") else 600):
            time.sleep(0.1)
        (folder / "part").write_text("whole")

run_main(main)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_killing_dvc_ends_the_stage_and_the_next_repro_resumes(tmp_path: Path) -> None:
    project = dvc_project(
        tmp_path, {"slow": {"cmd": "python slow_stage.py", "deps": ["slow_stage.py"], "outs": ["out"]}}
    )
    (project / "slow_stage.py").write_text(SLOW_STAGE)
    dvc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=project,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (project / "started").is_file() and time.time() < deadline:
        time.sleep(0.2)
    stage_pid = int((project / "started").read_text())
    os.kill(dvc.pid, signal.SIGTERM)  # dvc's own pid, not its process group: the case that used to leave an orphan
    dvc.wait(timeout=30)
    deadline = time.time() + 10
    while alive(stage_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(stage_pid), "the stage outlived dvc"
    assert not (project / "out").exists() and not list(project.glob(".out.tmp*")), sorted(
        p.name for p in project.iterdir()
    )
    (project / "started").unlink()
    res = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=project, env={**ENV, "FAST": "1"}, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert (project / "out" / "part").read_text() == "whole"
    assert sh(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."


def test_sigterm_says_how_to_resume_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    (tmp_path / "slow_stage.py").write_text(SLOW_STAGE)
    proc = subprocess.Popen([sys.executable, "slow_stage.py"], cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "started").is_file() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert (
        err.strip().splitlines()[-1].startswith("interrupted: stage slow_stage (SIGTERM)")
        and "rerun `dvc repro` to resume" in err
    )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))
