"""Benchmark parts (g) and (j): how long a stage takes to start, and a no-op `dvc repro` (tools/benchmark.py runs
them with --dvc and --only j)."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def noop_repro() -> None:
    """(g) the wall time of `dvc repro` on a complete workspace, and how many stages it ran."""
    t0 = time.perf_counter()
    out = subprocess.run(["dvc", "repro"], capture_output=True, text=True, check=True).stdout
    ran = len(re.findall(r"^Running stage", out, flags=re.M))
    print(f"\n(g) no-op `dvc repro`: {time.perf_counter() - t0:.1f} s, {ran} stages ran (goal: < 5 s, 0 stages)")


def stage_scripts(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The stage modules dvc.yaml runs, in pipeline order (`python -m inflection_layers.<name>`)."""
    found = re.findall(r"python -m inflection_layers\.(\w+)", dvc_yaml.read_text())
    return list(dict.fromkeys(found))


def startup(n: int = 3) -> None:
    """(j) median seconds from process start to a stage's parsed arguments (`--help`), and whether torch loads."""
    probe = "import sys, importlib; importlib.import_module(sys.argv[1]); print('torch' in sys.modules)"
    rows = [("python (nothing)", [sys.executable, "-c", "pass"], None)]
    rows.append(("import torch", [sys.executable, "-c", "import torch"], True))
    for name in stage_scripts():
        module = f"inflection_layers.{name}"
        torch_loaded = subprocess.run([sys.executable, "-c", probe, module], capture_output=True, text=True, check=True)
        rows.append((name, [sys.executable, "-m", module, "--help"], torch_loaded.stdout.strip() == "True"))
    print("\n(j) start-up: process start to parsed arguments, median of", n)
    for name, cmd, uses_torch in rows:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        torch_note = "" if uses_torch is None else (" (imports torch)" if uses_torch else " (no torch)")
        print(f"    {name:<18} {statistics.median(times):6.2f} s{torch_note}")
