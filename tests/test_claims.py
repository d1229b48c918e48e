"""Each claim's verdict on synthetic data built to give Reproduced, Not reproduced and Inconclusive; the
direction-only (effect=None) rules of verdicts.greater / less."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from inflection_layers.cells import family
from inflection_layers.reporting import claims as C
from inflection_layers.reporting import claims_layers as CL
from inflection_layers.reporting.claims_base import CLAIM_COLUMNS, PART_COLUMNS, Evidence
from inflection_layers.reporting.paper import Paper
from inflection_layers.reporting.verdicts import INCONCLUSIVE as I
from inflection_layers.reporting.verdicts import NOT_REPRODUCED as N
from inflection_layers.reporting.verdicts import PARTIAL as P
from inflection_layers.reporting.verdicts import REPRODUCED as R
from inflection_layers.reporting.verdicts import greater, less

ROOT = Path(__file__).resolve().parents[1]
PAPER = Paper.read(ROOT / "data" / "paper" / "stated.csv")
PARAMS = SimpleNamespace(
    report=SimpleNamespace(confidence=0.95, alpha=0.05, power=0.8, bootstrap=100, seed=0),
    lora=SimpleNamespace(rank=4, targets=["query", "key", "value"]),
    finetune=SimpleNamespace(shallow_k=2),
    ski=SimpleNamespace(method="local_max", alpha=0.5, s=1, threshold=0.25, max_band=3, random_draws=3),
)
SEEDS = (1, 2, 3)
EMPTY = pd.DataFrame(columns=["layer", "metric", "value", "target", "regime", "seed", "strategy"])


def ev(**kw) -> Evidence:
    base = dict(
        acc=pd.DataFrame(
            columns=["target", "regime", "seed", "strategy", "family", "split", "subset", "n", "accuracy"]
        ),
        cells=pd.DataFrame(
            columns=["target", "regime", "seed", "strategy", "family", "trainable_parameters", "lora_layers"]
        ),
        diagnose=EMPTY,
        layers=EMPTY,
        selection=pd.DataFrame(),
        cka=EMPTY,
        probes=EMPTY,
        paper=PAPER,
        params=PARAMS,
        num_layers=12,
        width=32,
    )
    return Evidence(**(base | kw))


def acc(values: dict, target: str = "rt", subset: str = "all", n: int = 1000) -> pd.DataFrame:
    """values: (regime, strategy) -> per-seed accuracies."""
    rows = [
        {
            "target": target,
            "regime": r,
            "seed": seed,
            "strategy": s,
            "family": family(s),
            "split": "validation",
            "subset": subset,
            "n": n,
            "accuracy": a,
        }
        for (r, s), xs in values.items()
        for seed, a in zip(SEEDS, xs)
    ]
    return pd.DataFrame(rows)


BASE = np.array([0.80, 0.82, 0.81])
NOISE = np.array([0.003, -0.002, 0.001])


def shifted(strategies, gap, noise=NOISE):
    return {**{("under", s): BASE for s in strategies}, **{("over", s): BASE + gap + noise for s in strategies}}


# --- verdicts: a direction only ---


@pytest.mark.parametrize(
    ("lo", "hi", "mde", "expected"),
    [
        ((0.01, 0.02, math.nan, R)),
        ((-0.02, -0.01, 0.5, N)),
        ((-0.01, 0.02, 0.001, I)),
        ((-0.01, 0.02, math.nan, I)),
        ((math.nan, math.nan, math.nan, I)),
    ],
)
def test_greater_without_a_stated_effect(lo, hi, mde, expected):
    assert greater(lo, hi, mde, None) == expected
    assert less(-hi, -lo, mde, None) == expected


def test_a_stated_effect_still_decides_not_reproduced_when_detectable():
    assert greater(-0.01, 0.005, 0.004, 0.01) == N  # excludes the claimed 0.01, which was detectable
    assert greater(-0.01, 0.005, 0.004, None) == I  # no size claimed: only the direction counts


# --- accuracy claims ---


@pytest.mark.parametrize(
    ("gap", "noise", "expected"), [(0.03, NOISE, R), (-0.03, NOISE, N), (0.0, np.array([0.05, -0.06, 0.01]), I)]
)
def test_p1(gap, noise, expected):
    row, parts = C.p1(ev(acc=acc(shifted(["head", "full"], gap, noise))), "rt")
    assert row["verdict"] == expected and set(row) == set(CLAIM_COLUMNS)
    assert [p["in_verdict"] for p in parts] == [False, True, True]


def test_p1_without_both_regimes_is_inconclusive_with_a_reason():
    row, parts = C.p1(ev(acc=acc({("over", "full"): BASE})), "rt")
    assert row["verdict"] == I and "lacks" in parts[0]["reason"]


@pytest.mark.parametrize(("gap", "expected"), [(0.02, R), (-0.02, N)])
def test_p2(gap, expected):
    v = {("over", s): BASE for s in ("shallow", "full", "lora_all")} | {("over", "lora_selective"): BASE + gap + NOISE}
    row, parts = C.p2(ev(acc=acc(v)), "rt")
    assert row["verdict"] == expected and len(parts) == 3
    assert parts[0]["effect"] == pytest.approx(PAPER.accuracy_difference("over", "lora_selective", "over", "lora_all"))


@pytest.mark.parametrize(
    ("diff", "expected"),
    [(np.array([0.0001, -0.0001, 0.0]), R), (np.array([0.05, 0.06, 0.055]), N), (np.array([0.03, -0.03, 0.0]), I)],
)
def test_p3_is_an_equivalence_test_with_the_papers_std_as_margin(diff, expected):
    row, parts = C.p3(ev(acc=acc({("over", "shallow"): BASE, ("over", "lora_all"): BASE + diff})), "rt")
    assert row["verdict"] == expected
    assert parts[0]["margin"] == pytest.approx(0.0023) and "seed std" in parts[0]["reason"]


@pytest.mark.parametrize(("sign", "expected"), [(1, R), (-1, N)])
def test_p4(sign, expected):
    d = 0.02 * sign
    v = {
        ("under", "shallow"): BASE,
        ("under", "full"): BASE,
        ("under", "lora_selective"): BASE - d + NOISE,
        ("over", "shallow"): BASE,
        ("over", "lora_selective"): BASE + d + NOISE,
    }
    row, parts = C.p4(ev(acc=acc(v)), "rt")
    assert row["verdict"] == expected and len(parts) == 4
    assert "the paper's own numbers" in parts[0]["paper_value"]


def test_o1_ranks_ski_among_the_draws():
    v = {("over", "lora_selective"): BASE + 0.02 + NOISE} | {
        ("over", f"lora_random_{d}"): BASE - 0.01 * d for d in range(3)
    }
    a = acc(v)
    mean = a[a["strategy"].str.startswith("lora_random_")].groupby("seed", as_index=False)["accuracy"].mean()
    a = pd.concat(
        [
            a,
            mean.assign(
                target="rt",
                regime="over",
                strategy="lora_random",
                family="lora_random",
                split="validation",
                subset="all",
                n=1000,
            ),
        ]
    )
    row, parts = C.o1(ev(acc=a), "rt")
    assert row["verdict"] == R and row["source"] == "ours"
    assert "rank per seed: 1 of 4, 1 of 4, 1 of 4" in parts[1]["part"]


@pytest.mark.parametrize(("gap", "expected"), [(0.02, R), (-0.02, N)])
def test_o2(gap, expected):
    v = {("under", r): BASE for r in ("lora_rgn", "lora_cka", "lora_complement")} | {
        ("under", "lora_selective"): BASE + gap + NOISE
    }
    cells = pd.DataFrame(
        [
            {
                "target": "rt",
                "regime": "under",
                "seed": s,
                "strategy": x,
                "family": x,
                "trainable_parameters": 100,
                "lora_layers": [1],
            }
            for s in SEEDS
            for x in ("lora_selective", "lora_rgn", "lora_cka", "lora_complement")
        ]
    )
    row, parts = C.o2(ev(acc=acc(v), cells=cells), "rt")
    assert row["verdict"] == expected and all("equal budget" in p["part"] for p in parts)


@pytest.mark.parametrize(("clean_gap", "expected"), [(0.0, R), (0.08, N)])
def test_o3_compares_the_gap_on_all_sentences_with_the_clean_subset_and_cr(clean_gap, expected):
    full = acc(shifted(["full"], 0.04))
    clean = acc(shifted(["full"], clean_gap), subset="clean_sst2", n=300)
    cr = acc(shifted(["full"], clean_gap), target="cr")
    row, parts = C.o3(ev(acc=pd.concat([full, clean, cr], ignore_index=True)))
    assert row["verdict"] == expected
    assert sum(p["in_verdict"] for p in parts) == 2


def test_p11_states_the_papers_counts_against_bert_base_arithmetic():
    row, parts = C.p11(ev())
    assert row["verdict"] == P  # ~110M agrees with 109,483,778; ~0.3M, ~0.9M and ~7M do not
    agree = {p["part"].split(":")[0]: p["verdict"] for p in parts}
    assert agree == {"lora_selective": N, "lora_all": N, "shallow": N, "full": R}
    assert "93,698" in parts[0]["part"] and "stated / exact = 3.20" in parts[0]["part"]


def test_p11_checks_our_counts_against_our_formula():
    cells = pd.DataFrame(
        [
            {
                "target": "rt",
                "regime": "over",
                "seed": 1,
                "strategy": "lora_all",
                "family": "lora_all",
                "trainable_parameters": 3 * 2 * 4 * 32 * 2 + 66,
                "lora_layers": [0, 1],
            }
        ]
    )
    _, parts = C.p11(ev(cells=cells))
    assert parts[-1]["verdict"] == R and not parts[-1]["in_verdict"]


def test_all_claims_has_one_row_per_claim_and_target():
    claims, parts = C.all_claims(ev(), ["rt", "cr"])
    assert list(claims.columns) == CLAIM_COLUMNS and list(parts.columns) == PART_COLUMNS
    assert list(claims["id"]) == [x for k in [f"P{i}" for i in range(1, 11)] for x in (k, k)] + [
        "P11",
        "O1",
        "O1",
        "O2",
        "O2",
        "O3",
    ]
    assert set(claims["verdict"]) <= {R, P, N, I}


# --- layer claims ---


def diag(flip: bool = False, steep_at: int = 5, L: int = 12) -> pd.DataFrame:
    """Source-model diagnostics: OVER's entropy 0.1 lower and its activation gradient dropping earlier and harder."""
    rows = []
    for seed, jitter in zip(SEEDS, (1.0, 1.02, 0.98)):
        for regime in ("under", "over"):
            over = (regime == "over") != flip
            h = 2.0 + 0.05 * np.abs(np.arange(L) - 5) - (0.1 * jitter if over else 0.0)
            g = np.ones(L)
            g[steep_at:] = 0.1 * jitter if over else 0.3
            g[steep_at + 1 :] *= 0.5
            key = {"target": "rt", "regime": regime, "seed": seed}
            rows += [
                {"layer": l, "metric": m, "value": v[l]} | key
                for l in range(L)
                for m, v in (("entropy", h), ("act_grad", g))
            ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("flip", "steep_at", "expected"), [(False, 5, R), (True, 1, N)])
