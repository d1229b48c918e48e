"""The learning-rate sweep's choice: best mean held-out accuracy over sources, ties to the lower rate."""

from __future__ import annotations

import pandas as pd

from inflection_layers.tools.sweep import GRID, choose, markdown


def table(rows: list[tuple[str, float, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["family", "lr", "source", "accuracy"])


def test_the_best_mean_over_sources_wins() -> None:
    t = table(
        [
            ("full", 2e-5, "over-42", 0.90),
            ("full", 2e-5, "under-42", 0.80),
            ("full", 1e-4, "over-42", 0.86),
            ("full", 1e-4, "under-42", 0.86),
        ]
    )
    assert choose(t).to_dict("records") == [{"family": "full", "lr": 1e-4, "accuracy": 0.86}]


def test_a_tie_goes_to_the_lower_rate() -> None:
    t = table(
        [("shallow", 3e-4, "over-42", 0.850), ("shallow", 1e-4, "over-42", 0.850), ("shallow", 3e-5, "over-42", 0.846)]
    )
    assert choose(t)["lr"].tolist() == [1e-4]


def test_one_choice_per_family_and_the_table_marks_it() -> None:
    rows = [(f, lr, "over-42", 0.8 + 0.01 * i) for f, rates in GRID.items() for i, lr in enumerate(rates)]
    chosen = choose(table(rows))
    assert sorted(chosen["family"]) == sorted(GRID) and (chosen["lr"] == [GRID[f][-1] for f in chosen["family"]]).all()
    md = markdown(table(rows), chosen)
    assert md.count("(chosen)") == len(GRID) and "| head | 0.003 (chosen) | 82.00 |" in md


def test_three_rates_per_family() -> None:
    assert all(len(rates) == 3 and list(rates) == sorted(rates) for rates in GRID.values())
