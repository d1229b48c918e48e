"""The learning-rate sweep's choice: best mean held-out accuracy over sources, ties to the lower rate."""

from __future__ import annotations

import pandas as pd

from inflection_layers.tools.sweep import GRID, choose, edge_extensions, markdown, snap


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


def test_snap_goes_to_the_nearest_of_1_2_3_5() -> None:
    assert [snap(r) for r in (9e-3, 9e-4, 2e-4, 3.3e-2, 1e-5)] == [1e-2, 1e-3, 2e-4, 3e-2, 1e-5]


def test_a_chosen_rate_at_an_edge_gets_one_more_rate_beyond_it_once() -> None:
    rows = [("head", lr, "over-42", acc) for lr, acc in zip(GRID["head"], (0.80, 0.81, 0.82), strict=True)]
    rows += [("full", lr, "over-42", acc) for lr, acc in zip(GRID["full"], (0.86, 0.85, 0.84), strict=True)]
    rows += [("lora", lr, "over-42", acc) for lr, acc in zip(GRID["lora"], (0.80, 0.82, 0.81), strict=True)]
    t = table(rows)
    extra = edge_extensions(t, choose(t))
    assert extra == {"head": (1e-2,), "full": (1e-5,)}  # lora's best is inside its grid
    extended = table([*rows, ("head", 1e-2, "over-42", 0.83)])
    assert "head" not in edge_extensions(extended, choose(extended)), "extended once only"