def test_p5(flip, steep_at, expected):
    row, parts = CL.p5(ev(diagnose=diag(flip, steep_at)), "rt")
    assert row["verdict"] == expected, [(p["part"], p["verdict"]) for p in parts if p["in_verdict"]]


def test_p5_without_diagnostics_is_inconclusive():
    assert CL.p5(ev(), "rt")[0]["verdict"] == I


def layer_table(ratio_act: float, ratio_param_full: float) -> pd.DataFrame:
    rows = []
    for seed, j in zip(SEEDS, (1.0, 1.05, 0.95)):
        for s in ("shallow", "full"):
            for regime in ("under", "over"):
                f_act = ratio_act * j if regime == "over" else 1.0
                f_par = (ratio_act if s == "shallow" else ratio_param_full) * j if regime == "over" else 1.0
                for l in range(12):
                    rows += [
                        {
                            "layer": l,
                            "metric": "act_grad",
                            "value": 1e-4 * f_act,
                            "target": "rt",
                            "regime": regime,
                            "seed": seed,
                            "strategy": s,
                        },
                        {
                            "layer": l,
                            "metric": "param_grad",
                            "value": 1.0 * f_par,
                            "target": "rt",
                            "regime": regime,
                            "seed": seed,
                            "strategy": s,
                        },
                    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("act", "par", "expected"), [(0.05, 0.8, R), (20.0, 20.0, N)])
