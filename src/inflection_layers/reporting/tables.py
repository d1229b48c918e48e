"""The report's tables, pure over DataFrames: per-seed accuracy per evaluation set, the paired comparisons,
Table 1, parameter counts, the overlap audit, timing; and, from
:mod:`~inflection_layers.reporting.selection_tables`, the selection ablation, the bands of every selector and the
band under each gradient measure.

An *evaluation set* is a split (validation, test) and a subset of its sentences: ``all``, or a clean subset
of the audit (``clean_source``: not in the source models' SST-2 sample; ``clean_sst2``: not in SST-2 at
all; ``clean_phrase``: not covered by SST-2's phrases). Accuracies are fractions of 1 except in Table 1 and
audit.csv, which are in percent like the paper.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from inflection_layers.cells import EVAL_SPLITS, LORA_STRATEGIES, draw, family
from inflection_layers.reporting.claims_base import SEL
from inflection_layers.reporting.paper import PAPER_TARGET, Paper, bert_base_parameters, lora_parameters
from inflection_layers.reporting.selection_tables import bands_table as bands_table
from inflection_layers.reporting.selection_tables import measure_sensitivity as measure_sensitivity
from inflection_layers.reporting.selection_tables import selection_ablation as selection_ablation
from inflection_layers.reporting.stats import compare_arms, holm, seed_interval

SUBSETS = {"clean_source": "in_source", "clean_sst2": "in_sst2", "clean_phrase": "phrase_covered"}


def eval_sets(examples: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(split, subset) -> boolean mask (N,) over a target's examples (id, split and the audit's flags)."""
    out = {}
    for split in [s for s in EVAL_SPLITS if s in set(examples["split"])]:
        in_split = examples["split"].eq(split).to_numpy()
        out[(split, "all")] = in_split
        for subset, flag in SUBSETS.items():
            if flag in examples:
                mask = in_split & ~examples[flag].fillna(True).astype(bool).to_numpy()  # unknown: not clean
                if mask.any():
                    out[(split, subset)] = mask
    return out


def accuracy_table(targets: dict[str, tuple[pd.DataFrame, dict]]) -> pd.DataFrame:
    """Per cell and evaluation set: n and accuracy; plus per (target, regime, seed, set) a ``lora_random`` row, the
    mean over the draws. targets: target -> (examples, {(regime, seed, strategy): correct (N,) bool})."""
    rows = []
    for target, (examples, correct) in targets.items():
        for (split, subset), mask in eval_sets(examples).items():
            for (regime, seed, strategy), right in correct.items():
                rows.append(
                    {
                        "target": target,
                        "regime": regime,
                        "seed": seed,
                        "strategy": strategy,
                        "family": family(strategy),
                        "split": split,
                        "subset": subset,
                        "n": int(mask.sum()),
                        "accuracy": float(right[mask].mean()),
                    }
                )
    acc = pd.DataFrame(
        rows, columns=["target", "regime", "seed", "strategy", "family", "split", "subset", "n", "accuracy"]
    )
    draws = acc[acc["family"] == "lora_random"]
    if len(draws):
        mean = draws.groupby(["target", "regime", "seed", "split", "subset", "n"], as_index=False)["accuracy"].mean()
        acc = pd.concat(
            [acc, mean.assign(strategy="lora_random", family="lora_random")[acc.columns]], ignore_index=True
        )
    return acc


def comparison_pairs(strategies: dict[str, list[str]]) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    """(family, A, B) of every comparison: selective vs every other strategy (per regime), lora_all vs shallow,
    over vs under per strategy, every strategy vs none. A random draw is compared with selective only."""
    out, seen = [], set()

    def add(fam: str, a: tuple[str, str], b: tuple[str, str]) -> None:
        if a[1] in strategies.get(a[0], []) and b[1] in strategies.get(b[0], []) and (a, b) not in seen and a != b:
            seen.add((a, b))
            out.append((fam, a, b))

    for r, ss in strategies.items():
        for s in ss:
            add("selective_vs_other", (r, SEL), (r, s))
        add("lora_all_vs_shallow", (r, "lora_all"), (r, "shallow"))
    for s in dict.fromkeys(itertools.chain(*strategies.values())):
        if draw(s) is None:
            add("over_vs_under", ("over", s), ("under", s))
    for r, ss in strategies.items():
        for s in ss:
            if draw(s) is None:
                add("vs_none", (r, s), (r, "none"))
    return out


