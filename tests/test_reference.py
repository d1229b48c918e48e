"""The reproduction check of CI: exact on integers and strings, tolerant on floats."""

from __future__ import annotations

import pytest

from inflection_layers.tools.reference import REPRODUCED, differences, reference_of, set_sizes, tolerance


def test_equal_within_tolerance() -> None:
    ref = {"under": {"full": {"val_acc": 0.77, "params": 22_000}}, "verdicts": ["supported"]}
    run = {"under": {"full": {"val_acc": 0.785, "params": 22_000}}, "verdicts": ["supported"], "extra": 1}
    assert differences(run, ref, atol=0.02) == []


def test_every_kind_of_difference_is_named() -> None:
    ref = {"a": 0.5, "b": 10, "c": "supported", "d": [1, 2], "e": {"f": 1.0}}
    run = {"a": 0.6, "b": 11, "c": "inconclusive", "d": [1]}
    diffs = differences(run, ref, atol=0.02)
    assert [d.split(":")[0] for d in diffs] == [".a", ".b", ".c", ".d", ".e"]
    assert "0.1 > 0.02" in diffs[0]


def test_nan_equals_nan_and_bool_is_not_a_number() -> None:
    assert differences({"x": float("nan")}, {"x": float("nan")}, 0.01) == []
    assert differences({"x": True}, {"x": 1.0}, 0.01) != []


def test_a_reference_keeps_only_what_must_reproduce() -> None:
    summary = {k: {"x": 1} for k in REPRODUCED} | {"precision": {"bf16": 10}, "verdict_code": {"P1": 2}}
    assert sorted(reference_of(summary)) == sorted(REPRODUCED)
    with pytest.raises(ValueError, match="lacks"):
        reference_of({"accuracy": {}})


def test_accuracy_tolerance_counts_sentences_of_its_set() -> None:
    """120 validation sentences, 34 of them clean: two flipped sentences pass on either set, three do not."""
    audit = {"rt": {"validation": {"n": 120, "in_sst2": 86}}}
    ref = {"accuracy": {"rt": {"under": {"full": 0.5}}}, "clean_sst2": {"under": {"full": 0.5}}, "audit": audit}
    assert set_sizes(ref) == {".accuracy.rt": 120, ".clean_sst2": 34}
    tol = tolerance(ref, atol=0.02, examples=2)

    def run(acc: float, clean: float) -> dict:
        return {"accuracy": {"rt": {"under": {"full": acc}}}, "clean_sst2": {"under": {"full": clean}}, "audit": audit}

    assert differences(run(round(0.5 + 2 / 120, 4), round(0.5 - 2 / 34, 4)), ref, tol) == []
    diffs = differences(run(round(0.5 + 3 / 120, 4), round(0.5 - 3 / 34, 4)), ref, tol)
    assert [d.split(":")[0] for d in diffs] == [".accuracy.rt.under.full", ".clean_sst2.under.full"]
    assert tol(".seeds") == 0.02
