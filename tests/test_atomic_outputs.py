"""A stage's outputs are all or nothing, and a CPU cell reruns bit for bit.

- outputs are written to a hidden temporary sibling and renamed into place: a stage killed mid-save leaves no output
  and reruns clean, a crash keeps the old output, stale temporaries of dead writers are removed;
- a NaN loss stops training at its step and writes nothing;
- the same `source` cell run twice on the CPU gives byte-identical files.

On a tiny random BERT with the packaged tokenizer (conftest's `tiny_dir`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stage_cases import clean_env, source_workdir

from inflection_layers import source
from inflection_layers.artifacts import atomic_path, remove_stale_temps, temp_prefix
from inflection_layers.modeling import check_safetensors, load_model

TIMING_KEYS = {"wall_seconds", "tokens_per_second"}  # wall-clock fields of metrics/source/<cell>.json


def source_argv(out: str = "models/source/under-7", metrics: str = "metrics/source/under-7.json") -> list[str]:
    """The arguments dvc.yaml gives `source@under-7`."""
    return ["--regime", "under", "--seed", "7", "--data", "data/prepared", "--out", out, "--metrics", metrics]


def run_stage(module: object, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def leftovers(path: Path) -> list[Path]:
    """Temporary siblings of an output path (what an interrupted atomic write leaves)."""
    return (
        sorted(p for p in path.parent.iterdir() if p.name.startswith(temp_prefix(path))) if path.parent.is_dir() else []
    )


# ------------------------------------------------------------------------------------ kill and rerun

# Imported by the stage's interpreter through PYTHONPATH, so the command stays exactly dvc.yaml's.
# It makes the kill land at the worst moment: the checkpoint is completely written, but still in the
# temporary folder; the rename onto the declared path has not happened yet.
KILL_HOOK = """
import os, time
import inflection_layers.modeling as m
_save = m.save_checkpoint
def save_then_hang(model, tokenizer, out_dir, params):
    _save(model, tokenizer, out_dir, params)
    with open(os.environ["KILL_TEST_MARKER"] + ".part", "w") as f:
        f.write(str(out_dir))
    os.replace(os.environ["KILL_TEST_MARKER"] + ".part", os.environ["KILL_TEST_MARKER"])  # appears complete
    time.sleep(600)
m.save_checkpoint = save_then_hang
"""


@pytest.mark.slow
def test_source_killed_mid_save_leaves_no_output_and_reruns_clean(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = source_workdir(tmp_path / "repo", tiny_dir)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    marker, log = tmp_path / "saved", tmp_path / "stage.log"
    env = clean_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        KILL_TEST_MARKER=str(marker),
    )
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inflection_layers.source", *source_argv()],
            cwd=work,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, (
                f"the stage ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no kill point within 240 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    out, metrics = work / "models/source/under-7", work / "metrics/source/under-7.json"
    assert not out.exists() and not metrics.exists()
    (tmp,) = leftovers(out)  # the only thing left: a hidden sibling, not the path DVC declared
    assert tmp.name.startswith(".") and sorted(p.name for p in out.parent.iterdir()) == [tmp.name]
    assert (
        work / Path(marker.read_text()).parent == tmp and (tmp / "under-7" / "model.safetensors").is_file()
    )  # killed mid-write, really

    monkeypatch.chdir(work)
    run_stage(source, monkeypatch, source_argv())  # the rerun, with the same arguments
    assert leftovers(out) == []  # the dead writer's temporary folder is gone
    assert {"model.safetensors", "config.json", "tokenizer.json", "params.json"} <= {p.name for p in out.iterdir()}
    check_safetensors(out / "model.safetensors")
    assert json.loads(metrics.read_text())["steps"] == 6  # 48 examples / batch 8
    assert load_model(str(out)).config.num_hidden_layers == 2


def test_atomic_write_keeps_the_old_output_until_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "cell"
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(out, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt  # a crash in the middle of writing
    assert (out / "a.txt").read_text() == "old" and leftovers(out) == []
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and leftovers(out) == []


@pytest.mark.parametrize(
    ("name", "stale"),
    [
        (".x.json.tmp999999999-abc", True),  # a pid that cannot exist: its writer is dead
        (".x.json.tmpk2j4l1", True),  # the older naming, without a pid
        (f".x.json.tmp{os.getpid()}-abc", False),  # a live writer (this process): kept
        (".x.json.tmp1-abc", False),  # pid 1 is alive
        (".x.jsonl.tmp999999999-abc", False),  # another output's temp
        ("x.json.tmp999999999-abc", False),  # not hidden: not ours
    ],
    ids=["dead-writer", "no-pid", "live-writer", "pid-1", "other-output", "not-hidden"],
)
def test_stale_temporary_siblings(tmp_path: Path, name: str, stale: bool) -> None:
    (tmp_path / name).mkdir()
    assert (remove_stale_temps(tmp_path / "x.json") == [tmp_path / name]) is stale
    assert (tmp_path / name).exists() is not stale


# --------------------------------------------------------------------------------- NaN / inf loss


def nan_from_call(module: torch.nn.Module, call: int, value: float = float("nan")) -> None:
    """Make `module`'s output `value` from its `call`-th forward on (0-based), as a diverged layer would."""
    calls = {"n": 0}

    def hook(_m: torch.nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        calls["n"] += 1
        return out * value if calls["n"] > call else None

    module.register_forward_hook(hook)


def test_source_stops_at_the_step_of_a_nan_loss_and_writes_nothing(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No lr in the allowed range (0, 1) makes this tiny model diverge reliably, so the divergence is injected:
    # the embeddings' output becomes NaN from the third training step (step 2) on.
    work = source_workdir(tmp_path, tiny_dir)

    def diverging(name: str, num_labels: int = 2) -> torch.nn.Module:
        model = load_model(name, num_labels)
        nan_from_call(model.bert.embeddings, 2)
        return model

    monkeypatch.setattr(source, "load_model", diverging)
    monkeypatch.chdir(work)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 2\b"):
        run_stage(source, monkeypatch, source_argv())
    assert not (work / "models").exists() and not (work / "metrics").exists()


# ------------------------------------------------------------------------------------- determinism


def test_source_cell_reruns_bitwise_on_cpu(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bitwise (not merely close) holds here because every source of variation is pinned: the seed fixes
    # the classifier initialisation, dropout masks and batch order; pick_device() uses the same number
    # of intra-op threads both times; and torch's CPU kernels (GEMM, reductions, fused AdamW) split the
    # work by shape and thread count only, with no atomics, so the floating-point summation order repeats.
    # It would break with a different thread count (another split of each reduction), another BLAS/MKL/
    # oneDNN build or CPU instruction set (other kernels), or a GPU (atomic adds and autotuned cuBLAS/cuDNN
    # algorithms are nondeterministic unless torch.use_deterministic_algorithms is set).
    work = source_workdir(tmp_path, tiny_dir, epochs=2)
    monkeypatch.chdir(work)
    runs = []
    for k in range(2):
        run_stage(source, monkeypatch, source_argv(out=f"models/run{k}/under-7", metrics=f"metrics/run{k}.json"))
        runs.append((work / f"models/run{k}/under-7", json.loads((work / f"metrics/run{k}.json").read_text())))
    (a, ma), (b, mb) = runs
    files = sorted(p.name for p in a.iterdir())
    assert "model.safetensors" in files and files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert set(ma) >= TIMING_KEYS and ma["steps"] == 12
    assert {k: v for k, v in ma.items() if k not in TIMING_KEYS} == {
        k: v for k, v in mb.items() if k not in TIMING_KEYS
    }
