"""Stage `report`: statistics against known values, the verdict rule as a table of cases, and main() end to end on a tiny synthetic study."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from inflection_layers import report
from inflection_layers.report import (
    INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Pair, band_consistency_claim, combine_seeds, comparisons, entropy_minimum_claim,
    jaccard, lora_parameters, mcnemar_exact, overall, paired_bootstrap, parameter_audit, read_paper_table, t_interval, table1,
    verdict, with_paper,
)

# --- parameter arithmetic ---


@pytest.mark.parametrize(
    ("rank", "width", "layers", "targets", "expected"),
    [
        (4, 768, 5, 3, 92_160),  # the paper's five BERT-base layers, not "0.3M"
        (4, 768, 1, 3, 18_432),
        (4, 384, 1, 3, 9_216),  # MiniLM-L6, one layer
        (4, 384, 6, 3, 55_296),
        (8, 384, 2, 1, 12_288),
        (4, 768, 0, 3, 0),
    ],
)
def test_lora_parameters(rank: int, width: int, layers: int, targets: int, expected: int) -> None:
    assert lora_parameters(rank, width, layers, targets) == expected


def test_lora_parameters_refuses_negative() -> None:
    with pytest.raises(ValueError, match="layers"):
        lora_parameters(4, 768, -1)


def test_parameter_audit_matches_formula_and_flags_a_wrong_count() -> None:
    metrics = pd.DataFrame([
        {"regime": "under", "strategy": "head", "seed": 1, "trainable_parameters": 66, "lora_layers": []},
        {"regime": "under", "strategy": "lora_all", "seed": 1, "trainable_parameters": 3 * 2 * 2 * 32 * 3 + 66, "lora_layers": [0, 1, 2]},
        {"regime": "under", "strategy": "lora_selective", "seed": 1, "trainable_parameters": 999, "lora_layers": [1]},
    ])
    audit = parameter_audit(metrics, rank=2, targets=3).set_index("strategy")
    assert audit.loc["lora_all", "width"] == 32 and audit.loc["lora_all", "expected"] == 1218
    assert bool(audit.loc["lora_all", "match"]) and not bool(audit.loc["lora_selective", "match"])


def test_cell_file_finds_a_cell_in_either_root(tmp_path: Path) -> None:
    (tmp_path / "a/over-42").mkdir(parents=True)
    (tmp_path / "a/over-42/full.json").write_text("{}")
    (tmp_path / "b/over-42/lora_all").mkdir(parents=True)
    (tmp_path / "b/over-42/lora_all/predictions.parquet").write_text("")
    roots = [tmp_path / "a", tmp_path / "b"]
    assert report.cell_file(roots, "over", "full", 42, ".json") == tmp_path / "a/over-42/full.json"
    assert report.cell_file(roots, "over", "lora_all", 42, "/predictions.parquet") == tmp_path / "b/over-42/lora_all/predictions.parquet"
    with pytest.raises(FileNotFoundError, match="under-full-42"):
        report.cell_file(roots, "under", "full", 42, ".json")


# --- Table 1 ---


def test_t_interval_known_values() -> None:
    mean, std, lo, hi = t_interval(np.array([0.7, 0.8, 0.9]), 0.95)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    assert (lo, hi) == (pytest.approx(0.8 - half), pytest.approx(0.8 + half))
    assert all(math.isnan(x) for x in t_interval(np.array([0.5]), 0.95)[1:])


def test_table1_aggregates_cells() -> None:
    rows = []
    for seed, (acc, free, params) in enumerate([(0.7, 0.6, 100), (0.8, 0.5, 100), (0.9, 0.7, 100)]):
        rows.append({"regime": "over", "strategy": "full", "seed": seed, "validation_accuracy": acc, "validation_free_accuracy": free,
                     "test_accuracy": acc - 0.1, "test_free_accuracy": free, "trainable_parameters": params})
    rows.append({"regime": "over", "strategy": "lora_selective", "seed": 0, "validation_accuracy": 0.75, "validation_free_accuracy": 0.6,
                 "test_accuracy": 0.7, "test_free_accuracy": 0.6, "trainable_parameters": 19_202})
    rows.append({"regime": "over", "strategy": "lora_selective", "seed": 1, "validation_accuracy": 0.77, "validation_free_accuracy": 0.6,
                 "test_accuracy": 0.7, "test_free_accuracy": 0.6, "trainable_parameters": 28_418})
    t = table1(pd.DataFrame(rows), 0.95, ["under", "over"], ["none", "full", "lora_selective"]).set_index("strategy")
    assert list(t.index) == ["full", "lora_selective"]  # no 'under' and no 'none' cells: no rows
    assert t.loc["full", "n_seeds"] == 3
    assert t.loc["full", "val_mean"] == pytest.approx(0.8) and t.loc["full", "val_std"] == pytest.approx(0.1)
    assert t.loc["full", "val_free_mean"] == pytest.approx(0.6) and t.loc["full", "test_mean"] == pytest.approx(0.7)
    assert t.loc["full", "val_ci_high"] - t.loc["full", "val_mean"] == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert (t.loc["lora_selective", "params_min"], t.loc["lora_selective", "params_max"]) == (19_202, 28_418)
    assert t.loc["lora_selective", "val_mean"] == pytest.approx(0.76)


def test_paper_table_absent_reads_na_and_present_is_merged(tmp_path: Path) -> None:
    t = pd.DataFrame({"regime": ["over", "over"], "strategy": ["full", "head"], "val_mean": [0.8, 0.7]})
    paper, why = read_paper_table(tmp_path / "missing.csv")
    assert paper is None and "does not exist" in why
    assert (with_paper(t, None)["paper_accuracy"] == "n/a").all()
    path = tmp_path / "paper.csv"
    path.write_text("# source: arXiv 2511.00797, Table 1\nregime,strategy,accuracy,accuracy_std,trainable_parameters_stated,note\n"
                    "over,full,85.5,0.5,110M,\n")
    paper, source = read_paper_table(path)
    assert source == "arXiv 2511.00797, Table 1"
    merged = with_paper(t, paper).set_index("strategy")
    assert merged.loc["full", "paper_accuracy"] == pytest.approx(0.855)  # percent read as a fraction
    assert merged.loc["full", "paper_accuracy_std"] == pytest.approx(0.005)
    assert merged.loc["full", "paper_params_stated"] == "110M" and merged.loc["head", "paper_accuracy"] == "n/a"


# --- paired statistics ---


def test_bootstrap_is_degenerate_for_identical_predictions() -> None:
    a = np.random.default_rng(0).random((3, 200)) < 0.7
    assert paired_bootstrap(a, a.copy(), 500, 0.95, np.random.default_rng(0)) == (0.0, 0.0, 0.0)


def test_bootstrap_covers_the_true_difference() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 3000)) < 0.80, rng.random((3, 3000)) < 0.70  # true difference 0.10
    diff, lo, hi = paired_bootstrap(a, b, 1000, 0.95, np.random.default_rng(0))
    assert diff == pytest.approx(a.mean() - b.mean())
    assert lo < 0.10 < hi and lo > 0.05 and hi - lo < 0.05
    diff, lo, hi = paired_bootstrap(np.ones((2, 50)), np.zeros((2, 50)), 200, 0.95, np.random.default_rng(0))
    assert (diff, lo, hi) == (1.0, 1.0, 1.0)


def test_bootstrap_keeps_the_pairing() -> None:
    """b is a right exactly where a is, except on 2 of 1000 examples: paired, the interval is narrow around 0.002."""
    a = np.random.default_rng(2).random((1, 1000)) < 0.5
    b = a.copy()
    b[0, np.flatnonzero(a[0])[:2]] = False
    diff, lo, hi = paired_bootstrap(a, b, 1000, 0.95, np.random.default_rng(0))
    assert diff == pytest.approx(0.002) and 0.0 <= lo <= hi <= 0.006


@pytest.mark.parametrize(
    ("n_ab", "n_ba", "p"),
    [(0, 0, 1.0), (3, 3, 1.0), (10, 0, 2 * 0.5**10), (0, 10, 2 * 0.5**10), (1, 0, 1.0)],
)
def test_mcnemar_exact_known_values(n_ab: int, n_ba: int, p: float) -> None:
    a = np.array([True] * n_ab + [False] * n_ba + [True] * 5 + [False] * 4)
    b = np.array([False] * n_ab + [True] * n_ba + [True] * 5 + [False] * 4)
    assert mcnemar_exact(a, b) == (n_ab, n_ba, pytest.approx(p))


def test_combine_seeds() -> None:
    assert combine_seeds([1.0, 1.0, 1.0], [0, 2, 5], [0, 2, 5]) == pytest.approx(1.0)
    assert combine_seeds([0.001, 0.001], [30, 0], [0, 30]) == pytest.approx(1.0)  # opposite directions cancel
    same = combine_seeds([0.01, 0.01, 0.01], [20, 20, 20], [4, 4, 4])
    assert same < 0.01 and same == pytest.approx(combine_seeds([0.01, 0.01, 0.01], [4, 4, 4], [20, 20, 20]))  # symmetric in A and B


def test_comparisons_mcnemar_and_holm_wiring() -> None:
    rng = np.random.default_rng(3)
    n, seeds = 400, [1, 2, 3]
    correct = {}
    for s in seeds:
        base = rng.random(n) < 0.6
        correct[("under", "none", s)] = base
        correct[("under", "head", s)] = base.copy()  # identical predictions
        correct[("under", "full", s)] = base | (rng.random(n) < 0.8)  # far better
    masks = {"validation": np.ones(n, dtype=bool), "validation_free": np.arange(n) < 100}
    pairs = [Pair("vs_none", "under", "head", "under", "none"), Pair("vs_none", "under", "full", "under", "none")]
    comp = comparisons(correct, masks, pairs, seeds, n_boot=200, confidence=0.95, alpha=0.05, seed=0).set_index(["strategy_a", "eval_set"])
    same, better = comp.loc[("head", "validation")], comp.loc[("full", "validation")]
    assert same["p_seeds"] == "1;1;1" and same["p_combined"] == 1.0 and same["p_holm"] == 1.0 and not same["significant"]
    assert (same["diff"], same["ci_low"], same["ci_high"], same["n_a_only"]) == (0.0, 0.0, 0.0, 0)
    assert better["p_combined"] < 1e-20 and better["p_holm"] < 1e-20 and better["significant"]
    assert better["n_b_only"] == 0 and better["ci_low"] > 0.2 and better["cohens_h"] > 0.5
    assert (comp["p_holm"] >= comp["p_combined"] - 1e-15).all()
    free = comp.loc[("full", "validation_free")]
    assert free["p_combined"] > better["p_combined"]  # Holm over 4 tests: the second smallest p times 3, kept monotone
    assert free["p_holm"] == pytest.approx(min(1.0, max(3 * free["p_combined"], 4 * better["p_combined"])))


# --- verdicts ---


@pytest.mark.parametrize(
    ("kind", "lo", "hi", "p", "expected"),
    [
        (">", 0.01, 0.05, 0.001, SUPPORTED),
        (">", 0.01, 0.05, 0.20, INCONCLUSIVE),  # interval above 0, test not significant after Holm
        (">", -0.02, 0.05, 0.001, INCONCLUSIVE),
        (">", -0.005, 0.008, 1.0, NOT_SUPPORTED),  # a gain of 1 point is excluded
        (">", -0.05, -0.02, 0.001, NOT_SUPPORTED),
        (">=", -0.005, 0.004, 1.0, SUPPORTED),  # non-inferior within 1 point
        (">=", -0.03, -0.01, 0.001, NOT_SUPPORTED),
        (">=", -0.03, -0.01, 0.20, INCONCLUSIVE),
        (">=", -0.03, 0.02, 0.5, INCONCLUSIVE),
        (">=", -0.01, 0.02, 0.5, INCONCLUSIVE),  # the bound itself is not above -margin
    ],
)
def test_verdict_rule(kind: str, lo: float, hi: float, p: float, expected: str) -> None:
    assert verdict(kind, lo, hi, p, alpha=0.05, margin=0.01) == expected


def test_verdict_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        verdict("<", 0, 1, 0.5, 0.05)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [([SUPPORTED, SUPPORTED], SUPPORTED), ([SUPPORTED, INCONCLUSIVE], INCONCLUSIVE), ([SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE], NOT_SUPPORTED), ([], INCONCLUSIVE)],
)
def test_overall(parts: list[str], expected: str) -> None:
    assert overall(parts) == expected


def test_entropy_minimum_claim() -> None:
    rows = [{"layer": l, "metric": "entropy", "value": v, "regime": r, "seed": s}
            for r, s, vals in (("under", 1, [2.0, 1.0, 1.5]), ("over", 1, [2.0, 1.2, 1.9]), ("over", 2, [0.5, 1.2, 1.9]))
            for l, v in enumerate(vals)]
    rows.append({"layer": 0, "metric": "act_grad", "value": -9.0, "regime": "under", "seed": 1})  # other metrics are ignored
    out = entropy_minimum_claim(pd.DataFrame(rows))
    assert out["argmin"] == {"over-1": 1, "over-2": 0, "under-1": 1} and out["mode"] == 1
    assert out["agreement"] == pytest.approx(2 / 3) and out["verdict"] == NOT_SUPPORTED
    assert entropy_minimum_claim(pd.DataFrame(rows[:6]))["verdict"] == SUPPORTED


def test_band_consistency_claim() -> None:
    assert jaccard([4, 5], [3, 4, 5]) == pytest.approx(2 / 3) and jaccard([], []) == 1.0 and jaccard([0], [1]) == 0.0
    same = {("under", 1): [1, 2], ("under", 2): [2, 1], ("over", 1): [0], ("over", 2): [0]}
    assert band_consistency_claim(same)["verdict"] == SUPPORTED
    some = {("over", 1): [4, 5], ("over", 2): [3, 4, 5], ("over", 3): [4, 5]}
    out = band_consistency_claim(some)
    assert out["jaccard"]["over"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3) and out["verdict"] == INCONCLUSIVE
    assert band_consistency_claim({("over", 1): [0], ("over", 2): [5]})["verdict"] == NOT_SUPPORTED


# --- main() end to end ---

REGIMES, SEEDS, LAYERS, WIDTH, RANK = ["under", "over"], [1, 2], 3, 32, 2
PLAIN, LORA = ["none", "head", "shallow", "full"], ["lora_selective", "lora_all", "lora_random"]
SKILL = {"none": 0.60, "head": 0.61, "shallow": 0.70, "full": 0.80, "lora_selective": 0.62, "lora_all": 0.62, "lora_random": 0.61}


def fake_study(root: Path) -> None:
    """Every input of the report for 2 regimes x 7 strategies x 2 seeds, a 3-layer model of width 32 and 120 RT sentences."""
    rng = np.random.default_rng(0)
    n_val, n_test = 80, 40
    labels = rng.integers(0, 2, n_val + n_test)
    free = np.arange(n_val + n_test) % 3 == 0
    split = np.array(["rt_validation"] * n_val + ["rt_test"] * n_test)
    ids = [f"rt-{i:04d}" for i in range(n_val + n_test)]
    bands = {"under": [1, 2], "over": [2]}
    for regime in REGIMES:
        for seed in SEEDS:
            diag = [{"layer": l, "metric": m, "value": float(v), "regime": regime, "seed": seed}
                    for m, vals in (("entropy", [2.0, 1.0 + 0.1 * seed, 1.5]), ("entropy_norm", [0.8, 0.4, 0.6]), ("param_grad", [3.0, 2.0, 1.0]))
                    for l, v in enumerate(vals)]
            diag += [{"layer": l, "metric": "act_grad", "value": 1.0 / (l + 2), "regime": regime, "seed": seed} for l in range(-1, LAYERS)]
            (root / "metrics/diagnose").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(diag).to_csv(root / f"metrics/diagnose/{regime}-{seed}.csv", index=False)
            (root / "metrics/selection").mkdir(parents=True, exist_ok=True)
            (root / f"metrics/selection/{regime}-{seed}.json").write_text(json.dumps(
                {"regime": regime, "seed": seed, "num_layers": LAYERS, "scores": [0.0, 0.3, 0.2 + 0.05 * seed],
                 "candidates": [1], "band": bands[regime], "band_size": len(bands[regime]), "random_band": [0], "params": {}}))
            for strategy in PLAIN + LORA:
                group = f"{regime}-{seed}"  # the layout `finetune` writes: one folder per source model, one entry per strategy
                stage = "finetune_lora" if strategy in LORA else "finetune"
                for kind in ("models", "metrics", "plots"):
                    (root / kind / stage / group).mkdir(parents=True, exist_ok=True)
                right = rng.random(n_val + n_test) < SKILL[strategy] + (0.05 if regime == "over" else 0.0)
                pred = np.where(right, labels, 1 - labels)
                (root / f"models/{stage}/{group}/{strategy}").mkdir()
                pd.DataFrame({"id": ids, "split": split, "label": labels, "prob_pos": pred * 0.9, "pred": pred, "overlap_free": free}).to_parquet(
                    root / f"models/{stage}/{group}/{strategy}/predictions.parquet", index=False)
                layers = {"lora_selective": bands[regime], "lora_random": [0] * len(bands[regime]), "lora_all": list(range(LAYERS))}.get(strategy, [])
                params = {"none": 0, "head": 2 * WIDTH + 2, "shallow": 20_000, "full": 100_000}.get(strategy)
                if params is None:
                    params = lora_parameters(RANK, WIDTH, len(layers)) + 2 * WIDTH + 2
                acc = {k: float(right[(split == s) & (free if f else True)].mean()) for k, s, f in
                       (("validation", "rt_validation", False), ("validation_free", "rt_validation", True), ("test", "rt_test", False), ("test_free", "rt_test", True))}
                (root / f"metrics/{stage}/{group}/{strategy}.json").write_text(json.dumps({
                    "regime": regime, "strategy": strategy, "seed": seed, **{f"{k}_accuracy": v for k, v in acc.items()},
                    "validation_free_n": int(free[:n_val].sum()), "trainable_parameters": params, "lora_layers": layers, "steps": 4}))
                tidy = [] if strategy == "none" else (
                    [{"layer": l, "metric": m, "value": 1.0 + l, "regime": regime, "strategy": strategy, "seed": seed}
                     for m in ("entropy", "entropy_norm", "param_grad") for l in range(LAYERS)]
                    + [{"layer": l, "metric": "act_grad", "value": 0.5, "regime": regime, "strategy": strategy, "seed": seed} for l in range(-1, LAYERS)])
                pd.DataFrame(tidy, columns=["layer", "metric", "value", "regime", "strategy", "seed"]).to_csv(root / f"plots/{stage}/{group}/{strategy}-layers.csv", index=False)
    cka = [{"layer": l, "metric": m, "value": 0.01 * (l + 2), "regime": r, "strategy": s, "seed": seed}
           for r in REGIMES for s in PLAIN[1:] + LORA for seed in SEEDS for l in range(-1, LAYERS) for m in ("delta_cka", "delta_cka_debiased")]
    pd.DataFrame(cka).to_csv(root / "metrics/cka.csv", index=False)
    probes = [{"layer": l, "metric": m, "value": 0.5 + 0.05 * l * (m in ("linear", "mlp")), "regime": r, "strategy": s, "seed": seed}
              for r in REGIMES for s in PLAIN + LORA for seed in SEEDS for l in range(LAYERS)
              for m in ("linear", "mlp", "linear_shuffled", "mlp_shuffled", "majority")]
    pd.DataFrame(probes).to_csv(root / "metrics/probes.csv", index=False)
    (root / "metrics/data.json").write_text(json.dumps({"sizes": {"sst2_source": 64}, "overlap": {
        "rt_validation": {"vs_sst2_train": {"count": 53, "total": 80, "share": 0.6625, "label_agreement": 0.95},
                          "vs_sst2_dev": {"count": 0, "total": 80, "share": 0.0, "label_agreement": None}, "overlap_free": 27}}}))
    params = {"study": {"regimes": REGIMES, "seeds": SEEDS, "strategies": PLAIN, "lora_strategies": LORA},
              "data": {"sst2_subsample": 64}, "lora": {"rank": RANK}, "report": {"bootstrap": 200}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_main_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "report", "--finetune-metrics", "metrics/finetune", "metrics/finetune_lora", "--cells", "models/finetune", "models/finetune_lora",
        "--finetune-plots", "plots/finetune", "plots/finetune_lora",
        "--diagnose", "metrics/diagnose", "--selection", "metrics/selection", "--cka", "metrics/cka.csv", "--probes", "metrics/probes.csv",
        "--data-metrics", "metrics/data.json", "--paper", "paper_table1.csv", "--summary", "metrics/summary.json", "--out", "plots/report"])
    report.main()

    out = tmp_path / "plots/report"
    figures = ["accuracy_vs_params", "layers_entropy", "layers_act_grad", "layers_param_grad", "delta_cka", "probes", "ski"]
    expected = {"report.md", "table1.csv", "comparisons.csv", "claims.csv", "parameters.csv"} | {f"{f}.{e}" for f in figures for e in ("csv", "png")}
    assert {p.name for p in out.iterdir()} == expected
    for f in figures:
        assert (out / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = pd.read_csv(out / "table1.csv", keep_default_na=False, na_values=[""])
    assert len(table) == 2 * 7 and (table["n_seeds"] == 2).all()
    assert (table["paper_accuracy"] == "n/a").all()
    cells = pd.DataFrame([json.loads(p.read_text()) for p in sorted((tmp_path / "metrics/finetune").glob("over-*/full.json"))])
    assert table.set_index(["regime", "strategy"]).loc[("over", "full"), "val_mean"] == pytest.approx(cells["validation_accuracy"].mean())

    comp = pd.read_csv(out / "comparisons.csv")
    assert len(comp) == 2 * (4 * 2 + 7 + 6 * 2)  # (4 selective pairs x 2 regimes + 7 over-vs-under + 6 vs-none x 2 regimes) x 2 sets
    assert comp["p_holm"].between(0, 1).all() and (comp["ci_low"] <= comp["diff"] + 1e-12).all() and (comp["diff"] <= comp["ci_high"] + 1e-12).all()
    assert (comp.loc[comp["eval_set"] == "validation", "n_examples"] == 80).all()
    assert (comp.loc[comp["eval_set"] == "validation_free", "n_examples"] == 27).all()

    audit = pd.read_csv(out / "parameters.csv")
    assert audit["match"].all() and (audit["width"] == WIDTH).all()
    assert list(pd.read_csv(out / "ski.csv").columns) == ["layer", "over_1", "over_2", "under_1", "under_2", "band_over_1", "band_over_2", "band_under_1", "band_under_2"]
    assert -1 not in set(pd.read_csv(out / "delta_cka.csv")["layer"])  # the embeddings' [CLS] has no CKA
    assert list(pd.read_csv(out / "layers_act_grad.csv")["layer"]) == [-1, 0, 1, 2]

    summary = json.loads((tmp_path / "metrics/summary.json").read_text())
    assert set(summary) == {"under", "over", "claims", "findings"}
    assert set(summary["over"]) == set(PLAIN + LORA)
    assert summary["over"]["full"]["params"] == 100_000 and summary["under"]["head"]["params"] == 66
    assert summary["claims"]["e_band_consistent"] == {"validation": SUPPORTED, "validation_free": SUPPORTED}
    assert summary["claims"]["d_entropy_min_same_layer"]["validation"] == SUPPORTED
    assert set(summary["claims"]) == {"a_over_gt_under", "b_selective_ge_lora_all", "c_selective_ge_shallow_full", "f_selective_gt_random",
                                      "d_entropy_min_same_layer", "e_band_consistent"}
    for claim in summary["claims"].values():
        assert set(claim.values()) <= {SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE}
    assert summary["findings"]["tests"] == len(comp) and summary["findings"]["lora_counts_match_formula"] is True
    assert summary["findings"]["rt_validation_overlap_share"] == 0.6625

    md = (out / "report.md").read_text()
    assert "The paper's numbers are not included" in md and "`paper_table1.csv` does not exist" in md
    assert "92,160 for 5 layers" in md and "18,432 per layer" in md
    assert "Predictions reproduce the per-cell accuracies of metrics/finetune: yes" in md
    for f in figures:
        assert f"]({f}.png)" in md


def test_table1_without_test_split_has_nan_test_columns() -> None:
    metrics = pd.DataFrame([{"regime": "over", "strategy": "full", "seed": s, "validation_accuracy": 0.8 + s / 100,
                             "validation_free_accuracy": 0.7, "trainable_parameters": 10} for s in range(3)])
    table = report.table1(metrics, 0.95, ["over"], ["full"])
    assert table.loc[0, "val_mean"] == pytest.approx(0.81) and math.isnan(table.loc[0, "test_mean"])
