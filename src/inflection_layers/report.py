"""Stage `report`: every cell of the study aggregated into Table 1, paired tests, claims with verdicts, figures and a report.

Reads the per-cell metrics, saved predictions and per-layer tables of the earlier stages and writes
(all under ``--out``, replaced as one folder) ``table1.csv``, ``comparisons.csv``, ``claims.csv``,
``parameters.csv``, one PNG and one CSV per figure, and ``report.md``; plus ``--summary``, the
study's one top-level metrics file. Statistics (``params.report``):

- per regime x strategy: mean, std and a t-interval over seeds of every accuracy;
- per pair of cells and evaluation set: the accuracy difference averaged over seeds, a paired
  bootstrap over examples (the same resampled indices for both sides and every seed), an exact
  McNemar test per seed, combined over seeds by Stouffer's method on signed one-sided p-values,
  and Holm's correction over the whole family of tests;
- claims get a verdict by the rule of :func:`verdict`.
Everything is a pure function of the inputs: no timings, no hard-coded results.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from io import StringIO
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402

from inflection_layers.artifacts import atomic_path, read_parquet, write_csv, write_json  # noqa: E402
from inflection_layers.config import STRATEGIES, Params, load_params  # noqa: E402

logger = logging.getLogger(__name__)

# Accuracy columns of metrics/finetune/<cell>.json, by their short name in the tables.
ACCURACIES = {
    "val": "validation_accuracy",
    "val_free": "validation_free_accuracy",
    "test": "test_accuracy",
    "test_free": "test_free_accuracy",
}
EVAL_SETS = {"validation": "RT validation", "validation_free": "RT validation, overlap-free"}
DPI = 130  # of every PNG
MARGIN = 0.01  # smallest effect of interest: 1 accuracy point (a fraction of 1)
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

# What arXiv 2511.00797 states about its own setup (as quoted in README.md): reference, not results.
PAPER_SETUP = {
    "model": "bert-base-uncased (12 layers, width 768)",
    "sst2_examples": 67_349,
    "source_lr": 2e-5,
    "epochs": (1, 8),
    "steps": 300,
    "lr": 2e-5,
    "batch_size": 16,
    "lora": "r 4, alpha 16, dropout 0.05 on query, key, value",
    "probe_sizes": (4_000, 2_000),
}
PAPER_LORA = {"rank": 4, "width": 768, "layers": 5, "targets": 3, "stated": "0.3M", "stated_value": 300_000}

REGIME_COLORS = {"under": "tab:blue", "over": "tab:red"}
STRATEGY_COLORS = dict(zip(STRATEGIES, plt.get_cmap("tab10").colors))


class Pair(NamedTuple):
    """One paired comparison: cell A = (regime_a, strategy_a) against cell B, seed by seed."""

    family: str
    regime_a: str
    strategy_a: str
    regime_b: str
    strategy_b: str


# --- reading ---


def cell_name(regime: str, strategy: str, seed: int) -> str:
    """The folder / file stem of a cell, e.g. 'over-lora_all-42'."""
    return f"{regime}-{strategy}-{seed}"


def cell_file(roots: list[Path], regime: str, strategy: str, seed: int, suffix: str) -> Path:
    """One cell's file <root>/<regime>-<seed>/<strategy><suffix> in whichever of `roots` holds it (`finetune` and `finetune_lora` write to their own roots).

    suffix: '.json' (metrics), '-layers.csv' (plots), '/predictions.parquet' (models).
    """
    candidates = [Path(root) / f"{regime}-{seed}" / f"{strategy}{suffix}" for root in roots]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"cell {cell_name(regime, strategy, seed)}: none of {[str(c) for c in candidates]} exists; "
                            "run `dvc repro finetune finetune_lora` first")


def read_finetune_metrics(roots: list[Path], cells: list[tuple[str, str, int]]) -> pd.DataFrame:
    """One row per cell from its metrics JSON (regime, strategy, seed, accuracies, trainable_parameters, lora_layers)."""
    rows = [pd.read_json(cell_file(roots, *c, ".json"), typ="series") for c in cells]
    df = pd.DataFrame(rows).reset_index(drop=True)
    df["seed"] = df["seed"].astype(int)
    df["trainable_parameters"] = df["trainable_parameters"].astype(int)
    return df


def read_tidy(paths: list[Path]) -> pd.DataFrame:
    """Concatenate tidy per-layer CSVs (layer, metric, value, ...); files with a header only add nothing."""
    frames = [pd.read_csv(p) for p in paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", "metric", "value"])


def read_paper_table(path: Path | None) -> tuple[pd.DataFrame | None, str]:
    """The paper's Table 1 (regime, strategy, accuracy, accuracy_std, trainable_parameters_stated, note) and its `# source:` line.

    Returns (None, reason) when the file is absent.
    """
    if path is None:
        return None, "no --paper file was given"
    if not Path(path).is_file():
        return None, (f"`{path}` does not exist: the paper's Table 1 could not be read where this study was built (no network; "
                      "the stored copies of arXiv 2511.00797 hold only its abstract). Transcribe it there (columns regime, strategy, "
                      "accuracy, accuracy_std, trainable_parameters_stated, note), add the file to the `report` stage's deps and rerun `dvc repro report`")
    lines = Path(path).read_text().splitlines()
    source = " ".join(line.lstrip("#").strip().removeprefix("source:").strip() for line in lines if line.startswith("#"))
    body = "\n".join(line for line in lines if not line.startswith("#"))
    paper = pd.read_csv(StringIO(body), dtype={"regime": str, "strategy": str})
    need = {"regime", "strategy", "accuracy"}
    if not need <= set(paper.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)} at least, found {list(paper.columns)}")
    return paper, source


# --- Table 1 ---


def t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """Mean, sample std (ddof 1) and the two-sided t-interval (low, high) of the mean of values (n,); nan where n < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return mean, std, mean - half, mean + half


def table1(metrics: pd.DataFrame, confidence: float, regimes: list[str], strategies: list[str]) -> pd.DataFrame:
    """Per regime x strategy: n_seeds, {val,val_free,test,test_free}_{mean,std,ci_low,ci_high}, params_{min,max,mean}."""
    rows = []
    for regime, strategy in itertools.product(regimes, strategies):
        g = metrics[(metrics["regime"] == regime) & (metrics["strategy"] == strategy)]
        if g.empty:
            continue
        row: dict = {"regime": regime, "strategy": strategy, "n_seeds": len(g)}
        for key, col in ACCURACIES.items():  # test columns only where finetune.eval_splits holds rt_test
            mean, std, lo, hi = t_interval(g[col].to_numpy(), confidence) if col in g else (math.nan,) * 4
            row |= {f"{key}_mean": mean, f"{key}_std": std, f"{key}_ci_low": lo, f"{key}_ci_high": hi}
        p = g["trainable_parameters"].astype(int)
        row |= {"params_min": int(p.min()), "params_max": int(p.max()), "params_mean": float(p.mean())}
        rows.append(row)
    return pd.DataFrame(rows)


def as_fraction(x: float) -> float:
    """A paper accuracy as a fraction of 1 (values above 1 are read as percent)."""
    return x / 100.0 if x > 1.0 else x


