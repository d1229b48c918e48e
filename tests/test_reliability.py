"""Reliability: killed stages leave no output, divergence stops with the step, corrupt files name themselves,
nothing touches the network, nothing unpickles or runs remote code, and a CPU cell reruns bit for bit.

Every test uses a tiny random-weight BERT (with the packaged tokenizer) and fake data in tmp_path.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from transformers import BertForSequenceClassification, BertModel

from conftest import tiny_config
from inflection_layers import finetune, prepare, source
from inflection_layers.artifacts import atomic_path, read_json, read_parquet, remove_stale_temps, temp_prefix, write_json
from inflection_layers.config import parse_params
from inflection_layers.data import DataError, load_local
from inflection_layers.modeling import PACKAGED, CheckpointError, check_safetensors, load_model, load_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "inflection_layers"
CELL = ["--regime", "under", "--seed", "7"]
WORDS = ["good", "bad", "fine", "awful", "film", "plot", "great", "dull"]
TIMING_KEYS = {"train_seconds", "tokens_per_second"}  # wall-clock fields of metrics/source/<cell>.json


# ----------------------------------------------------------------------------------------------- helpers


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


def texts(n: int, tag: str) -> list[str]:
    return [f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} {tag} {WORDS[(i * 5) % 8]}" + " film" * (i % 4) for i in range(n)]


def source_workdir(root: Path, model: Path, epochs: int = 1) -> Path:
    """params.yaml and the three prepared splits `source` reads, as `prepare` would write them (small)."""
    prepared = root / "data/prepared"
    prepared.mkdir(parents=True)
    for name, n in (("sst2_source", 48), ("sst2_dev", 16), ("rt_validation", 16)):
        pd.DataFrame({"id": [f"{name}-{i}" for i in range(n)], "text": texts(n, name), "label": [i % 2 for i in range(n)]}).to_parquet(
            prepared / f"{name}.parquet", index=False
        )
    params = {
        "model": {"name": str(model), "max_length": 16},
        "source": {"epochs_under": epochs, "batch_size": 8, "lr": 1e-3, "eval_batch_size": 64},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def source_argv(out: str = "models/source/under-7", metrics: str = "metrics/source/under-7.json") -> list[str]:
    """The arguments dvc.yaml gives `source@under-7`."""
    return [*CELL, "--data", "data/prepared", "--out", out, "--metrics", metrics]


def run_main(module: object, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def raw_data(root: Path) -> Path:
    """The four local data files in their original formats, with the row counts the loader checks."""
    (root / "SST-2").mkdir(parents=True)
    (root / "rt-polaritydata").mkdir()
    for name, n in (("train", 67_349), ("dev", 872)):
        (root / f"SST-2/{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{WORDS[i % 8]} {name} {i} \t{i % 2}\n" for i in range(n)))
    for ext in ("pos", "neg"):
        (root / f"rt-polaritydata/rt-polarity.{ext}").write_bytes("".join(f"{WORDS[i % 8]} movie {ext} {i} .\n" for i in range(5_331)).encode("latin-1"))
    return root


def leftovers(path: Path) -> list[Path]:
    """Temporary siblings of an output path (what an interrupted atomic write leaves)."""
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(temp_prefix(path))) if path.parent.is_dir() else []


# ------------------------------------------------------------------------------------ 1. kill and rerun

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


def test_source_killed_mid_save_leaves_no_output_and_reruns_clean(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = source_workdir(tmp_path / "repo", tiny_dir)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    marker, log = tmp_path / "saved", tmp_path / "stage.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "KILL_TEST_MARKER": str(marker), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "inflection_layers.source", *source_argv()], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"the stage ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
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
    assert work / Path(marker.read_text()).parent == tmp and (tmp / "under-7" / "model.safetensors").is_file()  # killed mid-write, really

    monkeypatch.chdir(work)
    run_main(source, monkeypatch, source_argv())  # the rerun, with the same arguments
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
)
def test_stale_temporary_siblings(tmp_path: Path, name: str, stale: bool) -> None:
    (tmp_path / name).mkdir()
    assert (remove_stale_temps(tmp_path / "x.json") == [tmp_path / name]) is stale
    assert (tmp_path / name).exists() is not stale


# --------------------------------------------------------------------------------- 2. NaN / inf loss


def nan_from_call(module: torch.nn.Module, call: int, value: float = float("nan")) -> None:
    """Make `module`'s output `value` from its `call`-th forward on (0-based), as a diverged layer would."""
    calls = {"n": 0}

    def hook(_m: torch.nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        calls["n"] += 1
        return out * value if calls["n"] > call else None

    module.register_forward_hook(hook)


def test_source_stops_at_the_step_of_a_nan_loss_and_writes_nothing(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        run_main(source, monkeypatch, source_argv())
    assert not (work / "models").exists() and not (work / "metrics").exists()


@pytest.mark.parametrize(
    ("call", "value", "step"),
    [(3, float("nan"), 3), (5, float("inf"), 5), (0, float("nan"), 0)],
    ids=["nan-plain-step", "inf-last-step-with-diagnostics", "nan-first-step-with-diagnostics"],
)
def test_finetune_loop_stops_at_the_step_of_a_nonfinite_loss(tiny_bert: torch.nn.Module, call: int, value: float, step: int) -> None:
    # steps 0 and 5 run the diagnostics (one forward each), the others a plain forward: both paths are checked.
    params = parse_params({"finetune": {"steps": 6, "diag_every": 100, "batch_size": 4}})
    g = np.random.default_rng(0)
    ids = [g.integers(5, 99, size=int(g.integers(3, 9))).tolist() for _ in range(24)]
    nan_from_call(tiny_bert.bert.embeddings, call, value)
    with pytest.raises(FloatingPointError, match=rf"at step {step}\b"):
        finetune.train(tiny_bert, params, ids, [i % 2 for i in range(24)], 0, 7, False, torch.device("cpu"), "test")


# ----------------------------------------------------------------------------- 3. truncated / corrupt


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _cut_at_line_end(data: bytes) -> bytes:
    """Truncated after a complete line: only the row count can tell."""
    return data[: data.index(b"\n", len(data) // 2) + 1]


def _cut_mid_line(data: bytes) -> bytes:
    """Truncated inside a line, between its text and its label, as an interrupted copy leaves it."""
    return data[: data.index(b"\t", len(data) // 2)]


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b"", "shorter than the 8-byte header"),
        (lambda b: b[:5], "shorter than the 8-byte header"),
        (lambda b: b[:100], "header of .* bytes announced"),
        (_truncate, "expected .* bytes from its header"),
        (lambda b: b[:-1], "expected .* bytes from its header"),
        (lambda b: b + b"\0" * 16, "expected .* bytes from its header"),
        (lambda b: b[:8] + b"#" * (len(b) - 8), "unreadable header"),
    ],
    ids=["empty", "5-bytes", "mid-header", "half", "one-byte-short", "extra-bytes", "garbage-header"],
)
def test_damaged_safetensors_is_refused_naming_the_file(tiny_bert: torch.nn.Module, tmp_path: Path, damage, why: str) -> None:
    tiny_bert.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=rf"could not load model .*model\.safetensors: truncated or corrupt safetensors file \(.*{why}"):
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
        with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights; found pytorch_model\.bin, pickle files that are never loaded"):
            load_model(str(folder))
    assert not marker.exists()


def test_truncated_prepared_parquet_names_the_file_in_the_stage_that_reads_it(tiny_dir: Path, tmp_path: Path) -> None:
    work = source_workdir(tmp_path, tiny_dir)
    split = work / "data/prepared/sst2_source.parquet"
    split.write_bytes(_truncate(split.read_bytes()))
    with pytest.raises(ValueError, match=rf"{re.escape(str(split))}: truncated or corrupt parquet file"):
        read_parquet(split)
    params = parse_params(yaml.safe_load((work / "params.yaml").read_text()))
    with pytest.raises(ValueError, match=r"sst2_source\.parquet: truncated or corrupt parquet file"):
        source.train_source(params, "under", 7, work / "data/prepared")


@pytest.mark.parametrize("text", ['{"band": [1, 2', "", "\x00\x01"], ids=["truncated", "empty", "binary"])
def test_truncated_json_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sel.json"
    write_json(path, {"band": [1, 2]})
    assert read_json(path) == {"band": [1, 2]}
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: truncated or corrupt JSON file"):
        read_json(path)


def _extra_field(data: bytes) -> bytes:
    header, first, rest = data.split(b"\n", 2)
    return b"\n".join([header, first + b"\textra", rest])


@pytest.mark.parametrize(
    ("rel", "damage", "message"),
    [
        ("SST-2/train.tsv", lambda b: b"", r"train\.tsv: empty file"),
        ("SST-2/dev.tsv", _cut_mid_line, r"dev\.tsv: label must be 0 or 1; line \d+ has no label \(a truncated file"),
        ("SST-2/train.tsv", _cut_at_line_end, r"train\.tsv: expected 67,349 examples, found [\d,]+ \(truncated"),
        ("SST-2/dev.tsv", lambda b: b.replace(b"\t", b" "), r"dev\.tsv: expected columns \['sentence', 'label'\], found \['sentence label'\]"),
        ("SST-2/dev.tsv", lambda b: b"sentence\tlabel\n" + b"".join(ln.split(b"\t")[0] + b"\n" for ln in b.splitlines()[1:]), r"dev\.tsv: .* line 2 has no label"),
        ("SST-2/dev.tsv", _extra_field, r"dev\.tsv: line 2 has more tab-separated fields"),
        ("rt-polaritydata/rt-polarity.neg", _truncate, r"rt-polarity\.neg: expected 5,331 examples, found 2,\d\d\d"),
        ("rt-polaritydata/rt-polarity.pos", lambda b: b"", r"rt-polarity\.pos: expected 5,331 examples, found 0"),
    ],
    ids=["sst2-empty", "sst2-cut-mid-line", "sst2-cut-at-line-end", "sst2-not-tab-separated", "sst2-label-column-missing", "sst2-extra-field", "rt-truncated", "rt-empty"],
)
def test_damaged_local_data_file_is_named(tmp_path: Path, rel: str, damage, message: str) -> None:
    root = raw_data(tmp_path / "raw")
    (root / rel).write_bytes(damage((root / rel).read_bytes()))
    with pytest.raises(DataError, match=message):
        load_local(root)


def test_prepare_on_a_truncated_file_fails_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = raw_data(tmp_path / "raw")
    rt = root / "rt-polaritydata/rt-polarity.pos"
    rt.write_bytes(rt.read_bytes()[:-100])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "local", "dir": str(root), "sst2_subsample": 64}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"rt-polarity\.pos: expected 5,331 examples, found 5,3\d\d"):
        run_main(prepare, monkeypatch, ["--out", "data/prepared", "--metrics", "metrics/data.json"])
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


