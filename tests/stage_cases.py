"""The cases that tests/test_bad_params.py, test_damaged_data.py and test_checkpoints.py run each stage on, and the
helpers that build them (issue 17, "Fail before anything is touched").

Importing torch and transformers costs a stage most of its time on this machine, so the cases run in ONE interpreter
(`STAGE_RUNNER`, started by the session fixture `stage_runner` in conftest.py): each is
`python -m inflection_layers.<stage>` as runpy executes it (the same `__main__`, `sys.argv[0]` and exit status), in its
own folder with its own params.yaml, its stdout and stderr captured at the file descriptors, with every socket refused
and the hub switched off. `refused(runs, name)` is the check every refused case must pass: exit status 2, one line
naming what is wrong, none of the stage's outputs written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from inflection_layers.archs import PACKAGED, resolve_model_path
from inflection_layers.artifacts import write_json
from inflection_layers.errors import TRACEBACK_ENV

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / "../shared/data").resolve()  # params.yaml's data.dir, ../shared/data, from the repository root
BIN = Path(sys.executable).parent
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"the offline data copies are not at {SHARED_DATA}")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
GROUP = "rt-under-42"
WORDS = ["good", "bad", "fine", "awful", "film", "plot", "great", "dull"]


@contextlib.contextmanager
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on the package's conf/, as DVC's Hydra integration does (`[hydra] config_module`)."""
    from hydra import initialize_config_module

    with initialize_config_module("inflection_layers.conf", version_base=None):
        yield


def compose_smoke(*overrides: str) -> dict:
    """Inside hydra_conf(): params.yaml as `dvc exp run -S profile=smoke -S <override> ...` composes it, data.dir the
    offline copies."""
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
        r"sha256 is [0-9a-f]{{64}} but the pinned copy's is 4ace77d5[0-9a-f]{{56}}, "
        r"so this is another version of the file "
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


def refused(runs: dict[str, Run], name: str) -> str:
    """The one error line of a case, after checking that none of its outputs was written."""
    run, case = runs[name], CASES[name]
    line = known_error(run.rc, run.log, case.module)
    for out in case.outputs:
        assert not (run.cwd / out).exists(), f"{name}: {out} was written"
    leftovers = list(run.cwd.rglob(".*.tmp*"))
    assert leftovers == [], leftovers
    return line


def source_workdir(root: Path, model: Path, epochs: int = 1) -> Path:
    """params.yaml (smoke, a tiny model, fp32) and the two prepared splits `source` reads, as `prepare` would write them
    (small)."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_split(root / "data/prepared/sst2_source.parquet", 48)
    tiny_split(root / "data/prepared/sst2_dev.parquet", 16)
    raw = composed()
    raw["model"].update(name=str(model), max_length=16, precision="fp32")
    raw["source"].update(epochs_under=epochs, batch_size=8, lr=1e-3, eval_batch_size=64, dev_every=1)
    write_params(root, raw)
    return root
