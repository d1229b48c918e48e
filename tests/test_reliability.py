"""Reliability: a bad parameter or a damaged input fails before anything is touched, as one line naming
what is wrong; killed stages leave no output; divergence stops with the step; nothing touches the
network, unpickles or runs remote code; a CPU cell reruns bit for bit.

Part 1 (issue 17, "Fail before anything is touched") runs the real commands:

- a temporary DVC workspace (a copy of the project's files, `dvc repro validate prepare` run once on the
  smoke profile) for `dvc exp run -S ...` with an unknown key and `dvc repro` with a bad value: the
  pipeline must stop in `validate`, and every output already there must keep its bytes;
- the stage modules on bad parameters and damaged inputs. Importing torch and transformers costs a
  stage most of its time on this machine, so the cases run in ONE interpreter (`STAGE_RUNNER`): each is
  `python -m inflection_layers.<stage>` as runpy executes it (the same `__main__`, `sys.argv[0]` and
  exit status), in its own folder with its own params.yaml, its stdout and stderr captured at the file
  descriptors, with every socket refused and the hub switched off. One case is also run as a genuine
  subprocess, with and without INFLECTION_LAYERS_TRACEBACK=1, to check the runner against the CLI.

Part 2 keeps the earlier reliability tests, on a tiny random BERT with the packaged tokenizer.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import BertForSequenceClassification, BertModel

from conftest import tiny_config
from inflection_layers import source
from inflection_layers.archs import PACKAGED, resolve_model_path
from inflection_layers.artifacts import (
    atomic_path,
    read_json,
    read_parquet,
    remove_stale_temps,
    temp_prefix,
    write_json,
)
from inflection_layers.config import parse_params
from inflection_layers.errors import TRACEBACK_ENV, InputError, ModelError
from inflection_layers.modeling import check_safetensors, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "inflection_layers"
SHARED_DATA = (ROOT / "../shared/data").resolve()  # params.yaml's data.dir, ../shared/data, from the repository root
BIN = Path(sys.executable).parent
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the offline data copies are not at {SHARED_DATA}")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
GROUP = "rt-under-42"
WORDS = ["good", "bad", "fine", "awful", "film", "plot", "great", "dull"]
TIMING_KEYS = {"wall_seconds", "tokens_per_second"}  # wall-clock fields of metrics/source/<cell>.json


# ================================================================================ part 1: issue 17
# ------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on the package's conf/, as DVC's Hydra integration does (`[hydra] config_module`)."""
    from hydra import initialize_config_module

    with initialize_config_module("inflection_layers.conf", version_base=None):
        yield


def compose_smoke(*overrides: str) -> dict:
    """Inside hydra_conf(): params.yaml as `dvc exp run -S profile=smoke -S <override> ...` composes it, data.dir the offline copies."""
    from hydra import compose
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(compose(config_name="config", overrides=["profile=smoke", *overrides]), resolve=True)
    raw["data"]["dir"] = str(SHARED_DATA)
    return raw


def composed(*overrides: str) -> dict:
    with hydra_conf():
        return compose_smoke(*overrides)


def write_params(folder: Path, raw: dict) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a stage: offline, the venv first on PATH, no traceback switch unless asked for."""
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    return {**env, **OFFLINE, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def known_error(rc: int, log: str, stage: str) -> str:
    """The one line of a known error: exit status 2, no traceback, exactly one `error: <stage>: ` line, printed last."""
    assert rc == 2, f"exit status {rc}, expected 2:\n{log[-4000:]}"
    assert "Traceback" not in log, log[-4000:]
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], log[-4000:]
    assert re.match(rf"error: {re.escape(stage)}(_peft|_tau)?(@[\w-]+)?: ", errors[0]) and errors[0].endswith(
        f"(set {TRACEBACK_ENV}=1 for the traceback)"
    ), errors[0]
    return errors[0]


def tiny_split(path: Path, n: int = 48) -> None:
    """A small (id, text, label) split as `prepare` writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} film {i}" for i in range(n)]
    pd.DataFrame(
        {"id": [f"x-{i:04d}" for i in range(n)], "text": texts, "label": [i % 2 for i in range(n)]}
    ).to_parquet(path, index=False)