def with_paper(table: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Table 1 with the paper's columns beside it: paper_accuracy, paper_accuracy_std (fractions), paper_params_stated, paper_note; 'n/a' where absent."""
    out = table.copy()
    cols = ["paper_accuracy", "paper_accuracy_std", "paper_params_stated", "paper_note"]
    if paper is None:
        for c in cols:
            out[c] = "n/a"
        return out
    p = paper.copy()
    for c in ("accuracy", "accuracy_std"):
        if c in p:
            p[c] = pd.to_numeric(p[c], errors="coerce")
    p["paper_accuracy"] = p["accuracy"].map(lambda x: as_fraction(x) if pd.notna(x) else x)
    p["paper_accuracy_std"] = p.get("accuracy_std", pd.Series(np.nan, index=p.index)) / np.where(p["accuracy"] > 1.0, 100.0, 1.0)
    p["paper_params_stated"] = p.get("trainable_parameters_stated", pd.Series("n/a", index=p.index))
    p["paper_note"] = p.get("note", pd.Series("", index=p.index))
    out = out.merge(p[["regime", "strategy", *cols]], on=["regime", "strategy"], how="left")
    for c in cols:
        out[c] = out[c].astype(object).where(out[c].notna(), "n/a")
    return out


# --- parameter arithmetic ---


def lora_parameters(rank: int, width: int, layers: int, targets: int = 3) -> int:
    """Trainable parameters LoRA adds: per adapted (width x width) module A (rank x width) + B (width x rank), no bias.

    ``targets * 2 * rank * width * layers``: query, key, value (3) of BERT-base (768) at r = 4 give 18,432 per layer.
    """
    for name, v in (("rank", rank), ("width", width), ("layers", layers), ("targets", targets)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    return targets * 2 * rank * width * layers


def parameter_audit(metrics: pd.DataFrame, rank: int, targets: int, num_labels: int = 2) -> pd.DataFrame:
    """Per LoRA cell: band size, expected = LoRA formula + classifier, measured, and whether they match exactly.

    The classifier's size and the model width come from the `head` cells (classifier = width * labels + labels);
    with no `head` cell the expected count is left empty.
    """
    head = metrics.loc[metrics["strategy"] == "head", "trainable_parameters"].unique()
    classifier = int(head[0]) if len(head) == 1 else None
    width = (classifier - num_labels) // num_labels if classifier is not None else None
    rows = []
    for r in metrics[metrics["strategy"].str.startswith("lora")].itertuples():
        layers = len(r.lora_layers) if isinstance(r.lora_layers, list) else 0
        expected = lora_parameters(rank, width, layers, targets) + classifier if width is not None else None
        rows.append({
            "regime": r.regime, "strategy": r.strategy, "seed": r.seed, "lora_layers": " ".join(map(str, r.lora_layers)),
            "band_size": layers, "width": width, "lora_parameters": None if width is None else lora_parameters(rank, width, layers, targets),
            "classifier_parameters": classifier, "expected": expected, "measured": int(r.trainable_parameters),
            "match": expected == int(r.trainable_parameters) if expected is not None else None,
        })
    return pd.DataFrame(rows)


# --- paired statistics on saved predictions ---


def read_correctness(roots: list[Path], cells: list[tuple[str, str, int]]) -> tuple[dict[tuple[str, str, int], np.ndarray], pd.DataFrame]:
    """Per cell a boolean (N,) 'prediction right' over its predictions.parquet, and the shared examples (id, split, overlap_free).

    Every cell must hold the same ids in the same order (pairing is by position).
    """
    paths = [cell_file(roots, *c, "/predictions.parquet") for c in cells]
    correct, examples = {}, None
    for cell, path in zip(cells, paths):
        df = read_parquet(path, columns=["id", "split", "label", "pred", "overlap_free"])
        if examples is None:
            examples = df[["id", "split", "overlap_free"]].reset_index(drop=True)
        elif not np.array_equal(df["id"].to_numpy(), examples["id"].to_numpy()):
            raise ValueError(f"{path}: example ids differ from {paths[0]}; cells cannot be paired")
        correct[cell] = df["pred"].to_numpy() == df["label"].to_numpy()
    return correct, examples


def eval_masks(examples: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean (N,) masks of the evaluation sets: RT validation and its overlap-free part."""
    val = examples["split"].eq("rt_validation").to_numpy()
    return {"validation": val, "validation_free": val & examples["overlap_free"].to_numpy(dtype=bool)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Accuracy difference mean(a - b) and its percentile bootstrap interval; a, b (S, N) 0/1, seeds x examples.

    Each resample draws N example indices with replacement and applies them to both sides and every
    seed at once, so the pairing by example (and by seed) is kept.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"a and b must be non-empty (S, N) arrays of one shape, got {a.shape} and {b.shape}")
    d = (a - b).mean(axis=0)  # (N,) per-example difference, averaged over seeds
    boots = np.empty(n_boot)
    for i in range(0, n_boot, 500):  # chunks of (500, N) indices
        idx = rng.integers(0, d.size, size=(min(500, n_boot - i), d.size))
        boots[i : i + len(idx)] = d[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(d.mean()), float(lo), float(hi)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of one seed: (n_a_only, n_b_only, two-sided p) for boolean 'right' arrays a, b (N,); p = 1 without discordant pairs."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n_ab, n_ba = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n_ab + n_ba == 0:
        return n_ab, n_ba, 1.0
    table = [[int(np.sum(a & b)), n_ab], [n_ba, int(np.sum(~a & ~b))]]
    return n_ab, n_ba, float(mcnemar(table, exact=True).pvalue)


def combine_seeds(pvalues: list[float], n_ab: list[int], n_ba: list[int]) -> float:
    """Two-sided p of Stouffer's method over seeds: each exact two-sided p is made one-sided towards 'A better'
    (p/2 when A wins more discordant pairs, 1 - p/2 when B does, 1/2 on a tie), combined with
    scipy.stats.combine_pvalues(method="stouffer"), and the result made two-sided again.
    """
    p, ab, ba = np.asarray(pvalues, dtype=float), np.asarray(n_ab), np.asarray(n_ba)
    one = np.where(ab > ba, p / 2, np.where(ab < ba, 1 - p / 2, 0.5))
    one = np.clip(one, 1e-300, 1 - 1e-16)
    _, pc = stats.combine_pvalues(one, method="stouffer")
    return float(min(1.0, 2 * min(pc, 1 - pc)))


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h between two proportions: 2 asin sqrt(p1) - 2 asin sqrt(p2)."""
    return float(2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2)))


def discordant_odds_ratio(n_ab: int, n_ba: int) -> float:
    """Odds ratio of discordant pairs n_ab / n_ba (A right and B wrong vs the reverse); 0.5 added to both when either is 0."""
    if n_ab == 0 or n_ba == 0:
        return (n_ab + 0.5) / (n_ba + 0.5)
    return n_ab / n_ba


def compare(a: np.ndarray, b: np.ndarray, n_boot: int, confidence: float, seed: int) -> dict:
    """Every statistic of one comparison of 'right' arrays a, b (S, N): accuracies, difference, bootstrap CI, McNemar per seed and combined, effect sizes."""
    a, b = np.atleast_2d(a).astype(bool), np.atleast_2d(b).astype(bool)
    diff, lo, hi = paired_bootstrap(a, b, n_boot, confidence, np.random.default_rng(seed))
    tests = [mcnemar_exact(x, y) for x, y in zip(a, b)]
    n_ab, n_ba, ps = [t[0] for t in tests], [t[1] for t in tests], [t[2] for t in tests]
    acc_a, acc_b = float(a.mean()), float(b.mean())
    return {
        "n_seeds": a.shape[0], "n_examples": a.shape[1], "acc_a": acc_a, "acc_b": acc_b,
        "diff": diff, "diff_points": 100 * diff, "ci_low": lo, "ci_high": hi,
        "n_a_only": int(sum(n_ab)), "n_b_only": int(sum(n_ba)), "discordant_share": float(np.mean(a != b)),
        "p_seeds": ";".join(f"{p:.4g}" for p in ps), "p_combined": combine_seeds(ps, n_ab, n_ba),
        "cohens_h": cohens_h(acc_a, acc_b), "discordant_odds_ratio": discordant_odds_ratio(sum(n_ab), sum(n_ba)),
    }


def comparison_pairs(regimes: list[str], strategies: list[str]) -> list[Pair]:
    """The family of comparisons behind the claims: selective LoRA vs lora_all, shallow, full and lora_random (per regime);
    over vs under (per strategy); every strategy vs none (per regime). Pairs whose cells are not in the study are left out."""
    pairs: list[Pair] = []

    def add(pair: Pair) -> None:
        cells_in = {pair.regime_a, pair.regime_b} <= set(regimes) and {pair.strategy_a, pair.strategy_b} <= set(strategies)
        if cells_in and pair not in pairs:
            pairs.append(pair)

    for regime in regimes:
        for other in ("lora_all", "shallow", "full", "lora_random"):
            add(Pair(f"lora_selective_vs_{other}", regime, "lora_selective", regime, other))
    for strategy in strategies:
        add(Pair("over_vs_under", "over", strategy, "under", strategy))
    for regime in regimes:
        for strategy in strategies:
            if strategy != "none":
                add(Pair("vs_none", regime, strategy, regime, "none"))
    return pairs


def stack(correct: dict[tuple[str, str, int], np.ndarray], regime: str, strategy: str, seeds: list[int], mask: np.ndarray) -> np.ndarray:
    """The (S, n) 'right' array of one regime x strategy over seeds, restricted to `mask` (N,)."""
    return np.stack([correct[(regime, strategy, s)][mask] for s in seeds])


def comparisons(
    correct: dict[tuple[str, str, int], np.ndarray], masks: dict[str, np.ndarray], pairs: list[Pair], seeds: list[int],
    n_boot: int, confidence: float, alpha: float, seed: int,
) -> pd.DataFrame:
    """One row per pair x evaluation set with :func:`compare`'s statistics, plus Holm-adjusted p over all rows (p_holm, significant).

    Every bootstrap uses a generator seeded with `seed`, so a row does not depend on which other rows are in the family.
    """
    rows = []
    for pair, (eval_set, mask) in itertools.product(pairs, masks.items()):
        a, b = stack(correct, pair.regime_a, pair.strategy_a, seeds, mask), stack(correct, pair.regime_b, pair.strategy_b, seeds, mask)
        rows.append({**pair._asdict(), "a": f"{pair.regime_a}/{pair.strategy_a}", "b": f"{pair.regime_b}/{pair.strategy_b}",
                     "eval_set": eval_set, **compare(a, b, n_boot, confidence, seed)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    reject, p_holm, _, _ = multipletests(df["p_combined"].to_numpy(), alpha=alpha, method="holm")
    df["p_holm"], df["significant"] = p_holm, reject
    return df


# --- claims and verdicts ---


def verdict(kind: str, ci_low: float, ci_high: float, p_holm: float, alpha: float, margin: float = MARGIN) -> str:
    """The decision rule for a claim 'A > B' (kind '>') or 'A >= B' (kind '>=') on the difference A - B.

    '>':  supported when the CI lies above 0 and Holm-adjusted p < alpha; not supported when the CI
          lies below +margin (a gain of `margin` or more is excluded); otherwise inconclusive.
    '>=': supported when the CI lies above -margin (A is not worse by `margin` or more: non-inferiority);
          not supported when the CI lies below 0 and Holm-adjusted p < alpha (A is significantly worse);
          otherwise inconclusive.
    """
    if kind == ">":
        if ci_low > 0 and p_holm < alpha:
            return SUPPORTED
        return NOT_SUPPORTED if ci_high < margin else INCONCLUSIVE
    if kind == ">=":
        if ci_low > -margin:
            return SUPPORTED
        return NOT_SUPPORTED if ci_high < 0 and p_holm < alpha else INCONCLUSIVE
    raise ValueError(f"unknown claim kind {kind!r}; expected '>' or '>='")


def overall(verdicts: list[str]) -> str:
    """A claim made of parts: supported when every part is, not supported when any part is not, else inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return NOT_SUPPORTED if NOT_SUPPORTED in verdicts else INCONCLUSIVE


def accuracy_claims(regimes: list[str], strategies: list[str]) -> list[dict]:
    """The paper's accuracy claims as (id, statement, kind, parts); each part is a Pair of :func:`comparison_pairs`."""
    sel = "lora_selective"
    claims = [
        {"id": "a_over_gt_under", "statement": "an over-trained source adapts better than an under-trained one (over > under)", "kind": ">",
         "parts": [Pair("over_vs_under", "over", s, "under", s) for s in ("full", "shallow", sel)]},
        {"id": "b_selective_ge_lora_all", "statement": "selective LoRA is at least as good as LoRA on every layer", "kind": ">=",
         "parts": [Pair("lora_selective_vs_lora_all", r, sel, r, "lora_all") for r in regimes]},
        {"id": "c_selective_ge_shallow_full", "statement": "selective LoRA is at least as good as shallow and as full fine-tuning", "kind": ">=",
         "parts": [Pair(f"lora_selective_vs_{o}", r, sel, r, o) for o in ("shallow", "full") for r in regimes]},
        {"id": "f_selective_gt_random", "statement": "the SKI band beats a random band of the same size (control)", "kind": ">",
         "parts": [Pair("lora_selective_vs_lora_random", r, sel, r, "lora_random") for r in regimes]},
    ]
    ok = set(comparison_pairs(regimes, strategies))
    for c in claims:
        c["parts"] = [p for p in c["parts"] if p in ok]
    return [c for c in claims if c["parts"]]


def judge_accuracy_claims(claims: list[dict], comp: pd.DataFrame, alpha: float, margin: float = MARGIN) -> pd.DataFrame:
    """One row per claim part x evaluation set (diff, CI, p_holm, verdict) and one 'overall' row per claim x evaluation set."""
    rows = []
    for c in claims:
        for eval_set in EVAL_SETS:
            parts = []
            for p in c["parts"]:
                r = comp[(comp["eval_set"] == eval_set) & (comp["a"] == f"{p.regime_a}/{p.strategy_a}") & (comp["b"] == f"{p.regime_b}/{p.strategy_b}")].iloc[0]
                v = verdict(c["kind"], r["ci_low"], r["ci_high"], r["p_holm"], alpha, margin)
                parts.append(v)
                rows.append({"claim": c["id"], "statement": c["statement"], "kind": c["kind"], "part": f"{r['a']} vs {r['b']}",
                             "eval_set": eval_set, "diff_points": r["diff_points"], "ci_low_points": 100 * r["ci_low"],
                             "ci_high_points": 100 * r["ci_high"], "p_holm": r["p_holm"], "verdict": v})
            rows.append({"claim": c["id"], "statement": c["statement"], "kind": c["kind"], "part": "overall", "eval_set": eval_set, "verdict": overall(parts)})
    return pd.DataFrame(rows)


def entropy_minimum_claim(diagnose: pd.DataFrame, metric: str = "entropy") -> dict:
    """Claim (d): the layer of minimum attention entropy of the source models is the same for every regime x seed.

    Supported when all argmin layers agree, not supported otherwise. Returns the verdict, the argmin per
    (regime, seed) and the share of cells at the most common layer.
    """
    d = diagnose[diagnose["metric"] == metric]
    argmin = {f"{r}-{s}": int(g.loc[g["value"].idxmin(), "layer"]) for (r, s), g in d.groupby(["regime", "seed"], sort=True)}
    if not argmin:
        return {"verdict": INCONCLUSIVE, "argmin": {}, "mode": None, "agreement": math.nan}
    values = list(argmin.values())
    mode = max(sorted(set(values)), key=values.count)
    agreement = values.count(mode) / len(values)
    return {"verdict": SUPPORTED if agreement == 1.0 else NOT_SUPPORTED, "argmin": argmin, "mode": mode, "agreement": agreement}


def jaccard(a: list[int], b: list[int]) -> float:
    """|A & B| / |A | B| of two sets of layers; 1 for two empty sets."""
    a, b = set(a), set(b)
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


def band_consistency_claim(bands: dict[tuple[str, int], list[int]]) -> dict:
    """Claim (e): the SKI band is the same across seeds. Mean pairwise Jaccard of the seeds' bands per regime.

    Supported when every pair of seeds has the same band within each regime (all Jaccard = 1); not supported
    when the mean pairwise Jaccard over all within-regime pairs is below 0.5; otherwise inconclusive.
    """
    per_regime, pooled = {}, []
    for regime in sorted({r for r, _ in bands}):
        seeds = sorted(s for r, s in bands if r == regime)
        js = [jaccard(bands[(regime, s)], bands[(regime, t)]) for s, t in itertools.combinations(seeds, 2)]
        per_regime[regime] = float(np.mean(js)) if js else math.nan
        pooled += js
    if not pooled:
        v = INCONCLUSIVE
    elif all(j == 1.0 for j in pooled):
        v = SUPPORTED
    else:
        v = NOT_SUPPORTED if np.mean(pooled) < 0.5 else INCONCLUSIVE
    return {"verdict": v, "jaccard": per_regime, "mean_jaccard": float(np.mean(pooled)) if pooled else math.nan,
            "bands": {f"{r}-{s}": b for (r, s), b in sorted(bands.items())}}


# --- figure data ---


def layer_means(tidy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count over seeds per (regime, strategy, layer) of one metric of a tidy table; NaN values (frozen layers) dropped."""
    d = tidy[tidy["metric"] == metric].dropna(subset=["value"])
    return d.groupby(["regime", "strategy", "layer"], as_index=False)["value"].agg(mean="mean", std="std", n="count")


def wide(long: pd.DataFrame, keys: list[str], order: list[str] | None = None) -> pd.DataFrame:
    """One row per layer and one column '<key1>_<key2>...' of means: the shape `dvc plots` draws as one line per column."""
    if long.empty:
        return pd.DataFrame(columns=["layer"])
    series = long[keys].astype(str).agg("_".join, axis=1)
    w = long.assign(series=series).pivot_table(index="layer", columns="series", values="mean", sort=True)
    cols = [c for c in (order or sorted(w.columns)) if c in w.columns]
    return w[cols].reset_index().rename_axis(columns=None)


def series_order(regimes: list[str], strategies: list[str], suffixes: list[str] | None = None) -> list[str]:
    """Column names '<regime>_<strategy>[_<suffix>]' in study order."""
    base = [f"{r}_{s}" for s in strategies for r in regimes]
    return [f"{b}_{x}" for b in base for x in suffixes] if suffixes else base


def accuracy_points(table: pd.DataFrame) -> pd.DataFrame:
    """Figure 1 data: strategy, regime, trainable_parameters (mean over seeds), accuracy, accuracy_std, free_accuracy, free_accuracy_std, test_accuracy."""
    return pd.DataFrame({
        "strategy": table["strategy"], "regime": table["regime"], "trainable_parameters": table["params_mean"],
        "accuracy": table["val_mean"], "accuracy_std": table["val_std"], "free_accuracy": table["val_free_mean"],
        "free_accuracy_std": table["val_free_std"], "test_accuracy": table["test_mean"],
    })


# --- figures ---


def layer_ticks(ax: plt.Axes, layers: list[int]) -> None:
    """Integer layer ticks, the embeddings output (-1) labelled 'emb'."""
    ax.set_xticks(layers)
    ax.set_xticklabels(["emb" if l == -1 else str(l) for l in layers])


def plot_accuracy_vs_params(points: pd.DataFrame, path: Path) -> None:
    """Figure 1: accuracy (mean +- std over seeds) against trainable parameters (log x), one row per regime, one column
    per evaluation set; `none` (0 parameters) as a dashed line. Strategies of similar size are spread slightly along x."""
    regimes = list(dict.fromkeys(points["regime"]))
    fig, axes = plt.subplots(len(regimes), 2, figsize=(12.5, 3.2 * len(regimes) + 0.8), sharex=True, sharey="col", squeeze=False)
    markers = dict(zip(STRATEGIES, "XoD^vsPp"))
    spread = {"bitfit": 0.8, "lora_selective": 1.0, "lora_random": 1.25}  # bitfit, selective and random LoRA have ~25k parameters
    for row, regime in zip(axes, regimes):
        d = points[points["regime"] == regime]
        for ax, (col, title) in zip(row, (("accuracy", EVAL_SETS["validation"]), ("free_accuracy", EVAL_SETS["validation_free"]))):
            for r in d.itertuples():
                y, err = getattr(r, col), getattr(r, f"{col}_std")
                if r.trainable_parameters <= 0:
                    ax.axhline(y, color="grey", ls="--", lw=1)
                    ax.text(1.0, y, " none", transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8, color="grey")
                    continue
                ax.errorbar(r.trainable_parameters * spread.get(r.strategy, 1.0), y, yerr=0 if pd.isna(err) else err,
                            fmt=markers.get(r.strategy, "o"), color=STRATEGY_COLORS.get(r.strategy, "k"), ms=7, capsize=3, label=r.strategy)
            ax.set_xscale("log")
            ax.set_title(f"{regime}-trained source: {title}", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("accuracy (mean ± std)")
    for ax in axes[-1]:
        ax.set_xlabel("trainable parameters (log scale)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.86, 0.5), frameon=False, fontsize=9)
    fig.suptitle("Accuracy vs trainable parameters (paper Figure 1); dashed: the source model without adaptation")
    fig.subplots_adjust(left=0.07, right=0.85, bottom=0.1, top=0.9, wspace=0.15, hspace=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_layer_panels(long: pd.DataFrame, panels: list[str], regimes: list[str], title: str, ylabel: str, path: Path,
                      sharey: bool = True, logy: bool = False) -> None:
    """One panel per strategy, under vs over per layer (mean line, +-std band over seeds)."""
    ncols = min(4, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows), sharex=True, sharey=sharey, squeeze=False)
    layers = sorted(long["layer"].unique().astype(int)) if not long.empty else []
    for ax, strategy in zip(axes.flat, panels):
        for regime in regimes:
            d = long[(long["strategy"] == strategy) & (long["regime"] == regime)].sort_values("layer")
            if d.empty:
                continue
            std = d["std"].fillna(0.0)
            ax.plot(d["layer"], d["mean"], marker="o", ms=3.5, color=REGIME_COLORS.get(regime), label=regime)
            ax.fill_between(d["layer"], d["mean"] - std, d["mean"] + std, color=REGIME_COLORS.get(regime), alpha=0.2, lw=0)
        if long[long["strategy"] == strategy].empty:
            ax.text(0.5, 0.5, "no trainable\nencoder layer", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(strategy, fontsize=10)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
        layer_ticks(ax, layers)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=8)
    fig.supxlabel("layer")
    fig.supylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.12, top=0.85, wspace=0.25 if not sharey else 0.08, hspace=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_cka(long: pd.DataFrame, regimes: list[str], strategies: list[str], floor: float, path: Path) -> None:
    """Delta-CKA per layer (mean over seeds), one panel per regime, one line per strategy, log y (values below `floor` drawn at it)."""
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes) + 1.6, 4.2), sharey=True, squeeze=False)
    layers = sorted(long["layer"].unique().astype(int)) if not long.empty else []
    for ax, regime in zip(axes.flat, regimes):
        for strategy in strategies:
            d = long[(long["regime"] == regime) & (long["strategy"] == strategy)].sort_values("layer")
            if not d.empty:
                ax.plot(d["layer"], d["mean"].clip(lower=floor), marker="o", ms=3.5, color=STRATEGY_COLORS.get(strategy), label=strategy)
        ax.set_yscale("log")
        ax.set_title(f"{regime}-trained source")
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        layer_ticks(ax, layers)
    axes[0, 0].set_ylabel(f"Δ-CKA = 1 − CKA (log; < {floor:g} drawn at {floor:g})")
    fig.legend(*axes[0, -1].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(0.87, 0.5), frameon=False)
    fig.suptitle("Representation change per layer vs the source model (linear CKA of [CLS], mean over seeds)")
    fig.subplots_adjust(left=0.08, right=0.86, bottom=0.13, top=0.83, wspace=0.08)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_probes(long: pd.DataFrame, regimes: list[str], strategies: list[str], path: Path) -> None:
    """Figure 5: probe accuracy per layer, one panel per strategy: linear (solid) and MLP (dashed) per regime, shuffled-label controls (grey) and majority (dotted)."""
    ncols = min(4, max(1, len(strategies)))
    nrows = math.ceil(len(strategies) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), sharex=True, sharey=True, squeeze=False)
    layers = sorted(long["layer"].unique().astype(int)) if not long.empty else []
    style = {"linear": "-", "mlp": "--"}
    for ax, strategy in zip(axes.flat, strategies):
        d = long[long["strategy"] == strategy]
        for kind, ls in style.items():
            for regime in regimes:
                x = d[(d["regime"] == regime) & (d["metric"] == kind)].sort_values("layer")
                ax.plot(x["layer"], x["mean"], ls=ls, marker="o", ms=3, color=REGIME_COLORS.get(regime), label=f"{kind} ({regime})")
            ctrl = d[d["metric"] == f"{kind}_shuffled"].groupby("layer")["mean"].mean()
            ax.plot(ctrl.index, ctrl.values, ls=ls, color="grey", lw=1, label=f"{kind}, shuffled labels")
        maj = d[d["metric"] == "majority"].groupby("layer")["mean"].mean()
        ax.plot(maj.index, maj.values, ls=":", color="black", lw=1, label="majority class")
        ax.set_title(strategy, fontsize=10)
        ax.grid(alpha=0.3)
        layer_ticks(ax, layers)
    for ax in axes.flat[len(strategies):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], ls=ls, marker="o", ms=3, color=REGIME_COLORS.get(r), label=f"{k} ({r})") for k, ls in style.items() for r in regimes]
    handles += [plt.Line2D([], [], ls=ls, color="grey", lw=1, label=f"{k}, shuffled labels") for k, ls in style.items()]
    handles += [plt.Line2D([], [], ls=":", color="black", lw=1, label="majority class")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles) // 2 + 1, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.supxlabel("layer", y=0.1)
    fig.supylabel("probe accuracy (held-out, mean over seeds)")
    fig.suptitle("Probe accuracy per layer (paper Figure 5) with shuffled-label and majority controls")
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.22, top=0.9, wspace=0.08, hspace=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_ski(scores: pd.DataFrame, path: Path) -> None:
    """SKI per layer, one panel per regime, one line per seed; layers of the selected band filled, others hollow."""
    regimes = list(dict.fromkeys(scores["regime"]))
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 3.8), sharey=True, squeeze=False)
    colors = plt.get_cmap("Dark2").colors
    for ax, regime in zip(axes.flat, regimes):
        d = scores[scores["regime"] == regime]
        for i, (seed, g) in enumerate(d.groupby("seed", sort=True)):
            g = g.sort_values("layer")
            c = colors[i % len(colors)]
            ax.plot(g["layer"], g["ski"], color=c, lw=1.2, label=f"seed {seed}: band {sorted(g.loc[g['in_band'] == 1, 'layer'].tolist())}")
            ax.scatter(g["layer"], g["ski"], s=28, facecolors=[c if b else "white" for b in g["in_band"]], edgecolors=[c], zorder=3)
        ax.set_title(f"{regime}-trained source")
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        layer_ticks(ax, sorted(d["layer"].unique().astype(int)))
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("SKI score")
    fig.suptitle("SKI per layer; filled markers = the selected band")
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.14, top=0.82, wspace=0.08)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# --- summary and report ---


def rounded(obj: object, digits: int = 4) -> object:
    """Floats rounded to `digits` decimals, recursively; numpy scalars turned into Python ones; nan -> None."""
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(obj) else round(float(obj), digits)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def summary(table: pd.DataFrame, claims: pd.DataFrame, entropy_claim: dict, band_claim: dict, comp: pd.DataFrame,
            audit: pd.DataFrame, data: dict) -> dict:
    """metrics/summary.json: {regime: {strategy: {val_acc, val_free_acc, test_acc, params}}}, claims (verdict per evaluation set), findings."""
    out: dict = {}
    for r in table.itertuples():
        params = r.params_min if r.params_min == r.params_max else r.params_mean
        accs = {"val_acc": r.val_mean, "val_free_acc": r.val_free_mean, "test_acc": r.test_mean}  # test only where evaluated
        out.setdefault(r.regime, {})[r.strategy] = {k: v for k, v in accs.items() if not (isinstance(v, float) and math.isnan(v))} | {"params": params}
    verdicts: dict = {}
    for row in claims[claims["part"] == "overall"].itertuples():
        verdicts.setdefault(row.claim, {})[row.eval_set] = row.verdict
    verdicts["d_entropy_min_same_layer"] = {e: entropy_claim["verdict"] for e in EVAL_SETS}
    verdicts["e_band_consistent"] = {e: band_claim["verdict"] for e in EVAL_SETS}
    out["claims"] = verdicts
    adapted = table[table["strategy"] != "none"]
    findings = {
        "rt_validation_overlap_share": data.get("overlap", {}).get("rt_validation", {}).get("vs_sst2_train", {}).get("share", math.nan),
        "mean_gap_val_minus_free_points": 100 * float((adapted["val_mean"] - adapted["val_free_mean"]).mean()) if len(adapted) else math.nan,
        "entropy_min_layer_mode": entropy_claim["mode"],
        "entropy_min_layer_agreement": entropy_claim["agreement"],
        "band_mean_jaccard": band_claim["mean_jaccard"],
        "tests": int(len(comp)),
        "tests_significant_holm": int(comp["significant"].sum()) if len(comp) else 0,
        "lora_counts_match_formula": bool(audit["match"].all()) if len(audit) and audit["match"].notna().all() else None,
    }
    for regime in out:
        if regime in ("claims",):
            continue
        best = table[table["regime"] == regime].sort_values("val_mean", ascending=False)
        if len(best):
            findings[f"best_val_strategy_{regime}"] = best.iloc[0]["strategy"]
    out["findings"] = findings
    return rounded(out)


def pct(x: float, digits: int = 1) -> str:
    """A fraction as percent text, 'n/a' for nan or non-numbers."""
    try:
        return "n/a" if not math.isfinite(float(x)) else f"{100 * float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def p_text(p: float) -> str:
    """A p-value as short text: 'p=0.0123', 'p<0.0001' or 'p n/a'."""
    return "p n/a" if p is None or not math.isfinite(p) else ("p<0.0001" if p < 1e-4 else f"p={p:.4f}")


def md_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def params_text(r: pd.Series) -> str:
    """Exact trainable parameters of a row of Table 1; a range when the band size differs between seeds."""
    return f"{r['params_min']:,}" if r["params_min"] == r["params_max"] else f"{r['params_min']:,}–{r['params_max']:,}"


def acc_text(r: pd.Series, key: str) -> str:
    """'mean ± std [low, high]' in percent for one accuracy of a Table 1 row."""
    return f"{pct(r[f'{key}_mean'])} ± {pct(r[f'{key}_std'])} [{pct(r[f'{key}_ci_low'])}, {pct(r[f'{key}_ci_high'])}]"


def render_report(params: Params, data: dict, table: pd.DataFrame, paper_source: str, paper_reason: str, audit: pd.DataFrame,
                  comp: pd.DataFrame, claims: pd.DataFrame, entropy_claim: dict, band_claim: dict, checks: dict, figures: dict[str, str]) -> str:
    """The Markdown report: setup vs paper, leakage audit, Table 1, parameter arithmetic, figures, claims, statistics, limitations."""
    p, rep = params, params.report
    conf = f"{100 * rep.confidence:g}%"
    sizes = data.get("sizes", {})
    L: list[str] = ["# Report: attention saturation and inflection layers, reproduced", ""]
    profile = getattr(p.study, "profile", None)
    L += ["Generated by `python -m inflection_layers.report` from the study's outputs; every number below is computed from them."
          + (f" Profile: `{profile}`." if profile else ""),
          f"Cells: {len(p.study.regimes)} regimes x {len(p.study.strategies) + len(p.study.lora_strategies)} strategies x "
          f"{len(p.study.seeds)} seeds ({', '.join(map(str, p.study.seeds))}).", ""]

    L += ["## Setup and differences from the paper", ""]
    sst2 = sizes.get("sst2_source", p.data.sst2_subsample or sizes.get("sst2_train", "all"))
    L += [md_table(["setting", "paper (as stated)", "this run (params.yaml)"], [
        ["model", PAPER_SETUP["model"], f"`{p.model.name}`" + (" (all-MiniLM-L6-v2, 6 layers, width 384)" if p.model.name == "packaged" else "")],
        ["SST-2 examples for source training", f"{PAPER_SETUP['sst2_examples']:,}", f"{sst2:,}" if isinstance(sst2, int) else sst2],
        ["source learning rate", f"{PAPER_SETUP['source_lr']:g}", f"{p.source.lr:g}"],
        ["source epochs under / over", " / ".join(map(str, PAPER_SETUP["epochs"])), f"{p.source.epochs_under} / {p.source.epochs_over}"],
        ["adaptation steps", PAPER_SETUP["steps"], p.finetune.steps],
        ["adaptation learning rate (LoRA)", f"{PAPER_SETUP['lr']:g}", f"{p.finetune.lr:g} ({p.lora.lr:g})"],
        ["adaptation batch size", PAPER_SETUP["batch_size"], p.finetune.batch_size],
        ["LoRA", PAPER_SETUP["lora"], f"r {p.lora.rank}, alpha {p.lora.alpha}, dropout {p.lora.dropout:g} on {', '.join(p.lora.targets)}"],
        ["SKI band", "greedy rule", f"{p.ski.method}, alpha {p.ski.alpha:g}, ±{p.ski.s}, at most {p.ski.max_band} layers"],
        ["probe train / eval sentences", " / ".join(f"{x:,}" for x in PAPER_SETUP["probe_sizes"]), f"{p.probe.train_size:,} / {p.probe.eval_size:,}"],
        ["diagnostics (source model, RT train)", "n/a", f"{p.diagnose.batches} batches of {p.diagnose.batch_size}"],
    ]), ""]

    L += ["## Leakage audit (metrics/data.json)", "",
          "Exact matches (lower case, letters and digits only) of Rotten Tomatoes sentences in SST-2:", ""]
    rows = []
    for split, o in data.get("overlap", {}).items():
        tr, dev = o.get("vs_sst2_train", {}), o.get("vs_sst2_dev", {})
        rows.append([split, f"{tr.get('count', 'n/a'):,} / {tr.get('total', 0):,} ({pct(tr.get('share', math.nan))}%)",
                     pct(tr.get("label_agreement", math.nan)), f"{dev.get('count', 'n/a'):,} ({pct(dev.get('share', math.nan))}%)",
                     f"{o.get('overlap_free', 'n/a'):,}"])
    L += [md_table(["RT split", "in SST-2 train", "label agreement %", "in SST-2 dev", "overlap-free sentences"], rows), "",
          "The source models were trained on SST-2 sentences, so most RT evaluation sentences (or their near-copies) were seen, "
          "with labels, before adaptation. Every accuracy is therefore also reported on the overlap-free part.", ""]

    L += ["## Table 1: accuracy by regime and strategy", "",
          f"Accuracy in % as mean ± std over {len(p.study.seeds)} seeds [{conf} t-interval over seeds]; "
          "trainable parameters are exact counts (a range where the SKI band size differs between seeds).", ""]
    if paper_source:
        L += [f"Paper columns from `{paper_source}`.", ""]
    else:
        L += [f"**The paper's numbers are not included**: {paper_reason}, and none are typed in by hand here. "
              "The paper columns read n/a.", ""]
    rows = []
    sets = ["val", "val_free"] + (["test", "test_free"] if table["test_mean"].notna().any() else [])  # test where finetune.eval_splits has it
    for _, r in table.iterrows():
        paper_acc = pct(r["paper_accuracy"])
        if paper_acc != "n/a" and pct(r["paper_accuracy_std"]) != "n/a":
            paper_acc += f" ± {pct(r['paper_accuracy_std'])}"
        rows.append([r["regime"], r["strategy"], params_text(r), *(acc_text(r, k) for k in sets), paper_acc, r["paper_params_stated"]])
    names = {"val": "RT val", "val_free": "RT val overlap-free", "test": "RT test", "test_free": "RT test overlap-free"}
    L += [md_table(["regime", "strategy", "trainable params", *(names[k] for k in sets), "paper acc", "paper params (stated)"], rows), "",
          f"Data: [table1.csv](table1.csv). Predictions reproduce the per-cell accuracies of metrics/finetune: "
          f"{'yes' if checks['predictions_match'] else 'NO (max deviation ' + format(checks['max_deviation'], '.2g') + ')'}.", ""]

    L += ["## Parameter counts: exact arithmetic", ""]
    pl = PAPER_LORA
    per_layer = lora_parameters(pl["rank"], pl["width"], 1, pl["targets"])
    total = lora_parameters(pl["rank"], pl["width"], pl["layers"], pl["targets"])
    L += [f"LoRA of rank r on a (d x d) projection adds A (r x d) and B (d x r): 2rd parameters; on query, key and value "
          f"3 · 2 · r · d per layer. For the paper's BERT-base (d = {pl['width']}) at r = {pl['rank']}: {per_layer:,} per layer, "
          f"**{total:,} for {pl['layers']} layers**, against the {pl['stated']} the paper states "
          f"({pl['stated_value'] / total:.1f}x more; {pl['stated']} would take about {pl['stated_value'] / per_layer:.0f} adapted layers).", ""]
    if len(audit):
        w = audit["width"].dropna().unique()
        L += [f"Here (r = {p.lora.rank}, {len(p.lora.targets)} targets"
              + (f", width {int(w[0])} inferred from the head-only cells' classifier of {int(audit['classifier_parameters'].iloc[0]):,} parameters" if len(w) else "")
              + "), every LoRA cell's measured count against the formula + classifier:", ""]
        g = audit.groupby(["regime", "strategy", "band_size"], as_index=False).agg(
            cells=("seed", "count"), lora=("lora_parameters", "first"), expected=("expected", "first"), measured=("measured", "first"), match=("match", "all"))
        L += [md_table(["regime", "strategy", "band size", "cells", "LoRA params", "expected total", "measured total", "exact match"],
                       [[r.regime, r.strategy, r.band_size, r.cells, f"{int(r.lora):,}" if pd.notna(r.lora) else "n/a",
                         f"{int(r.expected):,}" if pd.notna(r.expected) else "n/a", f"{int(r.measured):,}", r.match] for r in g.itertuples()]), ""]
        L += ["Data: [parameters.csv](parameters.csv).", ""]

    L += ["## Figures", ""]
    for name, caption in figures.items():
        L += [f"**{caption}** (data: [{name}.csv]({name}.csv))", "", f"![{caption}]({name}.png)", ""]

    L += ["## Claims and verdicts", "",
          "Decision rule, on the accuracy difference A − B averaged over seeds, with its "
          f"{conf} paired-bootstrap interval and the Holm-adjusted p (alpha = {rep.alpha:g}); "
          f"the smallest effect of interest is {100 * MARGIN:g} accuracy point:", "",
          "- claim **A > B**: *supported* when the interval lies above 0 and adjusted p < alpha; "
          f"*not supported* when the interval lies below +{100 * MARGIN:g} point (a gain of that size is excluded); else *inconclusive*.",
          "- claim **A ≥ B**: *supported* when the interval lies above −" f"{100 * MARGIN:g} point (non-inferiority); "
          "*not supported* when the interval lies below 0 and adjusted p < alpha (A is significantly worse); else *inconclusive*.",
          "- a claim made of several comparisons is supported when every part is, not supported when any part is not, else inconclusive.",
          "- (d) supported when the attention-entropy minimum of every source model (regime x seed) is at the same layer, else not supported.",
          "- (e) supported when every seed selects the same band within each regime; not supported when the mean pairwise "
          "Jaccard index of the seeds' bands is below 0.5; else inconclusive.", ""]
    rows = []
    for cid in dict.fromkeys(claims["claim"]):
        c = claims[claims["claim"] == cid]
        ov = {e: c[(c["part"] == "overall") & (c["eval_set"] == e)]["verdict"].iloc[0] for e in EVAL_SETS}
        parts = c[c["part"] != "overall"]
        ev = []
        for part in dict.fromkeys(parts["part"]):
            x = parts[parts["part"] == part].set_index("eval_set")
            ev.append(f"{part}: " + " / ".join(f"{x.loc[e, 'diff_points']:+.1f} [{x.loc[e, 'ci_low_points']:+.1f}, {x.loc[e, 'ci_high_points']:+.1f}], {p_text(x.loc[e, 'p_holm'])}" for e in EVAL_SETS))
        rows.append([f"({cid[0]}) {c['statement'].iloc[0]} [{c['kind'].iloc[0]}]", f"**{ov['validation']}**", f"**{ov['validation_free']}**", "<br>".join(ev)])
    am = entropy_claim["argmin"]
    rows.append(["(d) the attention-entropy minimum of the source models is at the same layer across seeds and regimes",
                 f"**{entropy_claim['verdict']}**", f"**{entropy_claim['verdict']}** (RT train)",
                 f"argmin layer per source model: {', '.join(f'{k}: {v}' for k, v in am.items())}; {pct(entropy_claim['agreement'], 0)}% at layer {entropy_claim['mode']}"])
    bc = band_claim
    rows.append(["(e) the SKI band is consistent across seeds", f"**{bc['verdict']}**", f"**{bc['verdict']}** (RT train)",
                 f"bands: {', '.join(f'{k}: {v}' for k, v in bc['bands'].items())}; mean pairwise Jaccard "
                 + ", ".join(f"{r}: {j:.2f}" for r, j in bc["jaccard"].items())])
    L += [md_table(["claim", "RT validation", "overlap-free", "evidence: difference in points [CI], Holm p (validation / overlap-free)"], rows), "",
          "Claims (d) and (e) rest on the source-model diagnostics on RT train, which no overlap filter touches: one verdict for both columns. "
          "Claim (f) is ours: the control that tells a chosen band from any band of that size. Data: [claims.csv](claims.csv).", ""]
    val = comp[comp["eval_set"] == "validation"] if len(comp) else comp
    lora_none = val[(val["family"] == "vs_none") & val["strategy_a"].str.startswith("lora")] if len(val) else val
    if len(lora_none):
        moved, changed = lora_none["diff_points"].abs().max(), 100 * lora_none["discordant_share"].max()
        reading = (f"Reading the verdicts: every LoRA cell is within {moved:.2f} points of the unadapted source model of its regime on RT "
                   f"validation (changing the correctness of at most {changed:.1f}% of sentences)")
        if moved < 100 * MARGIN:  # below the smallest effect of interest: the adapters did not move the model
            reading += ", so claims (b) and (f) compare adapters that hardly moved the model; non-inferiority between them says little about LoRA"
        L += [reading + "."]
    src = val[(val["family"] == "over_vs_under") & (val["strategy_a"] == "none")] if len(val) else val
    if len(src):
        L += [f"The over-vs-under gap exists before any adaptation: over/none − under/none = {src['diff_points'].iloc[0]:+.2f} points "
              f"[{100 * src['ci_low'].iloc[0]:+.2f}, {100 * src['ci_high'].iloc[0]:+.2f}] on RT validation."]
    L += [""]

    L += ["## All paired comparisons", "",
          f"A − B in accuracy points [{conf} paired bootstrap], Holm-adjusted p over all {len(comp)} tests, "
          "discordant pairs (A right only / B right only, summed over seeds). Data: [comparisons.csv](comparisons.csv).", ""]
    rows = []
    for (a, b), g in comp.groupby(["a", "b"], sort=False):
        g = g.set_index("eval_set")
        rows.append([a, b] + [f"{g.loc[e, 'diff_points']:+.2f} [{100 * g.loc[e, 'ci_low']:+.2f}, {100 * g.loc[e, 'ci_high']:+.2f}], "
                              f"{p_text(g.loc[e, 'p_holm'])}, {g.loc[e, 'n_a_only']}/{g.loc[e, 'n_b_only']}" for e in EVAL_SETS])
    L += [md_table(["A", "B", EVAL_SETS["validation"], EVAL_SETS["validation_free"]], rows), ""]

    L += ["## Statistics", "",
          f"- **Over seeds** (Table 1): mean, sample std and a {conf} Student-t interval (scipy.stats.t, n − 1 degrees of freedom) "
          "of the per-seed accuracies. With 3 seeds the t quantile is large and these intervals are wide.",
          f"- **Paired bootstrap over examples**: the per-example difference of correctness, averaged over seeds, resampled "
          f"{rep.bootstrap:,} times (the same example indices for both strategies and every seed; numpy generator seeded with "
          f"{rep.seed}); percentile interval at {conf}. Over-vs-under comparisons are paired by example and by seed as well.",
          "- **McNemar exact test** per seed on the saved predictions (statsmodels `mcnemar(exact=True)`), combined across seeds by "
          "**Stouffer's method** (scipy.stats.combine_pvalues, method='stouffer') on one-sided p-values signed by which side wins "
          "more discordant pairs, then made two-sided.",
          f"- **Holm's step-down correction** (statsmodels multipletests, method='holm') over the whole family of {len(comp)} tests "
          "(every pair x both evaluation sets).",
          "- **Effect sizes**: difference in accuracy points, Cohen's h on the mean accuracies, and the odds ratio of discordant pairs "
          "(0.5 added to both counts when one is 0).", ""]

    L += ["## Data checks and oddities", ""] + [f"- {line}" for line in checks["notes"]] + [""]

    L += ["## Limitations", "",
          f"- {len(p.study.seeds)} seeds: the bootstrap interval is conditional on these trained models (it resamples examples, "
          "not training runs); the seed-level t-intervals carry the run-to-run variance but with very few degrees of freedom.",
          "- Stouffer's combination treats the seeds' McNemar tests as independent; the seeds are independent training runs but are "
          "scored on the same sentences, so the combined p may be somewhat optimistic. The verdicts also require the bootstrap interval.",
          f"- The overlap-free validation set is small ({int(comp[comp['eval_set'] == 'validation_free']['n_examples'].iloc[0]) if len(comp) else 'n/a'} sentences): "
          "its intervals are wide and many of its verdicts are inconclusive by construction.",
          "- The default profile shrinks the paper's setting (model, SST-2 subsample, steps; see the setup table), so agreement or "
          "disagreement with the paper is about this profile, not about BERT-base at full scale.",
          "- Overlap is exact-match after normalisation; paraphrased near-duplicates are not removed.", ""]
    return "\n".join(L)


def data_notes(metrics: pd.DataFrame, correct: dict, masks: dict, comp: pd.DataFrame, cka_dropped: pd.DataFrame,
               diagnose: pd.DataFrame, selections: dict, probes: pd.DataFrame) -> tuple[dict, list[str]]:
    """Consistency checks and computed observations for the report: (checks, notes)."""
    notes = []
    dev = 0.0
    for r in metrics.itertuples():
        key = (r.regime, r.strategy, r.seed)
        for eval_set, col in (("validation", "validation_accuracy"), ("validation_free", "validation_free_accuracy")):
            dev = max(dev, abs(float(correct[key][masks[eval_set]].mean()) - float(getattr(r, col))))
    notes.append(f"Accuracies recomputed from predictions.parquet differ from metrics/finetune by at most {dev:.2g}.")
    if len(cka_dropped):
        notes.append(f"metrics/cka.csv holds {len(cka_dropped)} rows at the embeddings output (layer -1) although the [CLS] embedding is the "
                     f"same vector for every sentence there (CKA undefined); their values (up to {cka_dropped['value'].abs().max():.3g}) are "
                     "floating-point artefacts of the PCA projection and are left out of the Δ-CKA figure.")
    vs_none = comp[(comp["family"] == "vs_none") & (comp["eval_set"] == "validation")]
    still = vs_none[vs_none["discordant_share"] < 0.02]
    if len(still):
        notes.append("Adaptation barely moved these cells: relative to the unadapted source model of the same regime and seed, they change "
                     "whether a validation sentence is classified correctly for fewer than 2% of sentences (share; gained / lost over all seeds): "
                     + "; ".join(f"{r.a} {100 * r.discordant_share:.1f}% ({r.n_a_only}/{r.n_b_only})" for r in still.itertuples()) + ".")
    scores0 = [s["scores"][0] for s in selections.values()]
    if scores0 and all(v == 0.0 for v in scores0):
        notes.append("SKI of layer 0 is exactly 0 in every source model: layer 0 has the largest entropy and activation gradient, where "
                     "the max-normalised terms vanish, so layer 0 is never a SKI peak and enters a band only by widening around layer 1.")
    ag = diagnose[diagnose["metric"] == "act_grad"]
    if len(ag):
        low = ag.loc[ag.groupby(["regime", "seed"])["value"].idxmin(), "layer"].astype(int)
        notes.append(f"The smallest activation-gradient norm of every source model is at layer(s) {sorted(set(low))} "
                     f"(of {int(ag['layer'].min())}..{int(ag['layer'].max())}, -1 = embeddings): the gradient shrinks towards the output, "
                     "not at a middle layer.")
        m = ag.groupby(["regime", "layer"])["value"].mean().unstack(0)
        if {"under", "over"} <= set(m.columns):
            ratio = m["over"] / m["under"]
            notes.append(f"The over-trained source models have larger, not smaller, activation gradients on RT train than the under-trained "
                         f"ones: over / under = {ratio.min():.1f} to {ratio.max():.1f} across layers (means over seeds).")
    shuffled = probes[probes["metric"].str.endswith("_shuffled")]
    majority = probes.loc[probes["metric"] == "majority", "value"]
    if len(shuffled) and len(majority):
        worst = shuffled.loc[(shuffled["value"] - majority.mean()).abs().idxmax()]
        notes.append(f"The shuffled-label probe controls range from {shuffled['value'].min():.3f} to {shuffled['value'].max():.3f} "
                     f"(majority class {majority.mean():.3f}); the farthest from it is {worst['metric']} at layer {int(worst['layer'])} of "
                     f"{worst['regime']}/{worst['strategy']}/{int(worst['seed'])} ({worst['value']:.3f}). Far below chance means the control "
                     "learned the inverted labelling, consistent with a representation collapsed into two class clusters, "
                     "each tipped to one label by the shuffled labels. Each control is a single permutation, not an average.")
    return {"predictions_match": dev < 1e-9, "max_deviation": dev}, notes


def main() -> None:
    """Aggregate every cell: Table 1, paired comparisons, claims, figures, metrics/summary.json and report.md."""
    parser = argparse.ArgumentParser(description="Stage `report`: statistics, figures, summary metrics and the Markdown report of the study.")
    parser.add_argument("--finetune-metrics", type=Path, nargs="+", required=True, help="folders of per-cell metrics JSON (metrics/finetune metrics/finetune_lora)")
    parser.add_argument("--cells", type=Path, nargs="+", required=True, help="folders of fine-tuned cells with predictions.parquet (models/finetune models/finetune_lora)")
    parser.add_argument("--finetune-plots", type=Path, nargs="+", required=True, help="folders of per-cell <strategy>-layers.csv (plots/finetune plots/finetune_lora)")
    parser.add_argument("--diagnose", type=Path, required=True, help="folder of source-model diagnostics <regime>-<seed>.csv (metrics/diagnose)")
    parser.add_argument("--selection", type=Path, required=True, help="folder of SKI selections <regime>-<seed>.json (metrics/selection)")
    parser.add_argument("--cka", type=Path, required=True, help="tidy Delta-CKA table (metrics/cka.csv)")
    parser.add_argument("--probes", type=Path, required=True, help="tidy probe table (metrics/probes.csv)")
    parser.add_argument("--data-metrics", type=Path, required=True, help="overlap audit (metrics/data.json)")
    parser.add_argument("--paper", type=Path, default=None, help="the paper's Table 1 CSV (optional; reported as absent if missing)")
    parser.add_argument("--summary", type=Path, required=True, help="top-level metrics JSON to write (metrics/summary.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder of tables, figures and report.md to write (plots/report)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    params = load_params()
    study, rep = params.study, params.report
    regimes, seeds, strategies = study.regimes, study.seeds, study.strategies + study.lora_strategies
    cells = study.cells()
    sources = [(r, s) for r in regimes for s in seeds]

    metrics = read_finetune_metrics(args.finetune_metrics, cells)
    correct, examples = read_correctness(args.cells, cells)
    masks = eval_masks(examples)
    layers = read_tidy([cell_file(args.finetune_plots, *c, "-layers.csv") for c in cells])
    diagnose = read_tidy([args.diagnose / f"{r}-{s}.csv" for r, s in sources])
    selections = {(r, s): pd.read_json(args.selection / f"{r}-{s}.json", typ="series").to_dict() for r, s in sources}
    cka, probes = pd.read_csv(args.cka), pd.read_csv(args.probes)
    data = pd.read_json(args.data_metrics, typ="series").to_dict()
    paper, note = read_paper_table(args.paper)  # note: the file's `# source:` line, or why there is no paper table
    paper_source, paper_reason = ((note or str(args.paper)), "") if paper is not None else ("", note)

    table = with_paper(table1(metrics, rep.confidence, regimes, strategies), paper)
    audit = parameter_audit(metrics, params.lora.rank, len(params.lora.targets))
    comp = comparisons(correct, masks, comparison_pairs(regimes, strategies), seeds, rep.bootstrap, rep.confidence, rep.alpha, rep.seed)
    claims = judge_accuracy_claims(accuracy_claims(regimes, strategies), comp, rep.alpha)
    entropy_claim = entropy_minimum_claim(diagnose)
    band_claim = band_consistency_claim({k: list(v["band"]) for k, v in selections.items()})

    cka = cka[cka["metric"] == "delta_cka"]
    cka_dropped = cka[cka["layer"] == -1] if params.analysis.pooling == "cls" else cka.iloc[:0]
    cka = cka.drop(cka_dropped.index)
    checks, notes = data_notes(metrics, correct, masks, comp, cka_dropped, diagnose, selections, probes)
    checks["notes"] = notes

    source_rows = diagnose.assign(strategy="source")
    adapted = [s for s in strategies if s != "none"]
    panels = ["source"] + adapted
    ski = pd.concat([pd.DataFrame({"layer": range(len(v["scores"])), "ski": v["scores"], "in_band": [int(l in v["band"]) for l in range(len(v["scores"]))],
                                   "regime": r, "seed": s}) for (r, s), v in selections.items()], ignore_index=True)
    figures = {
        "accuracy_vs_params": "Figure 1: accuracy vs trainable parameters",
        "layers_entropy": "Figure 2: attention entropy per layer, under vs over",
        "layers_act_grad": "Figure 3: activation-gradient norm per layer, under vs over",
        "layers_param_grad": "Figure 4: parameter-gradient norm per layer (trainable layers), under vs over",
        "delta_cka": "Δ-CKA per layer vs the source model",
        "probes": "Figure 5: probe accuracy per layer",
        "ski": "SKI per layer with the selected band",
    }
    with atomic_path(args.out, is_dir=True) as out:
        write_csv(out / "table1.csv", table)
        write_csv(out / "comparisons.csv", comp)
        write_csv(out / "claims.csv", claims)
        write_csv(out / "parameters.csv", audit)
        points = accuracy_points(table)
        write_csv(out / "accuracy_vs_params.csv", points)
        plot_accuracy_vs_params(points, out / "accuracy_vs_params.png")
        for metric, ylabel, sharey, logy in (("entropy", "attention entropy (nats)", True, False),
                                             ("act_grad", "‖dL/dh‖ (activation gradient)", True, True),
                                             ("param_grad", "parameter-gradient norm", False, True)):
            long = pd.concat([layer_means(source_rows, metric), layer_means(layers, metric)], ignore_index=True)
            write_csv(out / f"layers_{metric}.csv", wide(long, ["regime", "strategy"], series_order(regimes, panels)))
            title = f"{figures[f'layers_{metric}']}\nsource: the source model on RT train; other panels: mean over the adaptation's diagnostic steps"
            plot_layer_panels(long, panels, regimes, title, ylabel, out / f"layers_{metric}.png", sharey=sharey, logy=logy)
        cka_long = layer_means(cka, "delta_cka")
        write_csv(out / "delta_cka.csv", wide(cka_long, ["regime", "strategy"], series_order(regimes, adapted)))
        plot_cka(cka_long, regimes, adapted, 1e-7, out / "delta_cka.png")
        probe_long = pd.concat([layer_means(probes, m).assign(metric=m) for m in sorted(probes["metric"].unique())], ignore_index=True)
        kinds = ["linear", "mlp", "linear_shuffled", "mlp_shuffled", "majority"]
        write_csv(out / "probes.csv", wide(probe_long, ["regime", "strategy", "metric"], series_order(regimes, strategies, kinds)))
        plot_probes(probe_long, regimes, strategies, out / "probes.png")
        ski_wide = ski.pivot_table(index="layer", columns=["regime", "seed"], values="ski")
        ski_wide.columns = [f"{r}_{s}" for r, s in ski_wide.columns]
        band_wide = ski.pivot_table(index="layer", columns=["regime", "seed"], values="in_band").astype(int)
        band_wide.columns = [f"band_{r}_{s}" for r, s in band_wide.columns]
        write_csv(out / "ski.csv", pd.concat([ski_wide, band_wide], axis=1).reset_index())
        plot_ski(ski, out / "ski.png")
        report = render_report(params, data, table, paper_source, paper_reason, audit, comp, claims, entropy_claim, band_claim, checks, figures)
        (out / "report.md").write_text(report)
    write_json(args.summary, summary(table, claims, entropy_claim, band_claim, comp, audit, data))
    logger.info("report written to %s and %s in %.1f s", args.out, args.summary, time.perf_counter() - start)


if __name__ == "__main__":
    main()
