"""The report's tables: evaluation sets, per-seed accuracy, comparisons, Table 1 (the paper beside ours),
parameters, the selection ablation, bands and timing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from inflection_layers.reporting import tables as T
from inflection_layers.reporting.paper import Paper

ROOT = Path(__file__).resolve().parents[1]
PAPER = Paper.read(ROOT / "data" / "paper" / "stated.csv")
REP = SimpleNamespace(confidence=0.95, alpha=0.05, power=0.8, bootstrap=100, seed=0)
PARAMS = SimpleNamespace(
    report=REP, lora=SimpleNamespace(rank=4, targets=["query", "key", "value"]), finetune=SimpleNamespace(shallow_k=2)
)


def examples(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(n)],
            "split": ["validation"] * n,
            "in_source": [False] * n,
            "in_sst2": [i < n // 2 for i in range(n)],
            "phrase_covered": [None] + [False] * (n - 1),
        }
    )


def study(seeds=(1, 2, 3), n: int = 20) -> dict:
    rng = np.random.default_rng(0)
    correct = {}
    for seed in seeds:
        for regime in ("under", "over"):
            for s in ("none", "shallow", "lora_selective", "lora_all", "lora_random_0", "lora_random_1"):
                correct[(regime, seed, s)] = rng.random(n) < (0.9 if s == "lora_selective" else 0.6)
    return {"rt": (examples(n), correct)}


def test_eval_sets_leave_out_flagged_and_unknown_sentences():
    sets = T.eval_sets(examples())
    assert set(sets) == {("validation", s) for s in ("all", "clean_source", "clean_sst2", "clean_phrase")}
    assert sets[("validation", "clean_sst2")].sum() == 10
    assert sets[("validation", "clean_phrase")].sum() == 19  # an unknown flag is not clean


def test_accuracy_table_adds_the_mean_of_the_random_draws():
    acc = T.accuracy_table(study())
    draws = acc[(acc["family"] == "lora_random") & (acc["strategy"] != "lora_random") & (acc["subset"] == "all")]
    mean = acc[(acc["strategy"] == "lora_random") & (acc["subset"] == "all")]
    assert len(mean) == 6
    assert mean.set_index(["regime", "seed"])["accuracy"].sort_index().to_numpy() == pytest.approx(
        draws.groupby(["regime", "seed"])["accuracy"].mean().sort_index().to_numpy()
    )


def test_comparison_pairs():
    pairs = T.comparison_pairs(
        {
            "under": ["none", "shallow", "lora_selective", "lora_random_0"],
            "over": ["none", "shallow", "lora_selective", "lora_random_0"],
        }
    )
    named = {(f, a, b) for f, a, b in pairs}
    assert ("selective_vs_other", ("over", "lora_selective"), ("over", "lora_random_0")) in named
    assert ("over_vs_under", ("over", "shallow"), ("under", "shallow")) in named
    assert not any(a[1] == "lora_random_0" for f, a, b in pairs if f != "selective_vs_other")
    assert len(named) == len(pairs)  # no duplicates (selective vs none appears once)


def test_comparisons_are_seed_level_with_holm_per_evaluation_set():
    comp = T.comparisons(study(), REP)
    row = comp[(comp["a"] == "over/lora_selective") & (comp["b"] == "over/shallow") & (comp["subset"] == "all")].iloc[0]
    assert row["n_seeds"] == 3 and row["diff"] > 0 and row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert {
        "boot_low",
        "boot_high",
        "p_mcnemar_seeds",
        "p_holm",
        "reject_holm",
        "diffs_points",
    } <= set(comp.columns)
    assert set(comp["subset"]) == {"all", "clean_sst2", "clean_phrase"}  # clean_source is every sentence: left out
    for _, g in comp.groupby(["split", "subset"]):
        assert (g["p_holm"].dropna() >= g.loc[g["p_holm"].notna(), "p"] - 1e-12).all()


def cells_frame(params_by_seed: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "target": "rt",
                "regime": r,
                "seed": s,
                "strategy": x,
                "family": x.rsplit("_", 1)[0] if x[-1].isdigit() else x,
                "trainable_parameters": p,
                "adapted_layers": [0] * ((p - 770) // 9216) if x.startswith("lora") else [],
            }
            for (r, x), ps in params_by_seed.items()
            for s, p in zip((1, 2, 3), ps, strict=True)
        ]
    )


def test_table1_puts_the_papers_numbers_beside_ours():
    acc = T.accuracy_table(study())
    cells = cells_frame(
        {
            (r, s): [28_418, 46_850, 28_418] if s == "lora_selective" else [770, 770, 770]
            for r in ("under", "over")
            for s in ("none", "shallow", "lora_selective", "lora_all", "lora_random_0", "lora_random_1")
        }
    )
    t = T.table1(acc, cells, PAPER, PARAMS, 0.95).set_index(["regime", "strategy"])
    assert t.loc[("over", "lora_selective"), "paper"] == "91.59 ± 0.15"
    assert t.loc[("over", "lora_selective"), "params"] == "28,418-46,850"
    assert (
        t.loc[("over", "lora_selective"), "paper_params_stated"] == 300_000
        and t.loc[("over", "lora_selective"), "bert_base_params"] == 93_698
    )
    assert t.loc[("over", "lora_random"), "draws"] == 2
    assert (
        t.loc[("over", "lora_selective"), "validation_all_ci_low"]
        <= t.loc[("over", "lora_selective"), "validation_all_mean"]
    )


def test_params_text_and_width():
    assert T.params_text(28_418, 28_418) == "28,418" and T.params_text(28_418, 46_850) == "28,418-46,850"
    assert T.infer_width(pd.DataFrame({"family": ["head"], "trainable_parameters": [770]}), 4, 3) == 384


def test_width_of_an_mpnet_head_comes_from_the_lora_cells() -> None:
    """MPNet's head is dense + out_proj (w^2 + 3w + 2 = 592,130 at 768): the width must come from the LoRA counts."""
    cells = pd.DataFrame(
        {
            "family": ["head", "lora_selective", "lora_all"],
            "trainable_parameters": [592130, 647426, 813314],
            "adapted_layers": [None, [2, 3, 7], list(range(12))],
        }
    )
    assert T.infer_width(cells, 4, 3) == 768