def test_p6_ratios_on_the_log_scale(act, par, expected):
    row, parts = CL.p6(ev(layers=layer_table(act, par)), "rt")
    assert row["verdict"] == expected
    assert parts[-1]["test"] == "equivalent (log ratio)"  # full param_grad: the paper calls 1.32 vs 1.67 comparable


def selection(bands: dict) -> pd.DataFrame:
    return pd.DataFrame([{"target": "rt", "regime": r, "seed": s, "band": b} for (r, s), b in bands.items()])


def test_p7():
    same = {(r, s): [4, 5, 6] for r in ("under", "over") for s in SEEDS}
    assert CL.p7(ev(selection=selection(same)), "rt")[0]["verdict"] == R
    other = {("under", s): [s, s + 1] for s in SEEDS} | {("over", s): [9, 10 + s] for s in SEEDS}
    assert CL.p7(ev(selection=selection(other)), "rt")[0]["verdict"] == N
    one = {(r, 1): [4, 5, 6] for r in ("under", "over")}
    assert (
        CL.p7(ev(selection=selection(one)), "rt")[0]["verdict"] == P
    )  # identical across regimes; across seeds unobservable


def p8_diag(argmin: int, g0: float) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for regime in ("under", "over"):
            h = 2.0 + 0.1 * np.abs(np.arange(12) - argmin)
            g = np.ones(12)
            g[0] = g0
            rows += [
                {"layer": l, "metric": m, "value": v, "target": "rt", "regime": regime, "seed": seed}
                for l in range(12)
                for m, v in (("entropy", h[l]), ("act_grad", g[l]))
            ]
    return pd.DataFrame(rows)