def lock_for(folder: Path) -> None:
    """A dvc.lock (the format `dvc repro` writes) whose outputs say which stage writes the inputs the cases damage."""
    outs = {
        "prepare": ["data/prepared", "metrics/data.json"],
        f"diagnose@{GROUP}": [
            f"metrics/diagnose/{GROUP}.csv",
            f"metrics/diagnose/{GROUP}-heads.csv",
            f"metrics/diagnose/{GROUP}.json",
        ],
        f"select@{GROUP}": [f"metrics/selection/{GROUP}.json", f"plots/selection/{GROUP}.csv"],
    }
    stages = {
        name: {
            "cmd": f"python -m inflection_layers.{name.split('@')[0]}",
            "outs": [{"path": p, "hash": "md5", "md5": "0" * 32} for p in paths],
        }
        for name, paths in outs.items()
    }
    (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}, sort_keys=False))


def damaged_copy(folder: Path, rel: str, change: Callable[[bytes], bytes]) -> Path:
    """The offline data copies with one file changed: links to the originals, the changed file written."""
    root = folder / "data-copy"
    for original in SHARED_DATA.rglob("*"):
        if original.is_file():
            (root / original.relative_to(SHARED_DATA)).parent.mkdir(parents=True, exist_ok=True)
            (root / original.relative_to(SHARED_DATA)).symlink_to(original)
    (root / rel).unlink()
    (root / rel).write_bytes(change((SHARED_DATA / rel).read_bytes()))
    return root / rel


