"""Bad parameters fail before anything is touched, as one line naming the key, the value and what is allowed.

- `dvc exp run -S` with an unknown key and `dvc repro` with a bad value (or a missing data.dir), in a temporary DVC
  workspace (a copy of the project's files, `dvc repro validate prepare` run once on the smoke profile): the pipeline
  must stop in `validate`, and every output already there must keep its bytes;
- `validate` on unknown keys, bad values, values the model's depth or the data's size rule out, a model that is not
  there, and valid parameters (the cases of tests/stage_cases.py, run once per session by conftest's `stage_runs`);
- what a refusal looks like: exit status 2 and one line, the traceback only with INFLECTION_LAYERS_TRACEBACK=1 (one
  case also run as a genuine `python -m` subprocess, to check the runner against the CLI).

This file asks for the DVC workspace first, and the workspace for the stage runner, so the runner works while DVC
runs; pytest collects this file before the other users of `stage_runs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from stage_cases import (
    BIN,
    CASES,
    PREPARE,
    ROOT,
    SHARED_DATA,
    Run,
    clean_env,
    composed,
    known_error,
    needs_data,
    refused,
    write_params,
)

from inflection_layers.errors import TRACEBACK_ENV


def row(*values: object, slow: bool = False, id: str | None = None) -> object:
    """A parametrize row with its first value as the test id (and the slow mark if asked)."""
    return pytest.param(*values, id=id or str(values[0]), marks=[pytest.mark.slow] if slow else [])


# ----------------------------------------------------------------- 1-2. the DVC workspace: dvc repro


def dvc(ws: Path, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    """`dvc <args>` in the workspace (stdout and stderr together); the whole process group is killed on a timeout."""
    env = clean_env(PYTHONPATH=str(ws / "src"), DVC_NO_ANALYTICS="1")
    proc = subprocess.Popen(
        [str(BIN / "dvc"), *args],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"dvc {' '.join(args)} ran past {timeout} s (a stage after validate ran?):\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, stage_runner: tuple) -> Path:
    """A copy of the project (the files git lists), committed, with `dvc repro validate prepare` run on the smoke
    profile.

    It asks for the stage runner only to start it first: the two then run side by side.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline data copies are not at {SHARED_DATA}")
    if not (BIN / "dvc").is_file() or shutil.which("git") is None:
        pytest.skip("dvc (in the venv) and git are needed")
    ws = tmp_path_factory.mktemp("dvc-workspace")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        if (ROOT / rel).is_file():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, ws / rel)
    assert (ws / ".dvc/config").is_file()  # copied with the project: no `dvc init` needed
    write_params(ws, composed())
    git(ws, "init", "-q")
    git(ws, "config", "user.name", "test")
    git(ws, "config", "user.email", "test@localhost")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "project")
    ran = dvc(ws, "repro", "validate", "prepare")
    assert ran.returncode == 0, ran.stdout[-4000:]
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "validate and prepare on the smoke profile")
    assert (ws / "data/prepared/rt_train.parquet").is_file() and (ws / "metrics/data.json").is_file()
    return ws


