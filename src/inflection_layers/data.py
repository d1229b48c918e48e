"""SST-2 and Rotten Tomatoes: local loaders in the original formats, the hub loader, and the overlap audit.

Every split is a DataFrame with columns ``id`` (stable, e.g. ``rt-validation-0000``), ``text``
and ``label`` (1 = positive). Local splits equal the hub's example for example.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

SST2_FILES = {"train": "SST-2/train.tsv", "dev": "SST-2/dev.tsv"}
RT_FILES = {1: "rt-polaritydata/rt-polarity.pos", 0: "rt-polaritydata/rt-polarity.neg"}
EXPECTED_ROWS = {
    "SST-2/train.tsv": 67_349,
    "SST-2/dev.tsv": 872,
    "rt-polaritydata/rt-polarity.pos": 5_331,
    "rt-polaritydata/rt-polarity.neg": 5_331,
}
SPLITS = ("sst2_train", "sst2_dev", "rt_train", "rt_validation", "rt_test")
HUB = {"sst2": ("nyu-mll/glue", "sst2"), "rt": ("cornell-movie-review-data/rotten_tomatoes", None)}


class DataError(ValueError):
    """A data file is missing, malformed or has the wrong number of rows."""


def _frame(split: str, texts: list[str], labels: list[int]) -> pd.DataFrame:
    """A split as (id, text, label) with ids ``<split>-<index>`` in the given order."""
    width = len(str(max(len(texts) - 1, 0)))
    ids = [f"{split.replace('_', '-')}-{i:0{width}d}" for i in range(len(texts))]
    return pd.DataFrame({"id": ids, "text": texts, "label": pd.array(labels, dtype="int64")})


def _check_rows(path: Path, n: int, rel: str) -> None:
    expected = EXPECTED_ROWS.get(rel)
    if expected is not None and n != expected:
        raise DataError(f"{path}: expected {expected:,} examples, found {n:,} (truncated or a different version?)")


def read_sst2_tsv(path: Path, rel: str = "") -> tuple[list[str], list[int]]:
    """GLUE's SST-2 TSV (header ``sentence<TAB>label``, UTF-8, no quoting) -> texts, labels."""
    if not path.is_file():
        raise DataError(f"{path}: missing; expected GLUE's SST-2 file with header 'sentence<TAB>label'")
    try:
        df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, dtype=str, encoding="utf-8")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: empty file; expected GLUE's SST-2 file with header 'sentence<TAB>label'") from e
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: not a UTF-8 tab-separated file with columns sentence, label ({e})") from e
    if list(df.columns) != ["sentence", "label"]:
        raise DataError(f"{path}: expected columns ['sentence', 'label'], found {list(df.columns)}")
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the extra leading field an index
        raise DataError(f"{path}: line 2 has more tab-separated fields than the header 'sentence<TAB>label'")
    bad = ~df["label"].isin(["0", "1"])
    if bad.any():
        line, value = int(bad.idxmax()) + 2, df["label"][bad].iloc[0]
        why = "no label (a truncated file or a missing column?)" if value == "" else repr(value)
        raise DataError(f"{path}: label must be 0 or 1; line {line} has {why}")
    _check_rows(path, len(df), rel)
    return df["sentence"].tolist(), df["label"].astype(int).tolist()


def read_rt_lines(path: Path, rel: str = "") -> list[str]:
    """One Rotten Tomatoes polarity file -> stripped snippets, as the hub's loader reads them.

    The bytes are Windows-1252; like the hub we decode as latin-1 and split with ``readlines()``
    (only ``\\n``/``\\r``), never ``str.splitlines()``, which would also break at U+0085 (byte 0x85).
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; expected the sentence polarity v1.0 file, one snippet a line")
    with open(path, encoding="latin-1") as f:
        lines = [line.strip() for line in f.readlines()]
    _check_rows(path, len(lines), rel)
    return lines


def rt_cut_points(n: int) -> tuple[int, int]:
    """The hub's per-class cut points: train = [:a], validation = [a:b], test = [b:]."""
    return int(n * 0.8 + 0.5), int(n * 0.9 + 0.5)