def line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def cut_mid_line(raw: bytes) -> bytes:
    """An interrupted copy: the file ends half-way through a line (no final newline)."""
    mid = raw.index(b"\n", len(raw) // 2) + 1
    return raw[: mid + 7]


def cut_at_line_end(raw: bytes) -> bytes:
    """Truncated after a complete line: only the checksum or the row count can tell."""
    return raw[: raw.index(b"\n", len(raw) // 2) + 1]


def put_byte(byte: bytes) -> Callable[[bytes], bytes]:
    """Replace the first letter of the middle line by `byte`."""

    def change(raw: bytes) -> bytes:
        at = raw.index(b"\n", len(raw) // 2) + 1
        return raw[:at] + byte + raw[at + 1 :]

    return change


def nan_embeddings(folder: Path) -> Path:
    """The packaged model with its word embeddings set to NaN, in place: a model.safetensors of the same size."""
    original = Path(resolve_model_path(PACKAGED))
    model = folder / "nan-model"
    shutil.copytree(original, model)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        (name,) = [k for k in header if k.endswith("word_embeddings.weight")]
        begin, end = header[name]["data_offsets"]
        assert header[name]["dtype"] == "F32"
        f.seek(8 + n + begin)
        f.write(np.full((end - begin) // 4, np.nan, dtype="<f4").tobytes())
    assert weights.stat().st_size == (original / "model.safetensors").stat().st_size
    return model


def diagnose_csv(path: Path) -> None:
    """A tidy per-layer table as `diagnose` writes it (6 layers; act_grad also has the embeddings' layer -1)."""
    rows = []
    for m, metric in enumerate(["entropy", "entropy_norm", "act_grad", "param_grad", "param_norm", "rgn", "io_change"]):
        first = -1 if metric == "act_grad" else 0
        rows += [
            {
                "layer": first + i,
                "metric": metric,
                "value": round(0.1 + 0.37 * ((i * 7 + m) % 5), 4),
                "target": "rt",
                "regime": "under",
                "seed": 42,
            }
            for i in range(6 - first)
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


# ------------------------------------------------------------------------------- the stage runner

# Every way of opening a network connection (and name resolution) is recorded to a file and refused.
NET_GUARD = """
import json, os, socket
def _refuse(kind):
    def guard(*args, **kwargs):
        with open(os.environ["NET_ATTEMPTS"], "a") as f:
            f.write(json.dumps([kind, repr(args)[:300]]) + "\\n")
        raise OSError(f"network disabled by the offline test ({kind})")
    return guard
socket.socket.connect = _refuse("connect")
socket.socket.connect_ex = _refuse("connect_ex")
socket.create_connection = _refuse("create_connection")
socket.getaddrinfo = _refuse("getaddrinfo")
"""

# `python -m inflection_layers.<module> <argv>` for each case, in one interpreter: runpy runs the module as
# __main__ with sys.argv[0] its file (as -m does, so run_main names the same stage); an uncaught exception
# prints its traceback and counts as exit status 1, as the interpreter would.
STAGE_RUNNER = r"""
import json, os, runpy, sys, time, traceback
cases, results, out = json.loads(open(sys.argv[1]).read()), {}, sys.argv[2]
keep_out, keep_err = os.dup(1), os.dup(2)
for case in cases:
    fd = os.open(case["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
    os.chdir(case["cwd"])
    sys.argv = [case["module"], *case["argv"]]
    t0 = time.perf_counter()
    try:
        runpy.run_module("inflection_layers." + case["module"], run_name="__main__", alter_sys=True)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    seconds = time.perf_counter() - t0
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(keep_out, 1); os.dup2(keep_err, 2)
    results[case["name"]] = {"rc": rc, "seconds": seconds}
open(out, "w").write(json.dumps(results))
"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One stage run: the module, its arguments (as dvc.yaml gives them), the params overrides, the inputs it finds."""

    module: str
    argv: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    setup: Callable[[Path, dict], None] | None = None  # (case folder, params) -> None: writes inputs, may change params
    outputs: tuple[str, ...] = ()  # what the stage would write: none of it may exist afterwards


@dataclasses.dataclass(frozen=True)
class Run:
    rc: int
    log: str
    seconds: float
    cwd: Path


VALIDATE = ("--out", "data/validated.json")
PREPARE = ("--out", "data/prepared", "--metrics", "metrics/data.json")
DIAGNOSE = (
    "--group",
    GROUP,
    "--data",
    "data/prepared",
    "--layers",
    f"metrics/diagnose/{GROUP}.csv",
    "--heads",
    f"metrics/diagnose/{GROUP}-heads.csv",
    "--metrics",
    f"metrics/diagnose/{GROUP}.json",
)
SELECT = (
    "--group",
    GROUP,
    "--layers",
    f"metrics/diagnose/{GROUP}.csv",
    "--out",
    f"metrics/selection/{GROUP}.json",
    "--table",
    f"plots/selection/{GROUP}.csv",
)
LORA = (
    "--kind",
    "peft",
    "--group",
    GROUP,
    "--source",
    "models/source/under-42",
    "--data",
    "data/prepared",
    "--selection",
    f"metrics/selection/{GROUP}.json",
    "--out",
    f"models/finetune_peft/{GROUP}",
    "--metrics",
    f"metrics/finetune_peft/{GROUP}",
    "--plots",
    f"plots/finetune_peft/{GROUP}",
)
SOURCE = (
    "--regime",
    "under",
    "--seed",
    "42",
    "--data",
    "data/prepared",
    "--out",
    "models/source/under-42",
    "--metrics",
    "metrics/source/under-42.json",
)


def row(*values: object, slow: bool = False, id: str | None = None) -> object:
    """A parametrize row with its first value as the test id (and the slow mark if asked)."""
    return pytest.param(*values, id=id or str(values[0]), marks=[pytest.mark.slow] if slow else [])


def validate_case(*overrides: str) -> Case:
    return Case("validate", VALIDATE, overrides, outputs=("data/validated.json",))


def data_case(rel: str, change: Callable[[bytes], bytes], verify: bool = True) -> Case:
    def setup(folder: Path, raw: dict) -> None:
        raw["data"]["dir"] = str(damaged_copy(folder, rel, change).parents[1])
        raw["data"]["verify_checksums"] = verify

    return Case("prepare", PREPARE, setup=setup, outputs=("data/prepared", "metrics/data.json"))


def with_nan_model(module: str) -> Case:
    def setup(folder: Path, raw: dict) -> None:
        shared = folder.parent / "nan-model"  # built once, for every case that uses it
        if not shared.is_dir():
            nan_embeddings(folder.parent)
        (folder / "nan-model").symlink_to(shared, target_is_directory=True)
        raw["model"]["name"] = str(folder / "nan-model")
        for name in ("rt_train", "sst2_source", "sst2_dev"):
            tiny_split(folder / f"data/prepared/{name}.parquet")

    if module == "diagnose":
        return Case("diagnose", ("--model", "nan-model", *DIAGNOSE), setup=setup, outputs=("metrics",))
    return Case("source", SOURCE, setup=setup, outputs=("models", "metrics"))


def truncated_parquet(folder: Path, raw: dict) -> None:
    lock_for(folder)
    split = folder / "data/prepared/rt_train.parquet"
    tiny_split(split)
    split.write_bytes(split.read_bytes()[: split.stat().st_size // 2])


def truncated_selection(folder: Path, raw: dict) -> None:
    lock_for(folder)
    selection = folder / f"metrics/selection/{GROUP}.json"
    write_json(
        selection, {"band": [3, 4, 5], "complement": [0, 1, 2], "rgn": [1, 2, 3], "cka": [0, 1, 2], "random": []}
    )
    selection.write_bytes(selection.read_bytes()[:40])


def truncated_layers(cut: Callable[[bytes], bytes]) -> Callable[[Path, dict], None]:
    def setup(folder: Path, raw: dict) -> None:
        lock_for(folder)
        table = folder / f"metrics/diagnose/{GROUP}.csv"
        diagnose_csv(table)
        table.write_bytes(cut(table.read_bytes()))

    return setup


def last_row_cut(keep: int) -> Callable[[bytes], bytes]:
    """Cut inside the last row, keeping its first `keep` fields (and the comma after them)."""

    def cut(raw: bytes) -> bytes:
        start = raw.rstrip(b"\n").rindex(b"\n") + 1
        fields = raw[start:].split(b",")
        return raw[: start + sum(len(f) + 1 for f in fields[:keep])]

    return cut


DAMAGED = {  # name: (file, change, data.verify_checksums, the message after "<file>: ", {line} / {lines} filled in)
    "cut-mid-line": (
        "rt-polaritydata/rt-polarity.pos",
        cut_mid_line,
        True,
        r"the last line is cut \(the file does not end with a newline\), so the file is truncated",
    ),
    "cut-mid-line-unverified": ("rt-polaritydata/rt-polarity.pos", cut_mid_line, False, r"the last line is cut"),
    "nul-byte": (
        "CR/custrev.neg",
        put_byte(b"\x00"),
        True,
        r"control byte 0x00 on line {line}; the file is damaged or not text",
    ),
    "ff-byte-utf8": ("SST-2/dev.tsv", put_byte(b"\xff"), True, r"not UTF-8 \(byte 0xFF on line {line}\)"),
    "ff-byte-ascii": ("CR/custrev.pos", put_byte(b"\xff"), True, r"not ASCII \(byte 0xFF on line {line}\)"),
    "cut-at-line-end": (
        "rt-polaritydata/rt-polarity.neg",
        cut_at_line_end,
        True,
        r"sha256 is [0-9a-f]{{64}} but the pinned copy's is 4ace77d5[0-9a-f]{{56}}, so this is another version of the file "
        r"\(set data\.verify_checksums: false to accept it\)",
    ),
    "cut-at-line-end-unverified": (
        "rt-polaritydata/rt-polarity.neg",
        cut_at_line_end,
        False,
        r"expected 5,331 lines, found {lines:,} \(truncated or a different version\?\)",
    ),
}


CASES: dict[str, Case] = {
    # 1. unknown keys
    "+colour=red": validate_case("+colour=red"),
    "+finetune.stepz=100": validate_case("+finetune.stepz=100"),
    # 2. bad values
    "lora.rank=eight": validate_case("lora.rank=eight"),
    "ski.alpha=1.5": validate_case("ski.alpha=1.5"),
    "study.seeds=[]": validate_case("study.seeds=[]"),
    # 3. constraints between sections, the model's depth and the data's size
    "finetune.shallow_k=10": validate_case("finetune.shallow_k=10"),
    "ski.max_band=7": validate_case("ski.max_band=7"),
    "probe.train_fraction=0.9": validate_case("probe.train_fraction=0.9"),
    "probe.train_fraction=0.1": validate_case("probe.train_fraction=0.1"),
    # 8. a model that is not there
    "model.name=nosuchorg/nosuchmodel": validate_case("model.name=nosuchorg/nosuchmodel"),
    "model.name=./no_such_dir": validate_case("model.name=./no_such_dir"),
    # 4. no data directory, no hub
    "validate:data.dir=./missing": Case(
        "validate",
        VALIDATE,
        setup=lambda folder, raw: raw["data"].update(dir="./missing"),
        outputs=("data/validated.json",),
    ),
    "prepare:data.dir=./missing": Case(
        "prepare",
        PREPARE,
        setup=lambda folder, raw: raw["data"].update(dir="./missing"),
        outputs=("data/prepared", "metrics/data.json"),
    ),
    # 5. damaged data files (a copy of the offline data with one file changed)
    **{name: data_case(rel, change, verify) for name, (rel, change, verify, _) in DAMAGED.items()},
    # 6. NaN weights of the same size
    "nan-embeddings:diagnose": with_nan_model("diagnose"),
    "nan-embeddings:source": with_nan_model("source"),
    # 7. a truncated input written by an earlier stage
    "truncated-parquet:diagnose": Case(
        "diagnose", ("--model", "models/source/under-42", *DIAGNOSE), setup=truncated_parquet, outputs=("metrics",)
    ),
    "truncated-json:finetune_peft": Case(
        "finetune", LORA, setup=truncated_selection, outputs=("models", "metrics/finetune_peft", "plots")
    ),
    "truncated-csv-mid-file:select": Case(
        "select",
        SELECT,
        setup=truncated_layers(lambda raw: raw[: len(raw) // 2]),
        outputs=("metrics/selection", "plots"),
    ),
    "truncated-csv-mid-value:select": Case(
        "select", SELECT, setup=truncated_layers(last_row_cut(2)), outputs=("metrics/selection", "plots")
    ),
    "truncated-csv-in-labels:select": Case(
        "select", SELECT, setup=truncated_layers(last_row_cut(4)), outputs=("metrics/selection", "plots")
    ),
    # controls: valid parameters pass and prepare writes its outputs, offline
    "valid": validate_case(),
    "prepare:valid": Case("prepare", PREPARE),
}


@pytest.fixture(scope="module")
def stage_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, Path, list[dict]]]:
    """Start every case of CASES in one interpreter, sockets refused, in the background: (process, folder, cases).

    The DVC workspace asks for it first, so the runner works while DVC runs (they share nothing).
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline data copies are not at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("stages")
    specs = []
    with hydra_conf():
        params = {name: compose_smoke(*case.overrides) for name, case in CASES.items()}
    for i, (name, case) in enumerate(CASES.items()):
        folder, raw = root / f"case{i:02d}", params[name]
        folder.mkdir()
        if case.setup is not None:
            case.setup(folder, raw)
        write_params(folder, raw)
        specs.append(
            {
                "name": name,
                "module": case.module,
                "argv": list(case.argv),
                "cwd": str(folder),
                "log": str(root / f"case{i:02d}.log"),
            }
        )
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    (root / "cases.json").write_text(json.dumps(specs))
    env = clean_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        NET_ATTEMPTS=str(root / "net-attempts.jsonl"),
        HF_HOME=str(root / "empty-hf-home"),
    )
    with open(root / "runner.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGE_RUNNER, str(root / "cases.json"), str(root / "results.json")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc, root, specs
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def stage_runs(stage_runner: tuple[subprocess.Popen, Path, list[dict]]) -> dict[str, Run]:
    """The runner's results: case name -> Run (and "net-attempts": what the socket guard recorded)."""
    proc, root, specs = stage_runner
    rc = proc.wait(timeout=600)
    assert rc == 0 and (root / "results.json").is_file(), (root / "runner.log").read_text()[-4000:]
    results = json.loads((root / "results.json").read_text())
    runs = {
        s["name"]: Run(
            results[s["name"]]["rc"],
            Path(s["log"]).read_text(errors="replace"),
            results[s["name"]]["seconds"],
            Path(s["cwd"]),
        )
        for s in specs
    }
    attempts = root / "net-attempts.jsonl"
    runs["net-attempts"] = Run(0, attempts.read_text() if attempts.exists() else "", 0.0, root)
    return runs


def refused(runs: dict[str, Run], name: str) -> str:
    """The one error line of a case, after checking that none of its outputs was written."""
    run, case = runs[name], CASES[name]
    line = known_error(run.rc, run.log, case.module)
    for out in case.outputs:
        assert not (run.cwd / out).exists(), f"{name}: {out} was written"
    leftovers = [p for p in run.cwd.rglob(".*.tmp*")]
    assert leftovers == [], leftovers
    return line


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
    """A copy of the project (the files git lists), committed, with `dvc repro validate prepare` run on the smoke profile.

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


MARKER = "data/validated.json"  # validate's own output: DVC deletes it before running validate, and validate rewrites it unchanged


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
    """Refused by validate, with one line naming the key; no other stage ran; every output and dvc.lock kept their bytes."""
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
    """THE test of issue 17: outputs on disk, a bad value, `dvc repro`: validate refuses it and every output keeps its bytes."""
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
            r"finetune\.shallow_k = 10 is not allowed; expected an integer in \[1, 6\] \(the model 'packaged' has 6 layers\)",
        ),
        row(
            "ski.max_band=7",
            r"ski\.max_band = 7 is not allowed; expected null or an integer in \[1, 6\] \(the model 'packaged' has 6 layers\)",
        ),
        row(
            "probe.train_fraction=0.9",
            r"probe\.train_fraction = 0\.9 is not allowed; .*at least 20 sentences to evaluate on \(rt's analysis sample has 120\)",
        ),
        row(
            "probe.train_fraction=0.1",
            r"probe\.train_fraction = 0\.1 is not allowed; .*at least 20 sentences to train on \(rt's analysis sample has 120\)",
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


def test_no_stage_touched_the_network(stage_runs: dict[str, Run]) -> None:
    assert stage_runs["net-attempts"].log == ""  # not one connection or name lookup in any case


# ------------------------------------------------------------------------------ 4. data.dir missing


def test_missing_data_dir_offline_names_it_and_fails_fast(stage_runs: dict[str, Run]) -> None:
    run = stage_runs["prepare:data.dir=./missing"]
    line = refused(stage_runs, "prepare:data.dir=./missing")
    assert re.search(
        rf"data\.dir = '\./missing' \({re.escape(str(run.cwd / 'missing'))}\) is missing and the Hugging Face hub is unreachable "
        r"\(HF_HUB_OFFLINE is set\)",
        line,
    ), line
    assert run.seconds < 5  # asked once, no retries


def test_validate_refuses_a_missing_data_dir_when_the_hub_is_unreachable(stage_runs: dict[str, Run]) -> None:
    assert re.search(
        r"data\.dir = '\./missing'.* is missing and the Hugging Face hub is unreachable",
        refused(stage_runs, "validate:data.dir=./missing"),
    )


# --------------------------------------------------------------------------- 5. damaged data files


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_data_file_is_one_line_naming_it(stage_runs: dict[str, Run], name: str) -> None:
    """The specific check comes before the checksum, so a cut line or a bad byte is named as such even with verify_checksums: true."""
    rel, change, _, message = DAMAGED[name]
    original = (SHARED_DATA / rel).read_bytes()
    damaged = change(original)
    first = next(i for i, (a, b) in enumerate(zip(original, damaged)) if a != b) if len(damaged) == len(original) else 0
    expected = message.format(line=line_of(damaged, first), lines=damaged.count(b"\n"))
    path = stage_runs[name].cwd / "data-copy" / rel
    line = refused(stage_runs, name)
    assert line.startswith(f"error: prepare: {path}: ") and re.search(expected, line), line


# ------------------------------------------------------------------------- 6. NaN weights, same size


@pytest.mark.parametrize("name", ["nan-embeddings:diagnose", "nan-embeddings:source"])
def test_nan_weights_of_the_same_size_are_named_by_the_stage_that_loads_them(
    stage_runs: dict[str, Run], name: str
) -> None:
    run = stage_runs[name]
    weights = run.cwd / "nan-model/model.safetensors"
    shown = (
        "nan-model/model.safetensors" if name.endswith("diagnose") else str(weights)
    )  # diagnose got --model nan-model
    line = refused(stage_runs, name)
    assert re.search(
        rf"{re.escape(shown)}: parameter \S*embeddings\.word_embeddings\.weight holds non-finite values \(NaN or inf\); "
        r"(it is written by stage \S+: rerun `dvc repro -f \S+`|delete it and rerun the stage that writes it)",
        line,
    ), line


# -------------------------------------------------------------- 7. truncated inputs of later stages


def test_a_truncated_parquet_names_the_file_and_the_stage_that_writes_it(stage_runs: dict[str, Run]) -> None:
    line = refused(stage_runs, "truncated-parquet:diagnose")
    assert re.search(
        r"error: diagnose@[\w-]+: data/prepared/rt_train\.parquet: truncated or corrupt parquet file \(.*\); "
        r"it is written by stage prepare: rerun `dvc repro -f prepare`",
        line,
    ), line


def test_a_truncated_selection_names_the_file_and_the_stage_that_writes_it(stage_runs: dict[str, Run]) -> None:
    line = refused(stage_runs, "truncated-json:finetune_peft")
    assert re.search(
        rf"error: finetune_peft@{GROUP}: metrics/selection/{GROUP}\.json: truncated or corrupt JSON file \(.*\); "
        rf"it is written by stage select@{GROUP}: rerun `dvc repro -f select@{GROUP}`",
        line,
    ), line


@pytest.mark.parametrize(
    "name", ["truncated-csv-mid-file:select", "truncated-csv-mid-value:select", "truncated-csv-in-labels:select"]
)
def test_a_truncated_diagnose_table_names_the_file_and_the_stage_that_writes_it(
    stage_runs: dict[str, Run], name: str
) -> None:
    line = refused(stage_runs, name)
    assert re.search(
        rf"error: select@{GROUP}: metrics/diagnose/{GROUP}\.csv: .*it is written by stage diagnose@{GROUP}", line
    ), line


# ----------------------------------------------------------- 9. one line, the traceback on request


@needs_data
def test_a_known_error_is_one_line_and_its_traceback_only_on_request(
    stage_runs: dict[str, Run], tmp_path: Path
) -> None:
    """The genuine command (`python -m`), without and with INFLECTION_LAYERS_TRACEBACK=1; the runner shows the same line."""
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


# ================================================================== part 2: earlier reliability tests
# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random encoder (no classifier: load_model draws it from the seed; dropout on) + the packaged tokenizer."""
    torch.manual_seed(0)
    cfg = tiny_config(2)
    cfg.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.1  # so the dropout RNG is part of what must repeat
    out = tmp_path_factory.mktemp("tiny")
    BertModel(cfg).save_pretrained(out)
    load_tokenizer(PACKAGED).save_pretrained(out)
    return out


def source_workdir(root: Path, model: Path, epochs: int = 1) -> Path:
    """params.yaml (smoke, a tiny model, fp32) and the two prepared splits `source` reads, as `prepare` would write them (small)."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_split(root / "data/prepared/sst2_source.parquet", 48)
    tiny_split(root / "data/prepared/sst2_dev.parquet", 16)
    raw = composed()
    raw["model"].update(name=str(model), max_length=16, precision="fp32")
    raw["source"].update(epochs_under=epochs, batch_size=8, lr=1e-3, eval_batch_size=64, dev_every=1)
    write_params(root, raw)
    return root


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


# ----------------------------------------------------------------------------- truncated / corrupt


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b"", r"truncated safetensors file \(0 bytes, shorter than its 8-byte header"),
        (lambda b: b[:5], r"truncated safetensors file \(5 bytes, shorter than its 8-byte header"),
        (lambda b: b[:100], r"truncated safetensors file \(a header of .* bytes announced"),
        (lambda b: b[: len(b) // 2], r"truncated safetensors file \(expected .* bytes from its header"),
        (lambda b: b[:-1], r"truncated safetensors file \(expected .* bytes from its header"),
        (lambda b: b + b"\0" * 16, r"truncated safetensors file \(expected .* bytes from its header"),
        (lambda b: b[:8] + b"#" * (len(b) - 8), r"not a safetensors file \(no JSON header after its first 8 bytes\)"),
        (lambda b: b"\x80\x04\x95" + b[3:], r"not a safetensors file \(a Python pickle"),
        (lambda b: b"PK\x03\x04" + b[4:], r"not a safetensors file \(a zip archive \(torch.save's format\)\)"),
    ],
    ids=["empty", "5-bytes", "mid-header", "half", "one-byte-short", "extra-bytes", "garbage-header", "pickle", "zip"],
)
def test_damaged_safetensors_is_refused_naming_the_file(
    tiny_bert: torch.nn.Module, tmp_path: Path, damage, why: str
) -> None:
    tiny_bert.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelError, match=rf"^{re.escape(str(weights))}: {why}.*rerun the stage that writes it"):
        load_model(str(tmp_path))


class _Trap:
    """Unpickling this creates a file: the proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("with_safetensors", [False, True])
def test_pickle_weights_are_never_unpickled(tiny_bert: torch.nn.Module, tmp_path: Path, with_safetensors: bool) -> None:
    folder, marker = tmp_path / "ckpt", tmp_path / "unpickled"
    tiny_bert.save_pretrained(folder) if with_safetensors else tiny_bert.config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    pickle.loads(pickle.dumps(_Trap(tmp_path / "armed")))
    assert (tmp_path / "armed").exists()  # the trap works when something does unpickle it
    if with_safetensors:
        assert load_model(str(folder)).config.num_hidden_layers == 3  # the safetensors, and only them
    else:
        with pytest.raises(
            ModelError,
            match=r"no \*\.safetensors weights; found pytorch_model\.bin, pickle files that are never loaded",
        ):
            load_model(str(folder))
    assert not marker.exists()


def test_truncated_prepared_parquet_names_the_file_in_the_stage_that_reads_it(tiny_dir: Path, tmp_path: Path) -> None:
    work = source_workdir(tmp_path, tiny_dir)
    split = work / "data/prepared/sst2_source.parquet"
    split.write_bytes(split.read_bytes()[: split.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"^{re.escape(str(split))}: truncated or corrupt parquet file"):
        read_parquet(split)
    params = parse_params(yaml.safe_load((work / "params.yaml").read_text()))
    with pytest.raises(InputError, match=r"sst2_source\.parquet: truncated or corrupt parquet file"):
        source.train_source(params, "under", 7, work / "data/prepared")


@pytest.mark.parametrize("text", ['{"band": [1, 2', "", "\x00\x01"], ids=["truncated", "empty", "binary"])
def test_truncated_json_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sel.json"
    write_json(path, {"band": [1, 2]})
    assert read_json(path) == {"band": [1, 2]}
    path.write_text(text)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: truncated or corrupt JSON file"):
        read_json(path)


# -------------------------------------------------------------------------------------- safe loading


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


UNPICKLERS = {"torch.load", "torch.jit.load", "pickle.load", "pickle.loads", "joblib.load", "dill.load"}
SAFE_KEYWORDS = {
    "trust_remote_code": False,
    "allow_pickle": False,
    "weights_only": True,
    "use_safetensors": True,
    "safe_serialization": True,
}


def test_source_code_never_unpickles_nor_trusts_remote_code() -> None:
    """A static check over every call in src/; the behavioural ones are the pickle trap and the auto_map test."""
    problems = []
    files = sorted(SRC.glob("*.py"))
    assert len(files) > 5
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        # keyword dicts passed as **name: {"trust_remote_code": False, ...} literals assigned to a name
        safe_dicts = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
                keys = {k.value: v for k, v in zip(node.value.keys, node.value.values) if isinstance(k, ast.Constant)}
                for key, v in keys.items():
                    value = v.value if isinstance(v, ast.Constant) else "<expression>"
                    if key in SAFE_KEYWORDS and value is not SAFE_KEYWORDS[key]:
                        problems.append(f"{path.name}:{node.lineno}: {key}={value}")
                if "trust_remote_code" in keys:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    safe_dicts |= {t.id for t in targets if isinstance(t, ast.Name)}
        for call in _calls(tree):
            where, name = f"{path.name}:{call.lineno}", _dotted(call.func)
            if name in UNPICKLERS:
                problems.append(f"{where}: {name}")
            for kw in call.keywords:
                value = kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
                if kw.arg in SAFE_KEYWORDS and value is not SAFE_KEYWORDS[kw.arg]:
                    problems.append(f"{where}: {kw.arg}={value}")
            explicit = {kw.arg for kw in call.keywords} | {
                kw.value.id for kw in call.keywords if kw.arg is None and isinstance(kw.value, ast.Name)
            }
            if (
                name.startswith("Auto")
                and name.endswith(".from_pretrained")
                and not ({"trust_remote_code"} | safe_dicts) & explicit
            ):
                problems.append(f"{where}: {name} without an explicit trust_remote_code=False")
    assert problems == []


def test_custom_code_in_a_checkpoint_is_not_run(tiny_bert: torch.nn.Module, tmp_path: Path) -> None:
    """A checkpoint whose config points (auto_map) at its own modeling code: we load the library's BERT instead."""
    marker = tmp_path / "remote-code-ran"
    tiny_bert.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (tmp_path / "ckpt/config.json").write_text(json.dumps(config))
    (tmp_path / "ckpt/evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    model = load_model(str(tmp_path / "ckpt"))
    assert type(model) is BertForSequenceClassification and not marker.exists()


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
