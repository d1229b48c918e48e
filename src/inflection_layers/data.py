"""SST-2, Rotten Tomatoes (RT) and customer reviews (CR): checked local loaders and the hub loader.

Every split is a DataFrame with columns ``id`` (stable, e.g. ``rt-validation-0000``), ``text`` and
``label`` (1 = positive). Local files are checked byte by byte before they are parsed (missing,
empty, last line cut, control bytes, encoding, pinned sha256, line counts); each failure is a
one-sentence :class:`DataError` naming the file.

- **SST-2 and RT** local splits equal the hub's (``nyu-mll/glue`` sst2, ``rotten_tomatoes``)
  example for example.
- **CR** local splits follow the rule of ``CR/README.md`` in the offline copies: non-sentences and
  repeats dropped, then per class sentence i goes to validation if i mod 10 = 8, to test if
  i mod 10 = 9, else to train (3,012 / 375 / 375). The hub has no such split: ``SetFit/SentEval-CR``
  is a random 80/20 train/test split of the SentEval distribution, so from the hub, ``cr_train`` is
  the hub's train split and the hub's test split is halved by alternate rows (even rows validation,
  odd rows test). **Hub and local therefore give different CR splits** (other sentences in each,
  other sizes, and the hub's copy was not checked for repeats or non-sentence lines); results on
  CR are comparable only between runs that used the same source, which metrics/data.json records.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from inflection_layers.cells import EVAL_SPLITS
from inflection_layers.config import Data
from inflection_layers.errors import DataError
from inflection_layers.hub import hub_unreachable, offline_flag

logger = logging.getLogger(__name__)

SST2_FILES = {"train": "SST-2/train.tsv", "dev": "SST-2/dev.tsv"}
RT_FILES = {1: "rt-polaritydata/rt-polarity.pos", 0: "rt-polaritydata/rt-polarity.neg"}
CR_FILES = {1: "CR/custrev.pos", 0: "CR/custrev.neg"}
SHA256 = {  # the offline copies' README files; data.verify_checksums: false accepts other versions
    "SST-2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "rt-polaritydata/rt-polarity.pos": "2da124ec187a9d5a29c9f04e91c540e02baed5af8868f550a26bd6fd4dbf8bf0",
    "rt-polaritydata/rt-polarity.neg": "4ace77d558c3714723843f1d65b60c01e3417b208180f0728808d76ad0eeeaca",
    "CR/custrev.pos": "15eeb0b9424043bb3755488e2d8ed97bdaeba464a5c230f213bad075125d2192",
    "CR/custrev.neg": "8f29d7fa39f9862764b71f36b193f0674e0056287ffc5bf170edf6db42cc8f83",
}
EXPECTED_ROWS = {  # SST-2: examples after the header; RT and CR: LF-terminated lines
    "SST-2/train.tsv": 67_349,
    "SST-2/dev.tsv": 872,
    "rt-polaritydata/rt-polarity.pos": 5_331,
    "rt-polaritydata/rt-polarity.neg": 5_331,
    "CR/custrev.pos": 2_407,
    "CR/custrev.neg": 1_368,
}
WHAT = {
    "SST-2": "GLUE's SST-2 file with header 'sentence<TAB>label' (UTF-8)",
    "rt-polaritydata": "the sentence polarity v1.0 file, one snippet a line (Windows-1252)",
    "CR": "the customer-review file, one sentence a line (ASCII)",
}
HUB = {
    "sst2": ("nyu-mll/glue", "sst2"),
    "rt": ("cornell-movie-review-data/rotten_tomatoes", None),
    "cr": ("SetFit/SentEval-CR", None),
}
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 bytes other than tab, LF, CR
NON_ASCII = re.compile(rb"[\x80-\xff]")
CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
WORD = re.compile(r"[A-Za-z0-9]")
SST2_TRAIN_SIZE = EXPECTED_ROWS["SST-2/train.tsv"]
SPLIT_SIZES = {  # each target's splits as the local loader cuts them (the CR hub split differs)
    "rt": {"train": 8_530, "validation": 1_066, "test": 1_066},
    "cr": {"train": 3_012, "validation": 375, "test": 375},
}


def _frame(split: str, texts: Sequence[str], labels: Sequence[int]) -> pd.DataFrame:
    """A split as (id, text, label) with ids ``<split>-<index>`` (at least 4 digits) in the given order."""
    width = max(4, len(str(len(texts) - 1)))
    ids = [f"{split.replace('_', '-')}-{i:0{width}d}" for i in range(len(texts))]
    return pd.DataFrame({"id": ids, "text": list(texts), "label": pd.array(list(labels), dtype="int64")})


def _line(raw: bytes, offset: int) -> int:
    """The 1-based line number of a byte offset."""
    return raw.count(b"\n", 0, offset) + 1


def sha256(raw: bytes) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(raw).hexdigest()


def read_checked(path: Path, rel: str, verify: bool) -> tuple[bytes, dict]:
    """A local file's bytes after every check that needs no parsing -> (bytes, sha256 record).

    Checks in order: missing, empty, last line cut, control bytes, encoding, pinned sha256 (when
    `verify`). The record is ``{"sha256", "pinned", "matches"}`` for metrics/data.json.
    """
    what = WHAT[rel.split("/")[0]]
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {what}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: empty file (0 bytes); expected {what}")
    if not raw.endswith(b"\n"):
        raise DataError(
            f"{path}: the last line is cut (the file does not end with a newline), so the file is truncated"
        )
    if m := CONTROL.search(raw):
        raise DataError(
            f"{path}: control byte 0x{raw[m.start()]:02X} on line {_line(raw, m.start())}; "
            "the file is damaged or not text"
        )
    if rel.startswith("SST-2/"):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 (byte 0x{raw[e.start]:02X} on line {_line(raw, e.start)})") from e
    elif rel.startswith("CR/") and (m := NON_ASCII.search(raw)):
        raise DataError(f"{path}: not ASCII (byte 0x{raw[m.start()]:02X} on line {_line(raw, m.start())})")
    elif rel.startswith("rt-") and (m := CP1252_UNDEFINED.search(raw)):
        raise DataError(
            f"{path}: not Windows-1252 (byte 0x{raw[m.start()]:02X}, undefined there, on line {_line(raw, m.start())})"
        )
    digest, pinned = sha256(raw), SHA256.get(rel)
    if verify and pinned is not None and digest != pinned:
        raise DataError(
            f"{path}: sha256 is {digest} but the pinned copy's is {pinned}, so this is another version "
            "of the file (set data.verify_checksums: false to accept it)"
        )
    return raw, {"sha256": digest, "pinned": pinned, "matches": digest == pinned}


def _check_rows(path: Path, n: int, rel: str, unit: str = "examples") -> None:
    expected = EXPECTED_ROWS.get(rel)
    if expected is not None and n != expected:
        raise DataError(f"{path}: expected {expected:,} {unit}, found {n:,} (truncated or a different version?)")


def parse_sst2(raw: bytes, path: Path, rel: str = "") -> tuple[list[str], list[int]]:
    """GLUE's SST-2 TSV (header ``sentence<TAB>label``, UTF-8, no quoting) -> texts, labels."""
    try:
        df = pd.read_csv(
            io.BytesIO(raw), sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, dtype=str, encoding="utf-8"
        )
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise DataError(
            f"{path}: not a tab-separated file with header 'sentence<TAB>label' ({str(e).strip().splitlines()[0]})"
        ) from e
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