def test_parameters_table_checks_the_lora_formula():
    cells = cells_frame(
        {("over", "head"): [770] * 3, ("over", "lora_all"): [770 + 6 * 9216] * 3, ("over", "lora_rgn"): [999] * 3}
    )
    t = T.parameters_table(cells, PAPER, PARAMS, 384).set_index("strategy")
    assert bool(t.loc["lora_all", "formula_matches"]) and not bool(t.loc["lora_rgn", "formula_matches"])
    assert t.loc["lora_all", "bert_base_exact"] == 222_722 and t.loc["lora_all", "paper_stated"] == 900_000


def diag_frame() -> pd.DataFrame:
    rows = []
    for regime in ("under", "over"):
        h, g = [2.0, 1.2, 1.5, 1.8, 1.9, 2.1], [1.0, 0.9, 0.5, 0.2, 0.1, 0.05]
        rows += [
            {"layer": l, "metric": m, "value": v[l], "target": "rt", "regime": regime, "seed": 1}
            for l in range(6)
            for m, v in (("entropy", h), ("act_grad", g))
        ]
    return pd.DataFrame(rows)


def test_selection_ablation_reruns_every_variant():
    ski = SimpleNamespace(method="local_max", alpha=0.5, s=1, threshold=0.25, max_band=3)
    sel = pd.DataFrame([{"target": "rt", "regime": r, "seed": 1, "band": [0, 1, 2]} for r in ("under", "over")])
    ab = T.selection_ablation(diag_frame(), sel, ski)
    assert len(ab) == 2 * 3 * 2 * 2 * 2
    assert ab.groupby("group")["study_rule"].sum().tolist() == [1, 1]
    assert set(ab["cap"]) == {3, "none"} and (ab.loc[ab["cap"] == 3, "size"] <= 3).all()


def test_bands_table():
    sel = pd.DataFrame(
        [
            {
                "target": "rt",
                "regime": "over",
                "seed": 1,
                "band": [1, 2],
                "complement": [4, 5],
                "top": [4, 5],
                "rgn": [2, 3],
                "cka": [1, 2],
                "random": [{"layers": [0, 1]}],
            }
        ]
    )
    b = T.bands_table(sel).set_index("selector")
    assert (
        b.loc["rgn", "jaccard_with_ski"] == pytest.approx(1 / 3)
        and b.loc["cka", "overlap_with_ski"] == 2
        and b.loc["random_0", "tier"] == "random"
        and b.loc["top", "overlap_with_ski"] == 0
    )


def test_timing_table():
    t = T.timing_table(
        {
            "source": [{"wall_seconds": 10, "tokens_per_second": 5}, {"wall_seconds": 30, "tokens_per_second": 7}],
            "finetune": [{"wall_seconds": 60, "tokens": 600}],
            "select": [{"wall_seconds": None}],
        }
    ).set_index("stage")
    assert list(t.index) == ["source", "finetune"] and t["share"].sum() == pytest.approx(1)
    assert (
        t.loc["source", "wall_seconds"] == 40
        and t.loc["source", "tokens_per_second"] == 6
        and t.loc["finetune", "tokens_per_second"] == 10
    )


def test_audit_table():
    acc = T.accuracy_table(study())
    a = T.audit_table(
        acc, {"audit": {"rt": {"validation": {"n": 20, "in_source": 0, "in_sst2": 10, "phrase_covered": 1}}}}
    )
    assert set(a["subset"]) == {"all", "clean_source", "clean_sst2", "clean_phrase"}
    assert (a["split_in_sst2"] == 10).all() and a["accuracy"].between(0, 100).all()