def comparisons(targets: dict[str, tuple[pd.DataFrame, dict]], rep) -> pd.DataFrame:
    """compare_arms for every pair x target x evaluation set (seeds present in both arms); Holm over each
    target x evaluation set's family of seed-level t-test p-values."""
    rows = []
    for target, (examples, correct) in targets.items():
        strategies: dict[str, list[str]] = {}
        for regime, _, strategy in correct:
            strategies.setdefault(regime, [])
            if strategy not in strategies[regime]:
                strategies[regime].append(strategy)
        sets = eval_sets(examples)
        for (split, subset), mask in sets.items():
            if subset != "all" and mask.sum() >= sets[(split, "all")].sum():
                continue  # the clean subset is every sentence: nothing to add
            for fam, (ra, sa), (rb, sb) in comparison_pairs(strategies):
                seeds = sorted(
                    {s for (r, s, x) in correct if r == ra and x == sa}
                    & {s for (r, s, x) in correct if r == rb and x == sb}
                )
                if not seeds:
                    continue
                a = np.stack([correct[(ra, s, sa)][mask] for s in seeds])
                b = np.stack([correct[(rb, s, sb)][mask] for s in seeds])
                c = compare_arms(a, b, n_boot=rep.bootstrap, confidence=rep.confidence, seed=rep.seed)
                c.pop("diffs")
                rows.append(
                    {
                        "target": target,
                        "split": split,
                        "subset": subset,
                        "family": fam,
                        "a": f"{ra}/{sa}",
                        "b": f"{rb}/{sb}",
                        "seeds": ";".join(map(str, seeds)),
                        **c,
                    }
                )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["p_holm"], df["reject_holm"] = np.nan, False
    for _, idx in df.groupby(["target", "split", "subset"]).groups.items():
        reject, adjusted = holm(df.loc[idx, "p"].to_numpy(), rep.alpha)
        df.loc[idx, "p_holm"], df.loc[idx, "reject_holm"] = adjusted, reject
    return df


def params_text(lo: int, hi: int) -> str:
    """Exact counts as integers: '28,418' or '28,418-46,850'."""
    return f"{int(lo):,}" if lo == hi else f"{int(lo):,}-{int(hi):,}"


def arm_accuracy(a: pd.DataFrame, confidence: float) -> dict:
    """Table 1's columns of one arm per evaluation set: n and accuracy (percent) mean, std and t-interval over seeds."""
    row = {}
    for (split, subset), g in a.groupby(["split", "subset"], sort=False):
        si = seed_interval(g.sort_values("seed")["accuracy"].to_numpy(), confidence)
        key = f"{split}_{subset}"
        row |= {
            f"{key}_n": int(g["n"].max()),
            f"{key}_mean": 100 * si["mean"],
            f"{key}_std": 100 * si["sd"],
            f"{key}_ci_low": 100 * si["low"],
            f"{key}_ci_high": 100 * si["high"],
        }
    return row


def draws_spread(acc: pd.DataFrame, target: str, regime: str, fam: str, split: str) -> dict:
    """Table 1's columns of a family's random draws on a split, all sentences: how many, lowest and highest (%)."""
    d = acc[
        (acc["target"] == target)
        & (acc["regime"] == regime)
        & (acc["family"] == fam)
        & (acc["strategy"] != fam)
        & (acc["split"] == split)
        & (acc["subset"] == "all")
    ]
    if not len(d):
        return {}
    per_draw = d.groupby("strategy")["accuracy"].mean()
    return {"draws": len(per_draw), "draws_min": 100 * per_draw.min(), "draws_max": 100 * per_draw.max()}


