"""The words and small tables of report.md (:mod:`~inflection_layers.reporting.sections` puts them in order).
Every sentence that states a finding is made by a small function from the numbers it describes (``describe_*``), so
opposite numbers give the opposite sentence, and no sentence is stronger than its interval.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from inflection_layers.cells import TARGET_NAMES
from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.paper import BERT_BASE

HOW_TO_READ = [
    "Every claim's rule, the effect it is about and how its parts combine were fixed before any result existed, in "
    "[data/paper/decisions.csv](../../data/paper/decisions.csv); the interval column names its level.",
    "**Directional** claim with effect d: **Reproduced** when the interval lies on the claimed side of 0 and "
    "reaches d; **Partially reproduced** when it lies on the claimed side but below d (the direction, a smaller "
    "effect); **Not reproduced** when it reaches 0 (or the other side) and stays below d; **Inconclusive** when it "
    "spans both 0 and d.",
    '**Two-sided** claim (a size, the paper\'s "about d"): Reproduced when the interval lies inside the about-range; '
    "Partially reproduced when it misses the range on the claimed side of 0; Not reproduced when it misses the "
    "range and reaches 0.",
    "**Equivalence** (TOST) and **non-inferiority** use the 1 - 2 alpha interval against the stated margin. "
    "**Categorical** claims (a layer, a band) count matching cells: all, Reproduced; some, Partially reproduced; "
    "none, Not reproduced.",
    "A claim whose every part must hold takes its weakest part's verdict; the interval shown is that part's. Rows "
    "marked extension are our additions (strategies the paper did not run, other measures): shown, never deciding "
    "a paper claim.",
    "The seed is the unit: per-seed paired differences and a Student-t interval over seeds; the per-example tests "
    "are secondary (comparisons.csv). With few seeds most intervals are wide: the power table gives the seeds each "
    "claim needs.",
]


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows])


def num(x: Any, fmt: str = ".2f", none: str = "n/a") -> str:
    v = pd.to_numeric(x, errors="coerce") if not isinstance(x, (list, dict)) else math.nan
    return none if v is None or not math.isfinite(v) else format(float(v), fmt)


def value_text(v: float, unit: str) -> str:
    """A part's value in its unit: '+0.42 points', '0.052x', '67% of cells'."""
    if v is None or not math.isfinite(v) or unit in ("share of cells", "ratio"):
        return (
            "n/a"
            if v is None or not math.isfinite(v)
            else f"{100 * v:.0f}% of cells"
            if unit == "share of cells"
            else f"{v:.3g}x"
        )
    return f"{v:+.2f} {unit}" if unit in ("points", "percentile points") else f"{v:+.3g} {unit}"


def interval_text(lo: float, hi: float, unit: str, level: float | None = None) -> str:
    """'[+0.12, +0.85] (95%)': an interval with its level."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    body = f"[{lo:.3g}x, {hi:.3g}x]" if unit == "ratio" else f"[{lo:+.3g}, {hi:+.3g}]"
    return body + (f" ({100 * level:g}%)" if level is not None and math.isfinite(level) else "")


def describe_gap(a: float, b: float, what_a: str, what_b: str, unit: str = "points", tol: float = 1e-9) -> str:
    """'A is higher than B by d unit' / 'lower' / 'equal to' from the two numbers."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"{what_a} and {what_b} cannot be compared here"
    d = a - b
    if abs(d) <= tol:
        return f"{what_a} equals {what_b} ({a:.2f})"
    return f"{what_a} is {'higher' if d > 0 else 'lower'} than {what_b} by {abs(d):.2f} {unit} ({a:.2f} vs {b:.2f})"


def describe_overlap(
    target: str, split: str, n: int, in_source: int | None, in_sst2: int | None, phrase: int | None
) -> str:
    """The overlap wording of one split, from the audit's counts."""
    if not n:
        return f"{target} {split}: no sentences audited."

    def share(k: int | None, who: str, saw: str) -> str:
        if k is None:
            return f"{who} was not audited"
        p = k / n
        size = (
            "none"
            if k == 0
            else "almost none"
            if p < 0.05
            else "a minority"
            if p < 0.5
            else "most"
            if p < 0.95
            else "nearly all"
        )
        return f"{who} {saw} {size} of these sentences ({k} of {n}, {100 * p:.1f}%)"

    return (
        f"{TARGET_NAMES.get(target, target)} {split}: "
        + share(in_source, "the source models", "saw")
        + "; "
        + share(in_sst2, "SST-2 as a whole", "contains")
        + "; "
        + share(phrase, "SST-2's phrases", "cover")
        + "."
    )


