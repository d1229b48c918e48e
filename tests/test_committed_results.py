"""The committed results are one run of the committed pipeline: dvc.lock holds no stage that dvc.yaml lacks, every
parameter it recorded equals params.yaml, and the summary and report name the profile that params.yaml selects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """params.yaml's value at a dotted key ('finetune.steps'); KeyError if it has none."""
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_the_lock_holds_only_stages_of_the_pipeline() -> None:
    command = [sys.executable, "-m", "dvc", "stage", "list", "--name-only"]
    names = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert names
    assert sorted(set(LOCK) - set(names)) == []
    assert sorted(set(names) - set(LOCK)) == []


def test_every_locked_parameter_equals_params_yaml() -> None:
    stale = []
    for stage, entry in LOCK.items():
        for key, value in entry.get("params", {}).get("params.yaml", {}).items():
            try:
                now = lookup(PARAMS, key)
            except KeyError:
                stale.append(f"{stage}: {key} (not in params.yaml)")
                continue
            if now != value:
                stale.append(f"{stage}: {key} = {value!r} in the lock, {now!r} in params.yaml")
    assert stale == [], f"{len(stale)} stale params, e.g. {stale[:5]}"


def test_summary_and_report_name_the_committed_profile() -> None:
    profile = PARAMS["study"]["profile"]
    summary = json.loads((ROOT / "metrics" / "summary.json").read_text())
    assert summary.get("profile") == profile
    assert f"Profile `{profile}`" in (ROOT / "plots" / "report" / "report.md").read_text()
