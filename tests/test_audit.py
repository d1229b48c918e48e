"""The overlap audit (exact match, phrase cover, clean subsets) and the `prepare` stage that writes it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_data import SHARED, fake_dir, needs_shared, params

from inflection_layers import prepare as prepare_mod
from inflection_layers.audit import COLUMNS, audit_frame, cover_share, normalise, phrase_set, summarise, words


@pytest.mark.parametrize(
    ("text", "key"),
    [("It's GOOD , really .", "itsgoodreally"), ("a -- b", "ab"), ("  2 fast ", "2fast"), ("café", "caf")],
)
def test_normalise(text: str, key: str) -> None:
    assert normalise(text) == key


def test_words_are_runs_of_ascii_letters_and_digits() -> None:
    assert words("Don't -- café 2-for-1 !") == ["do", "n", "t", "caf", "2", "for", "1"]  # n't split off as in SST-2


def frame(prefix: str, texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": [f"{prefix}-{i:04d}" for i in range(len(texts))], "text": texts, "label": [1] * len(texts)}
    )


TRAIN = ["a good film", "Great fun !", "the cast is superb .", "it is n't good", "dull"]
SOURCE = ["Great fun !"]  # the source models' sample of TRAIN
DEV = ["a dev-only sentence ."]
CASES = [  # (evaluation sentence, in_source, in_sst2, share)
    ("A good film , honestly it drags .", False, False, 3 / 6),  # exactly half: covered
    ("a good film , honestly it drags on .", False, False, 3 / 7),  # just under half: not covered
    ("great fun", True, True, 1.0),  # in the source sample
    ("The cast is SUPERB", False, True, 1.0),  # in SST-2 train, not in the sample
    ("A dev-only sentence", False, True, 0.0),  # in SST-2 dev only
    ("it isn't good", False, True, 1.0),  # n't split off as SST-2 (PTB) does: the same words
    ("agood film", False, True, 0.0),  # the key ignores spaces; phrases need whole words
    ("dull , dull , dull", False, False, 1 / 3),
    ("nothing like it here", False, False, 0.0),
    ("...", False, False, 0.0),  # no words at all
]


def test_cover_share_finds_the_longest_contiguous_phrase() -> None:
    phrases = phrase_set(TRAIN)
    assert "it is n t good" in phrases and "" not in phrase_set(["--"])
    for text, _, _, share in CASES:
        assert cover_share(words(text), phrases) == pytest.approx(share), text


def test_audit_flags_on_a_hand_made_case() -> None:
    evals = {"rt_validation": frame("rt-validation", [c[0] for c in CASES]), "cr_test": frame("cr-test", ["great fun"])}
    audit = audit_frame(evals, frame("s", SOURCE), frame("t", TRAIN), frame("d", DEV))
    assert list(audit.columns) == COLUMNS and len(audit) == len(CASES) + 1
    assert audit["id"].iloc[0] == "rt-validation-0000" and audit[["target", "split"]].iloc[-1].tolist() == [
        "cr",
        "test",
    ]
    val = audit[audit["split"] == "validation"]
    assert val["in_source"].tolist() == [c[1] for c in CASES]
    assert val["in_sst2"].tolist() == [c[2] for c in CASES]
    assert val["phrase_cover_share"].tolist() == pytest.approx([c[3] for c in CASES])
    assert val["phrase_covered"].tolist() == [c[3] >= 0.5 for c in CASES]
    s = summarise(audit)["rt"]["validation"]
    assert s["n"] == 10 and s["in_source"] == 1 and s["in_sst2"] == 5 and s["phrase_covered"] == 4
    assert s["in_sst2_share"] == 0.5
    assert (s["clean_source"], s["clean_sst2"], s["clean_phrase"]) == (9, 5, 4)
    assert s["phrase_covered_in_clean_sst2"] == 1  # the exactly-half one
    assert summarise(audit)["cr"]["test"]["in_source"] == 1


def test_prepare_writes_every_split_the_audit_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = params(
        "local", fake_dir(tmp_path / "data"), verify=False, sst2_subsample=100, eval_subsample=50, subsample_seed=3
    )
    tables, metrics = prepare_mod.prepare(data, ["rt", "cr"])
    assert set(tables) == {"sst2_source", "sst2_dev", "audit"} | {
        f"{t}_{s}" for t in ("rt", "cr") for s in ("train", "validation", "test")
    }
    assert (
        metrics["sizes"]["rt_validation"] == 50
        and metrics["sizes"]["cr_test"] == 50
        and metrics["sizes"]["rt_train"] == 8_530
    )
    assert metrics["sizes"]["sst2_source"] == 100 and "audit" not in metrics["sizes"] and metrics["source"] == "local"
    val = tables["rt_validation"]
    assert val["label"].sum() == 25 and val["id"].is_monotonic_increasing  # stratified, original order, original ids
    assert len(tables["audit"]) == 4 * 50 and set(metrics["audit"]) == {"rt", "cr"}
    assert not any(f["matches"] for f in metrics["files"].values())
    out, met = tmp_path / "prepared", tmp_path / "metrics/data.json"
    prepare_mod.write(tables, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.parquet" for n in tables)
    assert pd.read_parquet(out / "audit.parquet").dtypes["in_sst2"] == np.dtype(bool)
    monkeypatch.setattr(
        prepare_mod, "load_params", lambda: type("P", (), {"data": data, "study": type("S", (), {"targets": ["cr"]})})()
    )
    monkeypatch.setattr(sys, "argv", ["prepare", "--out", str(out), "--metrics", str(met)])
    prepare_mod.main()
    assert set(json.loads(met.read_text())["audit"]) == {"cr"} and not (out / "rt_train.parquet").exists()


@pytest.fixture(scope="module")
def real() -> tuple[dict[str, pd.DataFrame], dict]:
    return prepare_mod.prepare(params("local", SHARED, sst2_subsample=8_000), ["rt", "cr"])


@needs_shared
def test_real_rt_overlap(real: tuple[dict[str, pd.DataFrame], dict]) -> None:
    _, metrics = real
    val, test = metrics["audit"]["rt"]["validation"], metrics["audit"]["rt"]["test"]
    assert (val["n"], val["in_sst2"], round(100 * val["in_sst2_share"], 1)) == (1_066, 786, 73.7)  # none in SST-2 dev
    assert (test["in_sst2"], val["clean_sst2"], test["clean_sst2"]) == (761, 280, 305)
    # of the 280 clean sentences, 69 are at least half one SST-2 train phrase (word test, n't split off as SST-2 does)
    assert (val["phrase_covered_in_clean_sst2"], val["clean_phrase"]) == (69, 211)
    assert 0.05 < val["in_source_share"] < 0.15  # 8,000 of 67,349 SST-2 train items
    assert metrics["sst2_source_positive_share"] == pytest.approx(37_569 / 67_349, abs=1e-4)


@needs_shared
def test_real_cr_overlap_is_near_zero(real: tuple[dict[str, pd.DataFrame], dict]) -> None:
    tables, metrics = real
    val, test = metrics["audit"]["cr"]["validation"], metrics["audit"]["cr"]["test"]
    assert (val["in_sst2"], test["in_sst2"], val["in_source"], test["in_source"]) == (1, 0, 0, 0)
    audit = tables["audit"]
    hit = audit[(audit["target"] == "cr") & audit["in_sst2"]]["id"].tolist()
    assert tables["cr_validation"].set_index("id").loc[hit, "text"].tolist() == ["flawless ."]
    assert val["phrase_covered_share"] < 0.03 and test["phrase_covered_share"] < 0.03