def cell_parameters(cells: pd.DataFrame, target: str, regime: str, fam: str) -> dict:
    """Table 1's columns of an arm's exact trainable parameters over its cells: lowest, highest, as text."""
    c = cells[(cells["target"] == target) & (cells["regime"] == regime) & (cells["family"] == fam)]
    if not len(c):
        return {}
    lo, hi = int(c["trainable_parameters"].min()), int(c["trainable_parameters"].max())
    return {"params_min": lo, "params_max": hi, "params": params_text(lo, hi)}


def paper_columns(paper: Paper, params: Any, target: str, regime: str, fam: str) -> dict:
    """Table 1's paper columns: its accuracy (%, its target only), stated count and bert-base's exact counts."""
    row = {}
    if target == PAPER_TARGET:
        m, s = paper.accuracy(regime, fam)
        row |= {
            "paper_mean": None if m is None else 100 * m,
            "paper_std": None if s is None else 100 * s,
            "paper": "" if m is None else f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}"),
        }
    stated = paper.stated_parameters(fam)
    rank, k = params.lora.rank, params.finetune.shallow_k
    exact = [
        bert_base_parameters(fam, rank, len(params.lora.targets), k, paper.band(), pooler=pool)
        for pool in (False, True)
    ]
    return row | {
        "paper_params_stated": stated,
        "bert_base_params": exact[0],
        "bert_base_params_pooler": exact[1] if fam == "shallow" else None,
    }


def table1(acc: pd.DataFrame, cells: pd.DataFrame, paper: Paper, params, confidence: float) -> pd.DataFrame:
    """Per target x regime x strategy family: accuracy (percent) mean, std and t-interval over seeds per evaluation
    set; the random draws' spread; exact trainable parameters; the paper's mean +- std and counts beside ours."""
    rows = []
    fams = [f for f in dict.fromkeys(acc["family"]) if f]
    for target, regime, fam in itertools.product(dict.fromkeys(acc["target"]), ("under", "over"), fams):
        a = acc[(acc["target"] == target) & (acc["regime"] == regime) & (acc["strategy"] == fam)]
        if a.empty:
            continue
        row = {"target": target, "regime": regime, "strategy": fam, "n_seeds": a["seed"].nunique()}
        row |= arm_accuracy(a, confidence)
        row |= draws_spread(acc, target, regime, fam, a["split"].iloc[0])
        row |= cell_parameters(cells, target, regime, fam)
        rows.append(row | paper_columns(paper, params, target, regime, fam))
    return pd.DataFrame(rows)


def infer_width(cells: pd.DataFrame, rank: int, targets: int, labels: int = 2) -> int | None:
    """The encoder's width from exact counts: two LoRA cells with different numbers of layers differ by
    targets x 2 x rank x width per layer, whatever the head; else a BERT head-only cell (width x labels + labels)."""
    if len(cells) and "adapted_layers" in cells:
        lora = cells[cells["family"].isin(LORA_STRATEGIES)]
        sizes = {
            len(x): int(p)
            for x, p in zip(lora["adapted_layers"], lora["trainable_parameters"], strict=True)
            if isinstance(x, (list, tuple, np.ndarray))
        }
        if len(sizes) >= 2:
            (n1, p1), (n2, p2) = sorted(sizes.items())[:2]
            step = targets * 2 * rank * (n2 - n1)
            if (p2 - p1) % step == 0:
                return (p2 - p1) // step
    head = cells.loc[cells["family"] == "head", "trainable_parameters"] if len(cells) else []
    if len(head) and (int(head.iloc[0]) - labels) % labels == 0:
        return (int(head.iloc[0]) - labels) // labels
    return None