def split_rt(pos: list[str], neg: list[str]) -> dict[str, pd.DataFrame]:
    """Split the two polarity files as the hub does: per class 80/10/10 in file order, positives first."""
    out = {}
    cuts = {1: rt_cut_points(len(pos)), 0: rt_cut_points(len(neg))}
    lines = {1: pos, 0: neg}
    for k, split in enumerate(("train", "validation", "test")):
        texts, labels = [], []
        for label in (1, 0):
            a, b = cuts[label]
            part = lines[label][[slice(None, a), slice(a, b), slice(b, None)][k]]
            texts += part
            labels += [label] * len(part)
        out[f"rt_{split}"] = _frame(f"rt_{split}", texts, labels)
    return out


def load_local(data_dir: Path) -> dict[str, pd.DataFrame]:
    """All five splits from a directory in the original distribution formats."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data.dir = {str(data_dir)!r} is not a directory (expected SST-2/ and rt-polaritydata/ in it)")
    splits = {}
    for name, rel in SST2_FILES.items():
        splits[f"sst2_{name}"] = _frame(f"sst2_{name}", *read_sst2_tsv(data_dir / rel, rel))
    pos, neg = (read_rt_lines(data_dir / RT_FILES[label], RT_FILES[label]) for label in (1, 0))
    splits.update(split_rt(pos, neg))
    return splits


def load_hub() -> dict[str, pd.DataFrame]:
    """All five splits from the Hugging Face hub through `datasets` (needs network)."""
    from datasets import load_dataset

    sst2 = load_dataset(*HUB["sst2"])
    rt = load_dataset(HUB["rt"][0])
    splits = {
        "sst2_train": _frame("sst2_train", list(sst2["train"]["sentence"]), list(sst2["train"]["label"])),
        "sst2_dev": _frame("sst2_dev", list(sst2["validation"]["sentence"]), list(sst2["validation"]["label"])),
    }
    for split in ("train", "validation", "test"):
        splits[f"rt_{split}"] = _frame(f"rt_{split}", list(rt[split]["text"]), list(rt[split]["label"]))
    return splits


def load_splits(source: str, data_dir: str | Path) -> tuple[dict[str, pd.DataFrame], str]:
    """Load by `data.source`: 'local', 'hub', or 'auto' (the directory if it exists, else the hub).

    Returns the splits and the source actually used.
    """
    if source == "auto":
        source = "local" if Path(data_dir).is_dir() else "hub"
    if source == "local":
        return load_local(Path(data_dir)), "local"
    return load_hub(), "hub"


def normalise(text: str) -> str:
    """Lower case with only ASCII letters and digits kept: the key of the exact-match overlap audit."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def overlap(target: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.Series, dict]:
    """Which target examples also stand in `reference` after normalisation.

    Returns a boolean Series (aligned with `target`) and a summary: count, share, and
    label agreement (the share of overlapping examples whose label the reference gives to
    that text at least once).
    """
    ref_keys = reference["text"].map(normalise).tolist()
    ref_pairs = set(zip(ref_keys, reference["label"].tolist()))  # (key, label) the reference gives; sets, not a groupby: 67k groups are slow
    ref_set = set(ref_keys)
    keys = target["text"].map(normalise).tolist()
    hit = pd.Series([k in ref_set for k in keys], index=target.index, dtype=bool)
    agree = [(k, label) in ref_pairs for k, label, h in zip(keys, target["label"].tolist(), hit) if h]
    n = int(hit.sum())
    summary = {
        "count": n,
        "total": len(target),
        "share": round(n / len(target), 6) if len(target) else 0.0,
        "label_agreement": round(sum(agree) / n, 6) if n else None,
    }
    return hit, summary


def stratified_subsample(df: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """`size` examples with the label proportions of `df`, in the original order; 0 or >= len = all."""
    if size == 0 or size >= len(df):
        return df.reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(df.index.to_numpy(), train_size=size, stratify=df["label"], random_state=seed)
    return df.loc[sorted(keep)].reset_index(drop=True)