def outputs(ws: Path) -> dict[str, str]:
    """md5 of every file under every output that dvc.lock records and the workspace holds."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    found = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = ws / out["path"]
            for f in sorted(path.rglob("*")) if path.is_dir() else [path] if path.is_file() else []:
                if f.is_file():
                    found[f.relative_to(ws).as_posix()] = hashlib.md5(f.read_bytes()).hexdigest()
    return found


# validate's own output: DVC deletes it before running validate, and validate rewrites it unchanged
MARKER = "data/validated.json"


@contextlib.contextmanager
def restored(ws: Path) -> Iterator[None]:
    """Put params.yaml and the validation marker back afterwards, so each test starts from the committed workspace."""
    params, marker = (ws / "params.yaml").read_bytes(), (ws / MARKER).read_bytes()
    try:
        yield
    finally:
        (ws / "params.yaml").write_bytes(params)
        (ws / MARKER).write_bytes(marker)


def assert_untouched(
    ws: Path, before: dict[str, str], lock: bytes, ran: subprocess.CompletedProcess, message: str
) -> None:
    """Refused by validate, with one line naming the key; no other stage ran; every output and dvc.lock kept their
    bytes."""
    log = ran.stdout
    assert ran.returncode != 0, log[-4000:]
    assert re.findall(r"Running stage '([^']+)'", log) == ["validate"], log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert (
        len(errors) == 1 and errors[0].startswith("error: validate: params.yaml: ") and re.search(message, errors[0])
    ), log[-4000:]
    after = outputs(ws)
    assert after.get(MARKER, before[MARKER]) == before[MARKER]
    assert {k: v for k, v in after.items() if k != MARKER} == {k: v for k, v in before.items() if k != MARKER}
    assert any(k.startswith("data/prepared/") for k in before) and "metrics/data.json" in before
    assert (ws / "dvc.lock").read_bytes() == lock


@pytest.mark.parametrize(
    ("override", "message"),
    [
        row("+finetune.stepz=100", r"finetune\.stepz = 100 is not allowed; expected no such key"),
        row("+colour=red", r"colour = 'red' is not allowed; expected no such key", slow=True),
    ],
)
def test_dvc_exp_run_refuses_an_unknown_key_before_any_stage(workspace: Path, override: str, message: str) -> None:
    before, lock = outputs(workspace), (workspace / "dvc.lock").read_bytes()
    with restored(workspace):
        ran = dvc(workspace, "exp", "run", "-S", "profile=smoke", "-S", f"data.dir={SHARED_DATA}", "-S", override)
        assert (
            override.lstrip("+").split("=")[0].split(".")[-1] in (workspace / "params.yaml").read_text()
        )  # DVC composed it in
        assert_untouched(workspace, before, lock, ran, message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        row("lora.rank", "eight", r"lora\.rank = 'eight' is not allowed; expected an integer", id="lora.rank=eight"),
        row("ski.alpha", 1.5, r"ski\.alpha = 1\.5 is not allowed", slow=True, id="ski.alpha=1.5"),
        row("study.seeds", [], r"study\.seeds = \[\] is not allowed", slow=True, id="study.seeds=[]"),
    ],
)
def test_a_bad_value_stops_dvc_repro_before_any_output_is_touched(
    workspace: Path, key: str, value: object, message: str
) -> None:
    """THE test of issue 17: outputs on disk, a bad value, `dvc repro`: validate refuses it and every output keeps its
    bytes."""
    before, lock = outputs(workspace), (workspace / "dvc.lock").read_bytes()
    with restored(workspace):
        raw = yaml.safe_load((workspace / "params.yaml").read_text())
        section, name = key.split(".")
        raw[section][name] = value
        write_params(workspace, raw)
        ran = dvc(workspace, "repro")
        assert_untouched(workspace, before, lock, ran, message)


@pytest.mark.slow
def test_a_missing_data_dir_offline_stops_dvc_repro_before_prepare_deletes_its_outputs(workspace: Path) -> None:
    before, lock = outputs(workspace), (workspace / "dvc.lock").read_bytes()
    try:
        with restored(workspace):
            raw = yaml.safe_load((workspace / "params.yaml").read_text())
            raw["data"]["dir"] = "./missing"
            write_params(workspace, raw)
            ran = dvc(workspace, "repro")
            assert_untouched(workspace, before, lock, ran, r"data\.dir = '\./missing'")
    finally:  # put back what prepare's run deleted, from the DVC cache, for the tests after this one
        dvc(workspace, "checkout", "prepare")
        (workspace / "dvc.lock").write_bytes(lock)


# ------------------------------------------------------------------- 1-3, 8. validate refuses first


@pytest.mark.parametrize(
    ("name", "message"),
    [
        row(
            "+colour=red",
            r"params\.yaml: colour = 'red' is not allowed; expected no such key; known keys here: \['study', 'data', ",
        ),
        row(
            "+finetune.stepz=100",
            r"params\.yaml: finetune\.stepz = 100 is not allowed; expected no such key; known keys here: \['steps', ",
        ),
    ],
)
def test_validate_refuses_an_unknown_key(stage_runs: dict[str, Run], name: str, message: str) -> None:
    assert re.search(message, refused(stage_runs, name))
    assert sorted(p.name for p in stage_runs[name].cwd.iterdir()) == ["params.yaml"]  # nothing else touched


@pytest.mark.parametrize(
    ("name", "message"),
    [
        row("lora.rank=eight", r"params\.yaml: lora\.rank = 'eight' is not allowed; expected an integer$"),
        row("ski.alpha=1.5", r"params\.yaml: ski\.alpha = 1\.5 is not allowed; expected a float in \[0, 1\]$"),
        row(
            "study.seeds=[]",
            r"params\.yaml: study\.seeds = \[\] is not allowed; expected a non-empty list without repeats$",
        ),
    ],
)
def test_validate_refuses_a_bad_value_naming_the_key(stage_runs: dict[str, Run], name: str, message: str) -> None:
    line = refused(stage_runs, name).removesuffix(f" (set {TRACEBACK_ENV}=1 for the traceback)")
    assert re.search(message, line), line
    assert sorted(p.name for p in stage_runs[name].cwd.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        row(
            "finetune.shallow_k=10",
            r"finetune\.shallow_k = 10 is not allowed; expected an integer in \[1, 6\] "
            r"\(the model 'packaged' has 6 layers\)",
        ),
        row(
            "ski.max_band=7",
            r"ski\.max_band = 7 is not allowed; expected null or an integer in \[1, 6\] "
            r"\(the model 'packaged' has 6 layers\)",
        ),
        row(
            "probe.train_fraction=0.9",
            r"probe\.train_fraction = 0\.9 is not allowed; .*at least 20 sentences to evaluate on "
            r"\(rt's analysis sample has 120\)",
        ),
        row(
            "probe.train_fraction=0.1",
            r"probe\.train_fraction = 0\.1 is not allowed; .*at least 20 sentences to train on "
            r"\(rt's analysis sample has 120\)",
        ),
    ],
)
def test_validate_checks_the_models_depth_and_the_datas_size(
    stage_runs: dict[str, Run], name: str, message: str
) -> None:
    assert re.search(message, refused(stage_runs, name))
    assert sorted(p.name for p in stage_runs[name].cwd.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        row(
            "model.name=nosuchorg/nosuchmodel",
            r"model\.name = 'nosuchorg/nosuchmodel' is neither an existing directory nor in the local hub cache, "
            r"and the Hugging Face hub is unreachable \(HF_HUB_OFFLINE is set\)",
        ),
        row(
            "model.name=./no_such_dir",
            r"model\.name = '\./no_such_dir' is not an existing directory \(and not a hub id of the form 'org/name'\)",
        ),
    ],
)
def test_a_model_that_is_not_there_says_which_it_is(stage_runs: dict[str, Run], name: str, message: str) -> None:
    assert re.search(message, refused(stage_runs, name))
    assert stage_runs[name].seconds < 20  # no download retries


def test_valid_parameters_pass_and_prepare_works_offline(stage_runs: dict[str, Run]) -> None:
    valid, prepared = stage_runs["valid"], stage_runs["prepare:valid"]
    assert valid.rc == 0 and "Traceback" not in valid.log, valid.log[-3000:]
    assert json.loads((valid.cwd / "data/validated.json").read_text()) == {"params": "valid"}
    assert prepared.rc == 0, prepared.log[-3000:]
    assert json.loads((prepared.cwd / "metrics/data.json").read_text())["source"] == "local"
    assert len(pd.read_parquet(prepared.cwd / "data/prepared/sst2_source.parquet")) == 96  # the smoke profile's sample


# ----------------------------------------------------------- 9. one line, the traceback on request


@needs_data
def test_a_known_error_is_one_line_and_its_traceback_only_on_request(
    stage_runs: dict[str, Run], tmp_path: Path
) -> None:
    """The genuine command (`python -m`), without and with INFLECTION_LAYERS_TRACEBACK=1; the runner shows the same
    line."""
    raw = composed()
    raw["data"]["dir"] = "./missing"
    write_params(tmp_path, raw)
    cmd = [sys.executable, "-m", "inflection_layers.prepare", *PREPARE]
    plain = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    line = known_error(plain.returncode, plain.stdout + plain.stderr, "prepare")
    runner = stage_runs["prepare:data.dir=./missing"]
    assert line.replace(str(tmp_path), "<cwd>") == refused(stage_runs, "prepare:data.dir=./missing").replace(
        str(runner.cwd), "<cwd>"
    )
    traced = subprocess.run(
        cmd, cwd=tmp_path, env=clean_env(**{TRACEBACK_ENV: "1"}), capture_output=True, text=True, timeout=300
    )
    assert traced.returncode == 1 and "Traceback (most recent call last)" in traced.stderr
    assert re.search(r"inflection_layers\.errors\.DataError: data\.dir = '\./missing' .* is missing", traced.stderr), (
        traced.stderr[-3000:]
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_every_refused_case_exited_2_with_one_line(stage_runs: dict[str, Run]) -> None:
    """Item 9 over every case that is expected to be refused: status 2, one line, no traceback."""
    for name in CASES:
        if name in ("valid", "prepare:valid"):
            continue
        refused(stage_runs, name)
