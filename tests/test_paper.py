"""paper.py: what stated.csv says, bert-base's exact arithmetic, the layer map; no paper number typed in code."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from inflection_layers.reporting.paper import Paper, bert_base_parameters, lora_parameters, map_band, paper_layers

ROOT = Path(__file__).resolve().parents[1]
STATED = ROOT / "data" / "paper" / "stated.csv"
PAPER = Paper.read(STATED)


def test_accessors():
    assert PAPER.accuracy("over", "lora_selective") == pytest.approx((0.9159, 0.0015))
    assert PAPER.accuracy("under", "full") == (None, None)
    assert PAPER.gap() == pytest.approx(0.01)
    assert PAPER.band() == [0, 1, 4, 5, 6] and PAPER.inflection_layers() == [4, 5, 6]
    assert PAPER.entropy_min_layer() == 5 and PAPER.entropy_range() == (1.055, 1.196)
    assert PAPER.greedy_threshold() == 0.25 and PAPER.greedy_s() == 1
    assert PAPER.probe_peak("over") == (11, pytest.approx(0.867)) and PAPER.probe_strategy() == "shallow"
    assert PAPER.cka_range("delta_cka_upper", "over", "full") == (0.02, 0.04)
    assert PAPER.cka_range("delta_cka_top2", "under", "shallow") == (0.005, 0.005)  # regime 'both'
    assert PAPER.grad_mean("act_grad_mean", "under", "full") == pytest.approx(6.5e-4)
    assert PAPER.stated_parameters("lora_all") == 900_000
    assert PAPER.smallest_interpreted_difference() == pytest.approx(0.0013)


def test_a_missing_row_reads_none():
    empty = Paper(
        pd.DataFrame(columns=["kind", "regime", "strategy", "layer", "value", "std", "unit", "section", "note"])
    )
    assert (
        empty.gap() is None
        and empty.band() is None
        and empty.inflection_layers() is None
        and empty.probe_peak("over") is None
    )


def test_bert_base_arithmetic_matches_the_notes_of_stated_csv():
    assert bert_base_parameters("shallow", 4, 3, 2, pooler=False) == 14_177_282
    assert bert_base_parameters("shallow", 4, 3, 2) == 14_767_874
    assert bert_base_parameters("full", 4, 3, 2) == 109_483_778
    assert bert_base_parameters("lora_selective", 4, 3, 2, band=[0, 1, 4, 5, 6]) == 92_160 + 1_538
    assert bert_base_parameters("lora_all", 4, 3, 2) == 221_184 + 1_538
    assert lora_parameters(4, 384, 3, 3) + 770 == 28_418
    for n in (14_177_282, 14_767_874, 92_160, 221_184):
        assert f"{n:,}" in STATED.read_text()


@pytest.mark.parametrize(
    ("layer", "depth", "expected"),
    [(5, 12, [5]), (5, 6, [2]), (4, 6, [2]), (7, 6, [3]), (5, 24, [10, 11]), (11, 6, [5])],
)
def test_paper_layers_by_relative_depth(layer, depth, expected):
    assert paper_layers(layer, depth) == expected


def test_map_band():
    assert map_band([0, 1, 4, 5, 6], 12) == [0, 1, 4, 5, 6] and map_band([0, 1, 4, 5, 6], 6) == [0, 2, 3]


def test_no_paper_number_is_typed_in_the_code_or_its_docstrings():
    """The paper's results live only in stated.csv: none of its reported numbers (accuracies, probe peaks, gradient
    norms, parameter counts) appears in any module or docstring, nor in the documented parameters (config.yaml).
    The `paper` profile sets the paper's *setup*, which a profile test checks against stated.csv."""
    df = pd.read_csv(STATED, dtype=str).fillna("")
    results = df[~df["kind"].isin(["setup", "greedy_threshold", "accuracy_gap", "entropy_min_layer", "ski_band"])]

    def distinctive(
        v: str,
    ) -> bool:  # a range, a power of ten, or at least 3 significant digits (not a layout constant)
        return bool(re.search(r"\d-\d|e-", v)) or len(re.sub(r"\D", "", v).lstrip("0")) >= 3

    values = {v for v in results["value"] if distinctive(v)}
    assert {"91.59", "0.02-0.04", "1.9e-6", "300000"} <= values  # the set is read from the data, not typed here
    files = [
        *sorted((ROOT / "src" / "inflection_layers").rglob("*.py")),
        ROOT / "src/inflection_layers/conf/config.yaml",
    ]
    for f in files:
        text = f.read_text()
        found = {v for v in values if re.search(rf"(?<![\d.]){re.escape(v)}(?![\d])", text)}
        assert not found, f"{f.relative_to(ROOT)} types the paper's {sorted(found)}"