def test_p8_entropy_minimum_and_the_greedy_rule():
    row, parts = CL.p8(ev(diagnose=p8_diag(5, 0.1)), "rt")
    assert row["verdict"] == R, [(p["part"], p["verdict"]) for p in parts]
    assert CL.p8(ev(diagnose=p8_diag(10, 1.0)), "rt")[0]["verdict"] == N


def test_p8_maps_the_paper_layer_to_another_depth():
    d = p8_diag(5, 0.1)
    d = d[d["layer"] < 6].copy()
    d.loc[d["metric"] == "entropy", "value"] = 2.0 + 0.1 * np.abs(d.loc[d["metric"] == "entropy", "layer"] - 2)
    parts = CL.p8(ev(diagnose=d, num_layers=6), "rt")[1]
    assert parts[0]["verdict"] == R and "[2]" in parts[0]["part"]  # layer 5 of 12 is layer 2 of 6


def probes(good: bool) -> pd.DataFrame:
    rows = []
    for seed, j in zip(SEEDS, (0.0, 0.01, -0.01)):
        for regime in ("under", "over"):
            for l in range(12):
                if good:  # rises to the top, OVER ahead in the upper layers
                    lin = 0.5 + 0.3 * l / 11 + (0.08 * l / 11 if regime == "over" else 0) + j
                else:  # peaks at the bottom, OVER behind, most in the upper layers
                    lin = 0.8 - 0.3 * l / 11 - ((0.1 if l > 6 else 0.02) if regime == "over" else 0) + j
                rows += [
                    {
                        "layer": l,
                        "metric": "linear",
                        "value": lin,
                        "target": "rt",
                        "regime": regime,
                        "seed": seed,
                        "strategy": "shallow",
                    },
                    {
                        "layer": l,
                        "metric": "linear_shuffled",
                        "value": 0.5 if good else 0.95,
                        "target": "rt",
                        "regime": regime,
                        "seed": seed,
                        "strategy": "shallow",
                    },
                ]
    return pd.DataFrame(rows)


def test_p9():
    row, parts = CL.p9(ev(probes=probes(True)), "rt")
    assert row["verdict"] == R, [(p["part"], p["verdict"]) for p in parts]
    assert CL.p9(ev(probes=probes(False)), "rt")[0]["verdict"] == N


def cka(good: bool) -> pd.DataFrame:
    rows = []
    for seed, j in zip(SEEDS, (1.0, 1.1, 0.9)):
        for regime in ("under", "over"):
            for l in range(12):
                full = (0.035 if l > 6 else 0.005) * j if good else (0.5 if l <= 6 else 0.1) * j
                shallow = (0.005 * j if l >= 10 else 0.0) if good else 0.2 * j
                rows += [
                    {
                        "layer": l,
                        "metric": "delta_cka",
                        "value": v,
                        "target": "rt",
                        "regime": regime,
                        "seed": seed,
                        "strategy": s,
                    }
                    for s, v in (("full", full), ("shallow", shallow))
                ]
    return pd.DataFrame(rows)


def test_p10():
    row, parts = CL.p10(ev(cka=cka(True)), "rt")
    assert row["verdict"] == R, [(p["part"], p["verdict"]) for p in parts]
    assert CL.p10(ev(cka=cka(False)), "rt")[0]["verdict"] == N
    assert CL.p10(ev(), "rt")[0]["verdict"] == I