def parse_rt(raw: bytes, path: Path, rel: str = "") -> list[str]:
    """One RT polarity file -> stripped snippets, exactly as the hub's loader reads them.

    Like the hub we decode as latin-1 and split as ``readlines()`` does (at LF/CR only), never with
    ``str.splitlines()``, which would also break at U+0085 (byte 0x85, an ellipsis in Windows-1252).
    """
    lines = [line.strip() for line in io.StringIO(raw.decode("latin-1"), newline=None).readlines()]
    _check_rows(path, len(lines), rel, "lines")
    return lines


def parse_cr(raw: bytes, path: Path, rel: str = "") -> list[str]:
    """One CR file -> its sentences (split rule steps 1-2): split at LF, strip, drop pieces with no letter or digit."""
    pieces = raw.split(b"\n")
    _check_rows(path, len(pieces) - 1, rel, "lines")
    return [s for s in (p.decode("ascii").strip() for p in pieces) if WORD.search(s)]


def rt_cut_points(n: int) -> tuple[int, int]:
    """The hub's per-class cut points: train = [:a], validation = [a:b], test = [b:]."""
    return int(n * 0.8 + 0.5), int(n * 0.9 + 0.5)


def split_rt(pos: list[str], neg: list[str]) -> dict[str, pd.DataFrame]:
    """Split the two polarity files as the hub does: per class 80/10/10 in file order, positives first."""
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in ("train", "validation", "test")}
    for label, lines in ((1, pos), (0, neg)):
        a, b = rt_cut_points(len(lines))
        for split, part in (("train", lines[:a]), ("validation", lines[a:b]), ("test", lines[b:])):
            parts[split][0].extend(part)
            parts[split][1].extend([label] * len(part))
    return {f"rt_{s}": _frame(f"rt_{s}", *parts[s]) for s in parts}


