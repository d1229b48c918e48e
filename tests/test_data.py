"""Loaders (real files when ../shared/data exists; small fixtures always): split rules, the encoding trap,
every damaged-file case, checksums, the missing-directory and offline-hub paths, and the hub mapping."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from inflection_layers import data as data_mod
from inflection_layers.config import Data
from inflection_layers.data import (
    CR_FILES,
    SHA256,
    DataError,
    load_local,
    load_splits,
    parse_rt,
    parse_sst2,
    rt_cut_points,
    split_cr,
    split_rt,
    stratified_subsample,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data (the offline copies) is not beside the repository"
)
BOTH = ["rt", "cr"]


def params(source: str = "local", dir: str | Path = SHARED, verify: bool = True, **kw: int) -> Data:
    """A `data` section built by hand (params.yaml is not needed)."""
    values = {"sst2_subsample": 0, "subsample_seed": 0, "eval_subsample": 0} | kw
    return Data(source=source, dir=str(dir), verify_checksums=verify, **values)


# ---- the real files ------------------------------------------------------------------------------


@needs_shared
def test_real_files_match_the_hub_sizes_and_the_pinned_checksums() -> None:
    splits, files = load_local(SHARED, BOTH, verify=True)
    assert {k: len(v) for k, v in splits.items()} == {
        "sst2_train": 67_349,
        "sst2_dev": 872,
        "rt_train": 8_530,
        "rt_validation": 1_066,
        "rt_test": 1_066,
        "cr_train": 3_012,
        "cr_validation": 375,
        "cr_test": 375,
    }
    val = splits["rt_validation"]
    assert val["text"].iloc[0].startswith("compassionately explores the seemingly irreconcilable situation")
    assert val["label"].iloc[0] == 1 and val["label"].sum() == 533
    assert val["id"].iloc[0] == "rt-validation-0000" and splits["rt_train"]["id"].iloc[0] == "rt-train-0000"
    assert splits["sst2_train"]["label"].sum() == 37_569
    assert set(files) == set(SHA256) and all(f["matches"] for f in files.values())


@needs_shared
def test_real_cr_split_follows_the_readme_rule() -> None:
    splits, _ = load_local(SHARED, ["cr"], verify=True)
    counts = {
        s: (len(splits[f"cr_{s}"]), int(splits[f"cr_{s}"]["label"].sum())) for s in ("train", "validation", "test")
    }
    assert counts == {"train": (3_012, 1_920), "validation": (375, 239), "test": (375, 239)}
    val, test = splits["cr_validation"], splits["cr_test"]
    assert val.iloc[0][["id", "text", "label"]].tolist() == [
        "cr-validation-0000",
        "and amazon . com has it for such a great price -- how can you go wrong ? .",
        1,
    ]
    assert val[val["label"] == 0].iloc[0]["text"] == (
        "i thought it was just the player , but then i started checking the discs to find that the apex 2600 is "
        "actually ruining my media ."
    )
    line10 = (SHARED / CR_FILES[1]).read_bytes().split(b"\n")[9].decode("ascii").strip()
    assert test.iloc[0]["text"] == line10 and test.iloc[0]["label"] == 1


@needs_shared
def test_only_the_targets_files_are_read() -> None:
    _, files = load_local(SHARED, ["rt"], verify=True)
    assert not any(rel.startswith("CR/") for rel in files)
    splits, files = load_local(SHARED, ["cr"], verify=True)
    assert "rt_train" not in splits and not any(rel.startswith("rt-") for rel in files)


# ---- split rules and parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cuts"), [(5331, (4265, 4798)), (10, (8, 9)), (1, (1, 1)), (0, (0, 0))])
def test_rt_cut_points(n: int, cuts: tuple[int, int]) -> None:
    assert rt_cut_points(n) == cuts


def test_rt_split_rule_positives_first_per_class_80_10_10() -> None:
    pos = [f"p{i}" for i in range(10)]
    neg = [f"n{i}" for i in range(10)]
    s = split_rt(pos, neg)
    assert s["rt_train"]["text"].tolist() == pos[:8] + neg[:8]
    assert s["rt_validation"]["text"].tolist() == ["p8", "n8"]
    assert s["rt_test"]["label"].tolist() == [1, 0]
    assert s["rt_validation"]["id"].tolist() == ["rt-validation-0000", "rt-validation-0001"]


def test_cr_split_rule_drops_repeats_and_cross_class_then_every_tenth() -> None:
    pos = [f"good thing {i} ." for i in range(12)] + ["Good thing 3 !", "same in both ."]
    neg = ["same in both", *(f"bad thing {i} ." for i in range(10))]
    s = split_cr(pos, neg)
    assert s["cr_validation"]["text"].tolist() == ["good thing 8 .", "bad thing 8 ."]
    assert s["cr_test"]["text"].tolist() == ["good thing 9 .", "bad thing 9 ."]
    assert len(s["cr_train"]) == 10 + 8 and "same in both ." not in s["cr_train"]["text"].tolist()
    assert s["cr_train"]["label"].tolist() == [1] * 10 + [0] * 8


def test_cr_parser_drops_non_sentences() -> None:
    raw = b"a fine phone .\n\n*\n  spaced out .  \n\n"
    assert data_mod.parse_cr(raw, Path("x")) == ["a fine phone .", "spaced out ."]


def test_encoding_trap_0x85_is_not_a_line_break() -> None:
    # 0x85 (an ellipsis in Windows-1252) decodes to U+0085, which str.splitlines() would split at.
    raw = b"it's good \x85 really .\nsecond line \x96 here\n"
    assert parse_rt(raw, Path("rt-polarity.pos")) == ["it's good \x85 really .", "second line \x96 here"]
    assert len(raw.decode("latin-1").splitlines()) == 3  # the trap we avoid


def test_sst2_reader_keeps_quotes_and_trailing_space() -> None:
    raw = b'sentence\tlabel\na "quoted" film \t1\nnull \t0\n'
    assert parse_sst2(raw, Path("train.tsv")) == (['a "quoted" film ', "null "], [1, 0])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"text\tlabel\nx\t1\n", "expected columns"),
        (b"sentence\tlabel\nx\t2\n", "label must be 0 or 1"),
        (b"\n", "not a tab-separated file"),
    ],
)
def test_sst2_reader_refuses_bad_files(raw: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_sst2(raw, Path("dev.tsv"))


# ---- damaged files -------------------------------------------------------------------------------


def fake_dir(root: Path) -> Path:
    """Files in the original formats with the real line counts (not the pinned versions)."""
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2/train.tsv").write_bytes(b"sentence\tlabel\n" + b"a good film \t1\n" * 67_349)
    (root / "SST-2/dev.tsv").write_bytes(b"sentence\tlabel\n" + b"a bad film \t0\n" * 872)
    (root / "rt-polaritydata").mkdir()
    (root / "rt-polaritydata/rt-polarity.pos").write_bytes(b"fine \x85 .\n" * 5_331)
    (root / "rt-polaritydata/rt-polarity.neg").write_bytes(b"awful .\n" * 5_331)
    (root / "CR").mkdir()
    (root / "CR/custrev.pos").write_bytes(b"".join(b"great phone %d .\n" % i for i in range(2_406)) + b"\n")
    (root / "CR/custrev.neg").write_bytes(b"".join(b"poor phone %d .\n" % i for i in range(1_367)) + b"\n")
    return root


def _patch(offset: int, byte: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: raw[:offset] + byte + raw[offset + 1 :]


DAMAGE = [  # (file, change of the bytes or None to delete it, message)
    ("SST-2/dev.tsv", None, r"missing; expected GLUE's SST-2 file"),
    ("rt-polaritydata/rt-polarity.neg", None, r"missing; expected the sentence polarity"),
    ("CR/custrev.pos", None, r"missing; expected the customer-review file"),
    ("CR/custrev.neg", lambda raw: b"", r"empty file"),
    ("SST-2/dev.tsv", lambda raw: raw[:-1], r"last line is cut"),
    ("rt-polaritydata/rt-polarity.pos", lambda raw: raw[:-1], r"last line is cut"),
    ("CR/custrev.neg", lambda raw: raw[:-30], r"last line is cut"),
    ("rt-polaritydata/rt-polarity.neg", _patch(len(b"awful .\n") * 2 + 1, b"\x00"), r"control byte 0x00 on line 3"),
    ("SST-2/train.tsv", _patch(20, b"\x1b"), r"control byte 0x1B on line 2"),
    ("SST-2/train.tsv", _patch(20, b"\xff"), r"not UTF-8 \(byte 0xFF on line 2\)"),
    ("CR/custrev.pos", _patch(3, b"\xff"), r"not ASCII \(byte 0xFF on line 1\)"),
    ("CR/custrev.pos", _patch(3, b"\xe9"), r"not ASCII"),
    (
        "rt-polaritydata/rt-polarity.pos",
        _patch(len(b"fine \x85 .\n") + 2, b"\x81"),
        r"not Windows-1252 \(byte 0x81, undefined there, on line 2\)",
    ),
    ("rt-polaritydata/rt-polarity.neg", _patch(1, b"\x9d"), r"not Windows-1252 \(byte 0x9D"),
    (
        "rt-polaritydata/rt-polarity.pos",
        lambda raw: raw[: len(b"fine \x85 .\n") * 5_000],
        r"expected 5,331 lines, found 5,000",
    ),
    ("CR/custrev.neg", lambda raw: raw + b"extra .\n", r"expected 1,368 lines, found 1,369"),
    ("SST-2/dev.tsv", lambda raw: raw + b"one more \t1\n", r"expected 872 examples, found 873"),
]


@pytest.mark.parametrize(("rel", "change", "message"), DAMAGE, ids=[f"{d[0]}:{d[2][:24]}" for d in DAMAGE])
def test_damaged_file_is_refused_naming_the_file(
    tmp_path: Path, rel: str, change: Callable | None, message: str
) -> None:
    root = fake_dir(tmp_path)
    path = root / rel
    if change is None:
        path.unlink()
    else:
        path.write_bytes(change(path.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_local(root, BOTH, verify=False)
    assert str(e.value).startswith(f"{path}: ")


def test_checksum_mismatch_is_refused_unless_verification_is_off(tmp_path: Path) -> None:
    root = fake_dir(tmp_path)
    with pytest.raises(
        DataError, match=r"sha256 is [0-9a-f]{64} but the pinned copy's is 48eac263.*data.verify_checksums: false"
    ) as e:
        load_local(root, BOTH, verify=True)
    assert str(e.value).startswith(f"{root / 'SST-2/train.tsv'}: ")
    splits, files = load_local(root, BOTH, verify=False)
    assert len(splits["cr_validation"]) == 240 + 136 and not any(f["matches"] for f in files.values())
    assert files["CR/custrev.pos"]["pinned"] == SHA256["CR/custrev.pos"]


def test_cr_files_are_not_touched_for_rt_only(tmp_path: Path) -> None:
    root = fake_dir(tmp_path)
    (root / "CR/custrev.pos").unlink()
    splits, files = load_local(root, ["rt"], verify=False)
    assert "cr_train" not in splits and set(files) == {
        "SST-2/train.tsv",
        "SST-2/dev.tsv",
        "rt-polaritydata/rt-polarity.pos",
        "rt-polaritydata/rt-polarity.neg",
    }


# ---- directory and hub -----------------------------------------------------------------------------


def test_local_with_missing_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="is not a directory") as e:
        load_splits(params("local", missing), BOTH)
    assert str(missing) in str(e.value)


def _no_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("datasets.load_dataset must not be called when the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.mark.parametrize("offline", [("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "true"), None])
def test_auto_with_missing_dir_and_unreachable_hub_fails_fast(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    offline: tuple[str, str] | None,
) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    if offline:
        monkeypatch.setenv(*offline)
        monkeypatch.setattr(
            socket, "create_connection", lambda *a, **k: pytest.fail("no connection when offline is set")
        )
    else:

        def refuse(address: tuple[str, int], timeout: float) -> None:
            assert address == ("huggingface.co", 443) and timeout == 3.0
            raise TimeoutError("timed out")

        monkeypatch.setattr(socket, "create_connection", refuse)
    _no_datasets(monkeypatch)
    missing = tmp_path / "nowhere"
    with caplog.at_level(logging.INFO, logger="inflection_layers.data"), pytest.raises(DataError) as e:
        load_splits(params("auto", missing), BOTH)
    message = str(e.value)
    assert str(missing) in message and "missing" in message and "unreachable" in message
    assert (offline[0] if offline else "huggingface.co:443") in message
    assert [r.getMessage() for r in caplog.records if "trying the Hugging Face hub" in r.getMessage()]


def test_auto_uses_the_directory_when_present(tmp_path: Path) -> None:
    splits, used, files = load_splits(params("auto", fake_dir(tmp_path), verify=False), ["rt"])
    assert used == "local" and len(splits["rt_test"]) == 1066 and len(files) == 4


def test_hub_path_maps_columns_and_halves_cr_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub branch turns `datasets` objects with the hub's column names into our frames."""
    import datasets

    def fake_load_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
        if config == "sst2":
            d = datasets.Dataset.from_dict({"sentence": ["good ", "bad "], "label": [1, 0], "idx": [0, 1]})
            return datasets.DatasetDict(train=d, validation=d)
        if name == data_mod.HUB["cr"][0]:
            t = datasets.Dataset.from_dict(
                {
                    "text": ["a", "b", "c", "d", "e"],
                    "label": [1, 0, 1, 1, 0],
                    "label_text": ["positive", "negative", "positive", "positive", "negative"],
                }
            )
            return datasets.DatasetDict(train=t, test=t)
        d = datasets.Dataset.from_dict({"text": ["fine .", "awful ."], "label": [1, 0]})
        return datasets.DatasetDict(train=d, validation=d, test=d)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data_mod, "hub_unreachable", lambda: None)
    splits, used, files = load_splits(params("hub", "/nonexistent"), BOTH)
    assert used == "hub" and files == {}
    assert splits["sst2_dev"]["text"].tolist() == ["good ", "bad "]
    assert splits["rt_test"]["id"].tolist() == ["rt-test-0000", "rt-test-0001"]
    assert splits["cr_validation"]["text"].tolist() == ["a", "c", "e"] and splits["cr_test"]["label"].tolist() == [0, 1]
    assert len(splits["cr_train"]) == 5


def test_hub_source_refused_when_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("down")))
    _no_datasets(monkeypatch)
    with pytest.raises(DataError, match=r"data.source is 'hub'.*unreachable"):
        load_splits(params("hub", "/nonexistent"), BOTH)


def test_stratified_subsample_keeps_proportions_and_order() -> None:
    import pandas as pd

    df = pd.DataFrame({"id": [f"x{i}" for i in range(100)], "text": ["t"] * 100, "label": [1] * 70 + [0] * 30})
    sub = stratified_subsample(df, 10, seed=0)
    assert len(sub) == 10 and sub["label"].sum() == 7
    assert sub["id"].tolist() == sorted(sub["id"].tolist(), key=lambda s: int(s[1:]))
    assert sub.equals(stratified_subsample(df, 10, seed=0))
    assert len(stratified_subsample(df, 0, seed=0)) == 100
