"""report.md's sentences are made from the numbers they describe: opposite numbers give the opposite sentence."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from inflection_layers.reporting import markdown as M


def test_describe_gap_flips():
    up, down = M.describe_gap(91.0, 90.0, "OVER", "UNDER"), M.describe_gap(90.0, 91.0, "OVER", "UNDER")
    assert "higher" in up and "lower" in down and "1.00 points" in up and "1.00 points" in down
    assert "equals" in M.describe_gap(90.0, 90.0, "OVER", "UNDER")
    assert "cannot be compared" in M.describe_gap(math.nan, 90.0, "OVER", "UNDER")


def test_describe_overlap_follows_the_counts():
    few = M.describe_overlap("rt", "validation", 1000, 3, 0, 0)
    many = M.describe_overlap("rt", "validation", 1000, 900, 990, 990)
    assert "the source models saw almost none of these sentences (3 of 1000" in few and "contains none" in few
    assert "the source models saw most of these sentences" in many and "nearly all" in many
    assert "was not audited" in M.describe_overlap("cr", "test", 10, None, 0, 0)


def source(dev_losses: list[float], train_losses: list[float], final: float) -> dict:
    curve = [
        {"epoch": i + 1, "dev_loss": d, "train_loss": t}
        for i, (d, t) in enumerate(zip(dev_losses, train_losses, strict=True))
    ]
    return {"over-1": {"train_loss": final, "curve": curve}, "under-1": {"train_loss": 0.3, "curve": curve[:1]}}


@pytest.mark.parametrize(
    ("dev", "train", "signature"),
    [
        ([0.30, 0.35, 0.40], [0.3, 0.2, 0.1], True),  # dev loss up twice in a row while training loss falls
        ([0.30, 0.25, 0.40], [0.3, 0.2, 0.1], False),  # one rise only: not the signature
        ([0.30, 0.35, 0.40], [0.3, 0.3, 0.4], False),  # training loss not falling
        ([0.40, 0.30, 0.25, 0.26, 0.27], [0.5, 0.4, 0.3, 0.2, 0.1], True),
    ],
)
def test_the_signature_of_over_training_needs_two_consecutive_rises(
    dev: list[float], train: list[float], signature: bool
) -> None:
    assert (
        M.overtraining_signature([{"dev_loss": d, "train_loss": t} for d, t in zip(dev, train, strict=True)])
        is signature
    )


def test_describe_over_training_flips():
    over = M.describe_over_training(source([0.30, 0.35, 0.40], [0.3, 0.2, 0.1], 0.05))
    fine = M.describe_over_training(source([0.40, 0.30, 0.25], [0.3, 0.2, 0.1], 0.5))
    assert "In 1 of 1 OVER seeds" in over and "the signature of over-training" in over and "lower than UNDER's" in over
    assert "In none of 1 OVER seeds" in fine and "signature" not in fine and "higher than UNDER's" in fine
    assert "lacks one of the regimes" in M.describe_over_training({"over-1": {}})


def ablation(size: float) -> pd.DataFrame:
    return pd.DataFrame(
        [{"method": m, "alpha": 0.5, "s": 1, "cap": "none", "size": size} for m in ("local_max", "greedy")]
    )


def test_describe_rule_says_why_from_the_numbers():
    capped = SimpleNamespace(method="local_max", alpha=0.5, s=1, max_band=3)
    assert "because with 12 layers an uncapped band covers 7.0 of them (58%)" in M.describe_rule(
        capped, 12, ablation(7)
    )
    small = M.describe_rule(capped, 12, ablation(2))
    assert "because" not in small and "2.0 of them" in small
    paper = SimpleNamespace(method="greedy", alpha=0.5, s=1, max_band=None)
    assert M.describe_rule(paper, 12, ablation(7)).startswith(
        "The LoRA cells used the greedy rule (alpha 0.5, +-1, no cap)"
    )


def test_describe_clean_flips():
    def audit(clean: float) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "target": "rt",
                    "split": "validation",
                    "regime": "over",
                    "strategy": "full",
                    "subset": s,
                    "n": n,
                    "accuracy": a,
                }
                for s, n, a in (("all", 100, 90.0), ("clean_sst2", 30, clean))
            ]
        )

    assert "higher than on the 30 clean_sst2 sentences" in M.describe_clean(audit(85.0), "rt")[0]
    assert "lower than" in M.describe_clean(audit(95.0), "rt")[0]


def test_table1_shows_the_papers_row_beside_ours():
    t1 = pd.DataFrame(
        [
            {
                "target": "rt",
                "regime": "over",
                "strategy": "lora_selective",
                "n_seeds": 3,
                "validation_all_n": 1066,
                "validation_all_mean": 88.1,
                "validation_all_std": 0.4,
                "validation_all_ci_low": 87.1,
                "validation_all_ci_high": 89.1,
                "params": "28,418",
                "paper": "91.59 ± 0.15",
                "paper_params_stated": 300000,
                "bert_base_params": 93698,
            }
        ]
    )
    text = "\n".join(M.table1_section(t1, "rt"))
    row = next(line for line in text.splitlines() if "lora_selective" in line)
    assert "88.10 ± 0.40 [87.10, 89.10]" in row and "91.59 ± 0.15" in row and "~300,000" in row and "93,698" in row


def test_values_and_intervals_in_their_units():
    assert M.value_text(0.052, "ratio") == "0.052x" and M.value_text(0.5, "share of cells") == "50% of cells"
    assert M.value_text(1.234, "points") == "+1.23 points" and M.interval_text(math.nan, 1, "points") == "n/a"


def test_counts_name_every_verdict_without_double_negatives():
    claims = pd.DataFrame(
        {"role": ["primary", "primary", "extension"], "verdict": ["Reproduced", "Inconclusive", "Reproduced"]}
    )
    text = M.describe_counts(claims)
    assert text == "Of 2 primary claim rows: 1 reproduced, 0 partially reproduced, 0 not reproduced, 1 inconclusive."


def test_an_interval_says_its_level():
    assert (
        M.interval_text(-0.1, 0.5, "points", 0.9) == "[-0.1, +0.5] (90%)"
        and M.interval_text(0.5, 2.0, "ratio") == "[0.5x, 2x]"
    )


def test_describe_stale_flips():
    ski = SimpleNamespace(method="local_max", alpha=0.5, s=1, threshold=0.25, max_band=3)
    same = pd.DataFrame({"params": [vars(ski), vars(ski)]})
    other = pd.DataFrame({"params": [vars(ski), {**vars(ski), "max_band": None}]})
    assert M.describe_stale(ski, same).startswith("All 2 groups")
    assert M.describe_stale(ski, other).startswith("1 of 2 groups") and "dvc repro select" in M.describe_stale(
        ski, other
    )