def parameters_table(cells: pd.DataFrame, paper: Paper, params, width: int | None) -> pd.DataFrame:
    """Per strategy family: our exact counts (min, max), the LoRA formula for our model, the paper's stated count,
    the exact arithmetic for bert-base (shallow with and without the pooler) and the paper's own note."""
    rank, t, k = params.lora.rank, len(params.lora.targets), params.finetune.shallow_k
    heads = cells.loc[cells["family"] == "head", "trainable_parameters"] if len(cells) else []
    head = (
        int(heads.iloc[0]) if len(heads) else 2 * (width or 0) + 2
    )  # the head cell's exact count (BERT: 2 w + 2; MPNet: w^2 + 3 w + 2)
    rows = []
    for fam, c in cells.groupby("family", sort=False):
        row = {
            "strategy": fam,
            "ours_min": int(c["trainable_parameters"].min()),
            "ours_max": int(c["trainable_parameters"].max()),
        }
        if fam in LORA_STRATEGIES and width:
            expected = [lora_parameters(rank, width, len(x), t) + head for x in c["adapted_layers"]]
            row |= {
                "formula": f"{t} x 2 x {rank} x {width} x layers + {head:,} (the head)",
                "formula_matches": bool(
                    all(int(a) == b for a, b in zip(c["trainable_parameters"], expected, strict=False))
                ),
            }
        row |= {
            "paper_stated": paper.stated_parameters(fam),
            "bert_base_exact": bert_base_parameters(fam, rank, t, k, paper.band(), pooler=fam != "shallow"),
            "bert_base_exact_with_pooler": bert_base_parameters(fam, rank, t, k, paper.band())
            if fam == "shallow"
            else None,
            "paper_note": paper.note("trainable_parameters_stated", strategy=fam),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def audit_table(acc: pd.DataFrame, data: dict) -> pd.DataFrame:
    """Per target, split and subset: size, the audit's counts (metrics/data.json) and mean accuracy over seeds
    (percent) per regime x strategy family."""
    fam = acc[acc["strategy"] == acc["family"]]
    out = fam.groupby(["target", "split", "subset", "n", "regime", "strategy"], as_index=False, sort=False).agg(
        accuracy=("accuracy", "mean"), n_seeds=("seed", "nunique")
    )
    out["accuracy"] *= 100
    audit = data.get("audit", {})
    for key in ("n", "in_source", "in_sst2", "phrase_covered"):
        out[f"split_{key}"] = [
            audit.get(t, {}).get(s, {}).get(key) for t, s in zip(out["target"], out["split"], strict=False)
        ]
    return out


def timing_table(records: dict[str, list[dict]]) -> pd.DataFrame:
    """Per stage: matrix items, summed wall seconds and the estimate the stages recorded before they ran (where every
    item has one), share of the total, tokens/s (summed tokens over summed time where tokens are recorded, else the
    items' mean rate). records: stage -> [{wall_seconds, estimated_seconds?, tokens?, tokens_per_second?}]."""
    rows = []
    for stage, items in records.items():
        walls = [float(x["wall_seconds"]) for x in items if x.get("wall_seconds") is not None]
        if not walls:
            continue
        estimates = [x.get("estimated_seconds") for x in items]
        tokens = [float(x["tokens"]) for x in items if x.get("tokens") is not None]
        rates = [float(x["tokens_per_second"]) for x in items if x.get("tokens_per_second") is not None]
        tps = sum(tokens) / sum(walls) if tokens and sum(walls) > 0 else (float(np.mean(rates)) if rates else np.nan)
        estimate = sum(estimates) if estimates and all(e is not None for e in estimates) else np.nan
        rows.append(
            {
                "stage": stage,
                "items": len(walls),
                "wall_seconds": sum(walls),
                "estimated_seconds": estimate,
                "tokens_per_second": tps,
            }
        )
    df = pd.DataFrame(rows, columns=["stage", "items", "wall_seconds", "estimated_seconds", "tokens_per_second"])
    total = df["wall_seconds"].sum()
    df["share"] = df["wall_seconds"] / total if total > 0 else np.nan
    return df