# ----------------------------------------------------------------------------------------- 4. offline

# Imported first by every interpreter started with this folder on PYTHONPATH: every way of opening a
# network connection (and name resolution) is recorded to a file and refused.
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

# What the stages do first, in one fresh interpreter (imports cost more than the work): load the packaged
# model and tokenizer as `source` does, then `python -m inflection_layers.prepare --out data/prepared
# --metrics metrics/data.json` (dvc.yaml's command) in ./auto and in ./local, each with its own params.yaml.
OFFLINE_STAGES = """
import os, runpy, sys
from inflection_layers.modeling import PACKAGED, load_model, load_tokenizer
model, tokenizer = load_model(PACKAGED), load_tokenizer(PACKAGED)
out = model(**tokenizer(["a fine film ."], return_tensors="pt"))
print("loaded", tuple(out.logits.shape))
for data_source in ("auto", "local"):
    os.chdir(data_source)
    sys.argv = ["prepare", "--out", "data/prepared", "--metrics", "metrics/data.json"]
    runpy.run_module("inflection_layers.prepare", run_name="__main__", alter_sys=True)
    os.chdir("..")
"""


def test_offline_with_sockets_blocked_loads_the_packaged_model_and_prepares_local_data(tmp_path: Path) -> None:
    guard, attempts = tmp_path / "guard", tmp_path / "attempts.jsonl"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NET_GUARD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        "NET_ATTEMPTS": str(attempts),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),  # no cache to fall back on
    }

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    probe = python("-c", "import socket; socket.create_connection(('example.com', 443), timeout=1)")
    assert probe.returncode != 0 and "network disabled by the offline test" in probe.stderr
    assert len(attempts.read_text().splitlines()) == 1  # the guard is armed and records
    attempts.unlink()

    raw = raw_data(tmp_path / "raw")
    for data_source in ("auto", "local"):
        (tmp_path / data_source).mkdir()
        (tmp_path / data_source / "params.yaml").write_text(yaml.safe_dump({"data": {"source": data_source, "dir": str(raw), "sst2_subsample": 64}}))
    ran = python("-c", OFFLINE_STAGES)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "loaded (1, 2)" in ran.stdout
    for data_source in ("auto", "local"):
        assert json.loads((tmp_path / data_source / "metrics/data.json").read_text())["source"] == "local"
        assert len(pd.read_parquet(tmp_path / data_source / "data/prepared/sst2_source.parquet")) == 64
    assert not attempts.exists(), attempts.read_text()  # not one connection or lookup was attempted


