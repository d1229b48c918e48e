"""Loaders (real files when ../shared/data exists; small fixtures always), split rule, encoding trap, overlap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from inflection_layers.data import (
    DataError,
    load_local,
    load_splits,
    normalise,
    overlap,
    read_rt_lines,
    read_sst2_tsv,
    rt_cut_points,
    split_rt,
    stratified_subsample,
)
from inflection_layers.prepare import audit

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (the offline copies) is not beside the repository")


@needs_shared
def test_real_files_match_the_hub_sizes_and_overlap() -> None:
    splits = load_local(SHARED)
    assert {k: len(v) for k, v in splits.items()} == {
        "sst2_train": 67_349, "sst2_dev": 872, "rt_train": 8_530, "rt_validation": 1_066, "rt_test": 1_066,
    }
    val = splits["rt_validation"]
    assert val["text"].iloc[0].startswith("compassionately explores the seemingly irreconcilable situation")
    assert val["label"].iloc[0] == 1 and val["label"].sum() == 533
    assert splits["sst2_train"]["label"].sum() == 37_569
    metrics, free = audit(splits)
    assert metrics["rt_validation"]["vs_sst2_train"]["count"] == 786
    assert metrics["rt_test"]["vs_sst2_train"]["count"] == 761
    assert metrics["rt_train"]["vs_sst2_train"]["count"] == 4_090
    assert metrics["rt_train"]["vs_sst2_dev"]["count"] == 731
    assert len(free["rt_validation"]) == 1_066 - 786  # validation shares nothing with SST-2 dev


@pytest.mark.parametrize(("n", "cuts"), [(5331, (4265, 4798)), (10, (8, 9)), (1, (1, 1)), (0, (0, 0))])
def test_rt_cut_points(n: int, cuts: tuple[int, int]) -> None:
    assert rt_cut_points(n) == cuts


def test_split_rule_positives_first_per_class_80_10_10() -> None:
    pos = [f"p{i}" for i in range(10)]
    neg = [f"n{i}" for i in range(10)]
    s = split_rt(pos, neg)
    assert s["rt_train"]["text"].tolist() == pos[:8] + neg[:8]
    assert s["rt_validation"]["text"].tolist() == ["p8", "n8"]
    assert s["rt_test"]["label"].tolist() == [1, 0]
    assert s["rt_validation"]["id"].tolist() == ["rt-validation-0", "rt-validation-1"]


def test_encoding_trap_0x85_is_not_a_line_break(tmp_path: Path) -> None:
    # 0x85 (an ellipsis in Windows-1252) decodes to U+0085, which str.splitlines() would split at.
    raw = b"it's good \x85 really .\nsecond line \x96 here\n"
    path = tmp_path / "rt-polarity.pos"
    path.write_bytes(raw)
    lines = read_rt_lines(path)
    assert lines == ["it's good \x85 really .", "second line \x96 here"]
    assert len(raw.decode("latin-1").splitlines()) == 3  # the trap we avoid


def _write_sst2(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tlabel") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{s}\t{l}\n" for s, l in rows), encoding="utf-8")


def test_sst2_reader_keeps_quotes_and_trailing_space(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    _write_sst2(path, [('a "quoted" film ', "1"), ("null ", "0")])
    texts, labels = read_sst2_tsv(path)
    assert texts == ['a "quoted" film ', "null "] and labels == [1, 0]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("text\tlabel", [("x", "1")], "expected columns"),
        ("sentence\tlabel", [("x", "2")], "label must be 0 or 1"),
    ],
)
def test_sst2_reader_refuses_bad_files(tmp_path: Path, header: str, rows: list, message: str) -> None:
    path = tmp_path / "dev.tsv"
    _write_sst2(path, rows, header)
    with pytest.raises(DataError, match=message):
        read_sst2_tsv(path)


def _fake_dir(root: Path, rt_lines: int = 5331) -> Path:
    _write_sst2(root / "SST-2/train.tsv", [("a good film ", "1")] * 67_349)
    _write_sst2(root / "SST-2/dev.tsv", [("a bad film ", "0")] * 872)
    (root / "rt-polaritydata").mkdir(parents=True)
    (root / "rt-polaritydata/rt-polarity.pos").write_bytes(b"fine .\n" * rt_lines)
    (root / "rt-polaritydata/rt-polarity.neg").write_bytes(b"awful .\n" * 5331)
    return root


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    root = _fake_dir(tmp_path)
    (root / "SST-2/dev.tsv").unlink()
    with pytest.raises(DataError, match=r"SST-2/dev.tsv: missing"):
        load_local(root)


def test_wrong_line_count_names_file_and_expectation(tmp_path: Path) -> None:
    root = _fake_dir(tmp_path, rt_lines=5000)
    with pytest.raises(DataError, match=r"rt-polarity.pos: expected 5,331 examples, found 5,000"):
        load_local(root)


def test_auto_uses_the_directory_when_present(tmp_path: Path) -> None:
    splits, used = load_splits("auto", _fake_dir(tmp_path))
    assert used == "local" and len(splits["rt_test"]) == 1066


def test_hub_path_maps_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub branch turns `datasets` objects with the hub's column names into our frames."""
    import datasets

    def fake_load_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
        if config == "sst2":
            d = datasets.Dataset.from_dict({"sentence": ["good ", "bad "], "label": [1, 0], "idx": [0, 1]})
            return datasets.DatasetDict(train=d, validation=d)
        d = datasets.Dataset.from_dict({"text": ["fine .", "awful ."], "label": [1, 0]})
        return datasets.DatasetDict(train=d, validation=d, test=d)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits, used = load_splits("hub", "/nonexistent")
    assert used == "hub"
    assert splits["sst2_dev"]["text"].tolist() == ["good ", "bad "]
    assert splits["rt_test"]["id"].tolist() == ["rt-test-0", "rt-test-1"]


@pytest.mark.parametrize(
    ("text", "key"),
    [("It's GOOD , really .", "itsgoodreally"), ("a -- b", "ab"), ("  2 fast ", "2fast"), ("café", "caf")],
)
def test_normalise(text: str, key: str) -> None:
    assert normalise(text) == key


def test_overlap_counts_share_and_label_agreement() -> None:
    ref = pd.DataFrame({"text": ["A good film .", "bad", "bad", "twice "], "label": [1, 0, 1, 0]})
    tgt = pd.DataFrame({"text": ["a good film", "Bad !", "new one", "TWICE"], "label": [0, 0, 1, 0]})
    hit, s = overlap(tgt, ref)
    assert hit.tolist() == [True, True, False, True]
    assert s == {"count": 3, "total": 4, "share": 0.75, "label_agreement": round(2 / 3, 6)}


def test_stratified_subsample_keeps_proportions_and_order() -> None:
    df = pd.DataFrame({"id": [f"x{i}" for i in range(100)], "text": ["t"] * 100, "label": [1] * 70 + [0] * 30})
    sub = stratified_subsample(df, 10, seed=0)
    assert len(sub) == 10 and sub["label"].sum() == 7
    assert sub["id"].tolist() == sorted(sub["id"].tolist(), key=lambda s: int(s[1:]))
    assert sub.equals(stratified_subsample(df, 10, seed=0))
    assert len(stratified_subsample(df, 0, seed=0)) == 100