def overtraining_signature(curve: list[dict]) -> bool:
    """Dev loss rising at two consecutive evaluations while the training loss falls: the signature of over-training."""
    c = [x for x in curve if x.get("dev_loss") is not None and x.get("train_loss") is not None]
    return any(
        c[i + 1]["dev_loss"] > c[i]["dev_loss"]
        and c[i + 2]["dev_loss"] > c[i + 1]["dev_loss"]
        and c[i + 2]["train_loss"] < c[i]["train_loss"]
        for i in range(len(c) - 2)
    )


def describe_over_training(source: dict[str, dict]) -> str:
    """Whether OVER looks over-trained, from the source curves: final train loss against UNDER's, and whether its dev
    loss rose at two consecutive evaluations while its training loss fell."""
    over = [j for k, j in source.items() if k.startswith("over-")]
    under = [j for k, j in source.items() if k.startswith("under-")]
    if not over or not under:
        return "The profile lacks one of the regimes: over-training cannot be judged."
    lo, lu = (sum(j.get("train_loss", math.nan) for j in js) / len(js) for js in (over, under))
    text = describe_gap(lo, lu, "OVER's final SST-2 training loss", "UNDER's", unit="nats") + "."
    evaluated = [j for j in over if len([x for x in j.get("curve", []) if x.get("dev_loss") is not None]) >= 3]
    if not evaluated:
        return text + " OVER has fewer than three dev evaluations: its dev loss trend is not judged."
    k = sum(overtraining_signature(j["curve"]) for j in evaluated)
    if k:
        return text + (
            f" In {k} of {len(evaluated)} OVER seeds the SST-2 dev loss rose at two consecutive evaluations while the "
            "training loss fell: the signature of over-training."
        )
    return text + (
        f" In none of {len(evaluated)} OVER seeds did the SST-2 dev loss rise at two consecutive evaluations while the "
        "training loss fell."
    )


def describe_rule(ski: Any, depth: int | None, ablation: pd.DataFrame) -> str:
    """Which selection rule the LoRA cells used and why, from params and the ablation's band sizes."""
    cap = "no cap" if ski.max_band is None else f"at most {ski.max_band} layers"
    how = "local maxima of SKI" if ski.method == "local_max" else "the greedy rule"
    rule = f"{'capped ' if ski.max_band is not None else ''}{how} (alpha {ski.alpha:g}, +-{ski.s}, {cap})"
    g = (
        ablation[(ablation["cap"] == "none") & (ablation["alpha"] == ski.alpha) & (ablation["s"] == ski.s)]
        if len(ablation)
        else ablation
    )
    if not len(g) or not depth:
        return f"The LoRA cells used {rule}."
    sizes = g.groupby("method")["size"].mean()
    size = sizes.max()
    why = (
        f"with {depth} layers an uncapped band covers "
        + " and ".join(
            f"{v:.1f} of them ({100 * v / depth:.0f}%) by {'local maxima' if m == 'local_max' else 'the greedy rule'}"
            for m, v in sizes.items()
        )
        + " on average"
    )
    if ski.max_band is not None and size > ski.max_band:
        return f"The LoRA cells used {rule} because {why}, more than the {ski.max_band} the cap allows."
    return f"The LoRA cells used {rule}; {why}."


def describe_stale(ski: Any, selection: pd.DataFrame) -> str:
    """Whether every group's selection JSON was made with the params' rule (method, alpha, s, threshold, cap)."""
    keys = ("method", "alpha", "s", "threshold", "max_band")
    want = {k: getattr(ski, k) for k in keys}
    got = [{k: (p or {}).get(k) for k in keys} for p in (selection.get("params", []))]
    if not got:
        return "The selection files do not record their rule."
    off = sum(g != want for g in got)
    return (
        f"All {len(got)} groups' selections record this rule."
        if not off
        else f"{off} of {len(got)} groups' selections record another rule than params.yaml's: rerun `dvc repro select`."
    )


def describe_clean(audit: pd.DataFrame, target: str, subset: str = "clean_sst2") -> list[str]:
    """Per regime: accuracy on all sentences against a clean subset (mean over strategy families and seeds). The
    subsets differ in difficulty as well as in overlap, so this is a description, not an effect of the overlap."""
    a = audit[(audit["target"] == target) & (audit["strategy"] != "none")] if len(audit) else audit
    out = []
    for (split, regime), g in a.groupby(["split", "regime"], sort=False) if len(a) else []:
        full, clean = g[g["subset"] == "all"], g[g["subset"] == subset]
        if len(full) and len(clean) and int(clean["n"].iloc[0]) < int(full["n"].iloc[0]):
            out.append(
                f"{target} {split}, {regime}: "
                + describe_gap(
                    full["accuracy"].mean(),
                    clean["accuracy"].mean(),
                    f"accuracy on all {int(full['n'].iloc[0])} sentences",
                    f"on the {int(clean['n'].iloc[0])} {subset} sentences",
                )
                + "."
            )
    return out