# -------------------------------------------------------------------------------------- 5. safe loading


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


UNPICKLERS = {"torch.load", "torch.jit.load", "pickle.load", "pickle.loads", "joblib.load", "dill.load"}
SAFE_KEYWORDS = {"trust_remote_code": False, "allow_pickle": False, "weights_only": True, "use_safetensors": True, "safe_serialization": True}


def test_source_code_never_unpickles_nor_trusts_remote_code() -> None:
    """A static check over every call in src/; the behavioural ones are the pickle trap and the auto_map test."""
    problems = []
    files = sorted(SRC.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for call in _calls(ast.parse(path.read_text(), filename=str(path))):
            where, name = f"{path.name}:{call.lineno}", _dotted(call.func)
            if name in UNPICKLERS:
                problems.append(f"{where}: {name}")
            for kw in call.keywords:
                value = kw.value.value if isinstance(kw.value, ast.Constant) else "<expression>"
                if kw.arg in SAFE_KEYWORDS and value is not SAFE_KEYWORDS[kw.arg]:
                    problems.append(f"{where}: {kw.arg}={value}")
            if name.startswith("Auto") and name.endswith(".from_pretrained") and "trust_remote_code" not in {kw.arg for kw in call.keywords}:
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


# ------------------------------------------------------------------------------------- 6. determinism


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
        run_main(source, monkeypatch, source_argv(out=f"models/run{k}/under-7", metrics=f"metrics/run{k}.json"))
        runs.append((work / f"models/run{k}/under-7", json.loads((work / f"metrics/run{k}.json").read_text())))
    (a, ma), (b, mb) = runs
    files = sorted(p.name for p in a.iterdir())
    assert "model.safetensors" in files and files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert TIMING_KEYS <= set(ma) and ma["steps"] == 12
    assert {k: v for k, v in ma.items() if k not in TIMING_KEYS} == {k: v for k, v in mb.items() if k not in TIMING_KEYS}
