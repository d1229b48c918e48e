"""Model checkpoints are loaded safely: damaged weights are refused naming the file, NaN weights of the right size are
named by the stage that loads them, pickle files are never unpickled, a checkpoint's own code is never run, and no
source file unpickles or trusts remote code.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from stage_cases import ROOT, Run, refused
from transformers import BertForSequenceClassification

from inflection_layers.errors import ModelError
from inflection_layers.modeling import load_model

SRC = ROOT / "src" / "inflection_layers"


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
        rf"{re.escape(shown)}: parameter \S*embeddings\.word_embeddings\.weight holds non-finite values "
        r"\(NaN or inf\); "
        r"(it is written by stage \S+: rerun `dvc repro -f \S+`|delete it and rerun the stage that writes it)",
        line,
    ), line


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
                keys = {
                    k.value: v
                    for k, v in zip(node.value.keys, node.value.values, strict=True)
                    if isinstance(k, ast.Constant)
                }
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