def describe_counts(claims: pd.DataFrame, role: str = "primary") -> str:
    """'Of N primary claim rows: a reproduced, b partially reproduced, ...' (every verdict named, zeros included)."""
    rows = claims[claims["role"] == role]
    counts = rows["verdict"].value_counts()
    return (
        f"Of {len(rows)} {role} claim rows: "
        + ", ".join(f"{int(counts.get(v, 0))} {v.lower()}" for v in V.VERDICTS)
        + "."
    )


def blank(x: Any) -> str:
    """'' for None / nan, else the text."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def count(x: Any, prefix: str = "") -> str:
    return f"{prefix}{int(x):,}" if blank(x) and x else ""


def acc_cell(r: dict, s: str) -> str:
    """'mean ± std [low, high]' (percent); the std and interval left out where one seed leaves them undefined."""
    txt = num(r.get(f"{s}_mean"))
    if blank(r.get(f"{s}_std")):
        txt += f" ± {num(r[f'{s}_std'])}"
    if blank(r.get(f"{s}_ci_low")):
        txt += f" [{num(r[f'{s}_ci_low'])}, {num(r[f'{s}_ci_high'])}]"
    return txt


def split_size(size: dict[str, int], s: str) -> int:
    """The size of the whole split of an evaluation set 'split_subset' (a split's name has no '_'); 0 if unknown."""
    return size.get(s.split("_", 1)[0] + "_all", 0)


def table1_sets(d: pd.DataFrame) -> tuple[list[str], dict[str, int]]:
    """Table 1's evaluation sets (each split's `all`, then the clean subsets smaller than their split) and sizes."""
    sets = [c.removesuffix("_mean") for c in d.columns if c.endswith("_mean") and not c.startswith("paper")]
    size = {s: int(d[f"{s}_n"].max()) for s in sets if f"{s}_n" in d}
    main = [s for s in sets if s.endswith("_all")] + [
        s for s in sets if not s.endswith("_all") and size.get(s, 0) < split_size(size, s)
    ]
    return main, size


def table1_row(r: dict, main: list[str]) -> list[Any]:
    """One arm's row of Table 1: accuracy per evaluation set (the random draws' spread beside the first), counts."""
    cells = []
    for s in main:
        txt = acc_cell(r, s)
        if s == main[0] and blank(r.get("draws")):
            txt += f"; {int(r['draws'])} draws {num(r['draws_min'])}-{num(r['draws_max'])}"
        cells.append(txt)
    exact = count(r.get("bert_base_params")) + (
        f" ({count(r.get('bert_base_params_pooler'))} with the pooler)"
        if blank(r.get("bert_base_params_pooler"))
        else ""
    )
    return [
        r["regime"],
        r["strategy"],
        r["n_seeds"],
        *cells,
        blank(r.get("params")),
        blank(r.get("paper")),
        count(r.get("paper_params_stated"), "~"),
        exact,
    ]


def table1_section(t1: pd.DataFrame, target: str) -> list[str]:
    """Table 1 of one target: one row per regime and strategy family, the sentences per evaluation set above it."""
    d = t1[t1["target"] == target].dropna(axis=1, how="all")
    if d.empty:
        return []
    main, size = table1_sets(d)
    head = [
        "regime",
        "strategy",
        "seeds",
        *[s.replace("_", " ") for s in main],
        "trainable params (exact)",
        "paper",
        "paper params (stated)",
        "bert-base exact",
    ]
    rows = [table1_row(r._asdict(), main) for r in d.itertuples(index=False)]
    n = {s: size[s] for s in main if s in size}
    return [
        f"### Table 1: {TARGET_NAMES.get(target, target)}",
        "",
        "Accuracy in % as mean ± std over seeds [t-interval]; sentences per set: "
        + ", ".join(f"{s.replace('_', ' ')} {k}" for s, k in n.items())
        + ".",
        "",
        md_table(head, rows),
        "",
    ]


def setup_rows(params: Any, stated: dict[str, object], depth: int | None, width: int | None) -> list[list[str]]:
    """The paper's stated setup (data/paper/stated.csv, kind `setup`) beside this run's params, key by key."""
    rows = []
    for key, theirs in stated.items():
        node: Any = params
        for part in key.split("."):
            node = getattr(node, part, None)
        ours = vars(node) if hasattr(node, "__dataclass_fields__") else node
        rows.append(
            [
                key,
                "null" if theirs is None else str(theirs),
                "null" if ours is None else str(ours),
                "" if ours == theirs else "differs",
            ]
        )
    rows.append(
        [
            "model depth x width",
            f"{BERT_BASE['layers']} x {BERT_BASE['width']} (bert-base)",
            f"{depth} x {width}" if depth else "n/a",
            "",
        ]
    )
    return rows