def cr_key(text: str) -> str:
    """CR rule step 3: lower case, maximal runs of letters and digits joined by single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def split_cr(pos: list[str], neg: list[str]) -> dict[str, pd.DataFrame]:
    """CR rule steps 3-7: drop cross-class and repeated sentences, then i mod 10 = 8 validation, 9 test."""
    keys = {1: [cr_key(s) for s in pos], 0: [cr_key(s) for s in neg]}
    both = set(keys[1]) & set(keys[0])
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in ("train", "validation", "test")}
    for label, lines in ((1, pos), (0, neg)):
        seen: set[str] = set()
        kept = []
        for text, key in zip(lines, keys[label], strict=False):
            if key not in both and key not in seen:
                seen.add(key)
                kept.append(text)
        for i, text in enumerate(kept):
            split = {8: "validation", 9: "test"}.get(i % 10, "train")
            parts[split][0].append(text)
            parts[split][1].append(label)
    return {f"cr_{s}": _frame(f"cr_{s}", *parts[s]) for s in parts}


def load_local(
    data_dir: str | Path, targets: Sequence[str], verify: bool
) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """SST-2 train/dev and each target's splits from the original files -> (splits, sha256 record per file read)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data.dir = {str(data_dir)!r} ({data_dir.resolve()}) is not a directory; "
            "expected SST-2/, rt-polaritydata/ and CR/ in it"
        )
    files: dict[str, dict] = {}

    def read(rel: str) -> bytes:
        raw, files[rel] = read_checked(data_dir / rel, rel, verify)
        return raw

    splits = {
        f"sst2_{name}": _frame(f"sst2_{name}", *parse_sst2(read(rel), data_dir / rel, rel))
        for name, rel in SST2_FILES.items()
    }
    if "rt" in targets:
        splits.update(split_rt(*(parse_rt(read(RT_FILES[k]), data_dir / RT_FILES[k], RT_FILES[k]) for k in (1, 0))))
    if "cr" in targets:
        splits.update(split_cr(*(parse_cr(read(CR_FILES[k]), data_dir / CR_FILES[k], CR_FILES[k]) for k in (1, 0))))
    return splits, files


def load_hub(targets: Sequence[str]) -> dict[str, pd.DataFrame]:
    """SST-2 train/dev and each target's splits from the Hugging Face hub through `datasets` (needs network)."""
    from datasets import load_dataset

    sst2 = load_dataset(*HUB["sst2"])
    splits = {
        "sst2_train": _frame("sst2_train", sst2["train"]["sentence"], sst2["train"]["label"]),
        "sst2_dev": _frame("sst2_dev", sst2["validation"]["sentence"], sst2["validation"]["label"]),
    }
    if "rt" in targets:
        rt = load_dataset(HUB["rt"][0])
        splits.update(
            {f"rt_{s}": _frame(f"rt_{s}", rt[s]["text"], rt[s]["label"]) for s in ("train", "validation", "test")}
        )
    if "cr" in targets:
        cr = load_dataset(HUB["cr"][0])
        if "label_text" in cr["train"].column_names:
            pairs = set(zip(cr["train"]["label"], cr["train"]["label_text"], strict=False))
            if not pairs <= {(1, "positive"), (0, "negative")}:
                raise DataError(f"hub {HUB['cr'][0]}: expected label 1 = positive, 0 = negative, found {sorted(pairs)}")
        test_text, test_label = list(cr["test"]["text"]), list(cr["test"]["label"])
        splits["cr_train"] = _frame("cr_train", cr["train"]["text"], cr["train"]["label"])
        splits["cr_validation"] = _frame("cr_validation", test_text[0::2], test_label[0::2])
        splits["cr_test"] = _frame("cr_test", test_text[1::2], test_label[1::2])
    return splits


def load_splits(data: Data, targets: Sequence[str]) -> tuple[dict[str, pd.DataFrame], str, dict[str, dict]]:
    """Load by `data.source` (auto: `data.dir` if it exists, else the hub) -> (splits, source used, sha256 records)."""
    source, data_dir = data.source, Path(data.dir)
    if source == "auto" and not data_dir.is_dir():
        logger.info("data.dir %r (%s) is missing; trying the Hugging Face hub", data.dir, data_dir.resolve())
        if why := hub_unreachable():
            raise DataError(
                f"data.dir = {data.dir!r} ({data_dir.resolve()}) is missing and the Hugging Face hub is "
                f"unreachable ({why}); point data.dir at the offline copies or go online"
            )
        source = "hub"
    elif source == "auto":
        source = "local"
    elif (
        source == "hub" and not offline_flag() and (why := hub_unreachable())
    ):  # offline flags: `datasets` reads its cache
        raise DataError(
            f"data.source is 'hub' but the Hugging Face hub is unreachable ({why}); "
            f"use data.source: local with data.dir = the offline copies"
        )
    if source == "local":
        splits, files = load_local(data_dir, targets, data.verify_checksums)
        return splits, "local", files
    return load_hub(targets), "hub", {}


def stratified_subsample(df: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """`size` examples with the label proportions of `df`, in the original order; 0 or >= len = all."""
    if size == 0 or size >= len(df):
        return df.reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(df.index.to_numpy(), train_size=size, stratify=df["label"], random_state=seed)
    return df.loc[sorted(keep)].reset_index(drop=True)


def select_tables(splits: dict[str, pd.DataFrame], data: Data, targets: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The splits to write: the SST-2 source sample and dev, each target's train and (subsampled) evaluation splits."""
    tables = {
        "sst2_source": stratified_subsample(splits["sst2_train"], data.sst2_subsample, data.subsample_seed),
        "sst2_dev": splits["sst2_dev"].reset_index(drop=True),
    }
    for t in targets:
        tables[f"{t}_train"] = splits[f"{t}_train"].reset_index(drop=True)
        for split in EVAL_SPLITS:
            tables[f"{t}_{split}"] = stratified_subsample(
                splits[f"{t}_{split}"], data.eval_subsample, data.subsample_seed
            )
    return tables
