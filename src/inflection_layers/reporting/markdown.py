"""report.md: the claim table first, then evidence, Table 1, selection, overlap audit, method notes, limitations
and timing. Every sentence that states a finding is made by a small function from the numbers it describes
(``describe_*``), so opposite numbers give the opposite sentence.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from inflection_layers.cells import TARGET_NAMES
from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.paper import BERT_BASE

HOW_TO_READ = [
    "**Reproduced**: the claim's direction holds over seeds: the t-interval of the per-seed differences excludes 0 on the claimed side "
    "(an equivalence claim: TOST within the margin; a claim about layers or bands: every observed cell matches).",
    "**Not reproduced**: the interval excludes 0 on the other side, or excludes the effect the paper states while the study could detect it "
    "(detectable effect at the report's power <= the stated effect); for layers or bands: no cell matches.",
    "**Partially reproduced**: some parts of a claim are reproduced and others are not (or are inconclusive); for layers or bands: some cells match.",
    "**Inconclusive**: the interval includes 0 and the study could not detect the claimed effect, or fewer than 2 seeds, or the profile lacks the inputs.",
    "The seed is the unit: per-seed paired differences, a Student-t interval over seeds; the per-example tests are secondary (comparisons.csv).",
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


def interval_text(lo: float, hi: float, unit: str) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:.3g}x, {hi:.3g}x]" if unit == "ratio" else f"[{lo:+.3g}, {hi:+.3g}]"


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


def describe_over_training(source: dict[str, dict]) -> str:
    """Whether OVER looks over-trained, from the source curves: final train loss vs UNDER, and dev loss after its best epoch."""
    over = [j for k, j in source.items() if k.startswith("over-")]
    under = [j for k, j in source.items() if k.startswith("under-")]
    if not over or not under:
        return "The profile lacks one of the regimes: over-training cannot be judged."
    lo, lu = (sum(j.get("train_loss", math.nan) for j in js) / len(js) for js in (over, under))
    text = describe_gap(lo, lu, "OVER's final SST-2 training loss", "UNDER's", unit="nats") + "."
    rises = []
    for j in over:
        c = [x for x in j.get("curve", []) if x.get("dev_loss") is not None]
        if len(c) >= 2:
            best = min(range(len(c)), key=lambda i: c[i]["dev_loss"])
            rises.append(c[-1]["dev_loss"] - c[best]["dev_loss"])
    if not rises:
        return text + " OVER has fewer than two dev evaluations: its dev loss trend is unknown."
    k = sum(r > 0 for r in rises)
    if k:
        return (
            text
            + f" OVER's SST-2 dev loss rose after its best epoch in {k} of {len(rises)} seeds (by up to {max(rises):.3f} nats): the signature of over-training."
        )
    return (
        text
        + f" OVER's SST-2 dev loss did not rise after its best epoch in any of {len(rises)} seeds: no sign of over-training on SST-2 dev."
    )


def describe_rule(ski: Any, depth: int | None, ablation: pd.DataFrame) -> str:
    """Which selection rule the LoRA cells used and why, from params and the ablation's band sizes."""
    cap = "no cap" if ski.max_band is None else f"at most {ski.max_band} layers"
    rule = f"{'capped ' if ski.max_band is not None else ''}{'local maxima of SKI' if ski.method == 'local_max' else 'the greedy rule'} (alpha {ski.alpha:g}, +-{ski.s}, {cap})"
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
    got = [{k: (p or {}).get(k) for k in keys} for p in (selection["params"] if "params" in selection else [])]
    if not got:
        return "The selection files do not record their rule."
    off = sum(g != want for g in got)
    return (
        f"All {len(got)} groups' selections record this rule."
        if not off
        else f"{off} of {len(got)} groups' selections record another rule than params.yaml's: rerun `dvc repro select`."
    )


def describe_power(parts: pd.DataFrame) -> str:
    """How many statistical parts could detect the effect they test, from their detectable effects."""
    stat = parts[parts["test"].isin(["greater", "less"]) & parts["in_verdict"]] if len(parts) else parts
    if not len(stat):
        return "no statistical part is counted in a verdict"
    mde, eff = pd.to_numeric(stat["detectable_effect"], errors="coerce"), pd.to_numeric(stat["effect"], errors="coerce")
    none = int(mde.isna().sum())
    sized = int((eff.notna() & mde.notna()).sum())
    under = int((mde > eff).sum())
    text = f"{none} of {len(stat)} statistical parts have no detectable effect (fewer than 2 seeds or no spread)"
    return text + (
        f"; of the {sized} that test a stated size, {under} could not detect it"
        if sized
        else "; no part tests a stated size with a detectable effect"
    )


def describe_clean(audit: pd.DataFrame, target: str, subset: str = "clean_sst2") -> list[str]:
    """Per regime: accuracy on all sentences against a clean subset (mean over strategy families and seeds)."""
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


def describe_counts(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    return (
        f"Of {len(claims)} claim rows: " + ", ".join(f"{int(counts.get(v, 0))} {v.lower()}" for v in V.VERDICTS) + "."
    )


def claim_table(claims: pd.DataFrame) -> list[str]:
    rows = [
        [
            c.id + (" (ours)" if c.source == "ours" else ""),
            c.target,
            c.claim,
            c.paper_value,
            value_text(c.ours, c.unit),
            interval_text(c.ci_low, c.ci_high, c.unit),
            f"**{c.verdict}**",
        ]
        for c in claims.itertuples()
    ]
    return [
        md_table(["id", "target", "claim", "paper", "ours", "interval", "verdict"], rows),
        "",
        describe_counts(claims),
        "",
    ]


def evidence(
    claims: pd.DataFrame, parts: pd.DataFrame, figures: dict[str, str], fig_for: dict[str, list[str]]
) -> list[str]:
    L = [
        "## Evidence, claim by claim",
        "",
        "Every part of every claim (claim_parts.csv); parts marked context are shown, not counted.",
        "",
    ]
    for cid in dict.fromkeys(claims["id"]):
        L += [f"### {cid}: {claims.loc[claims['id'] == cid, 'claim'].iloc[0]}", ""]
        for c in claims[claims["id"] == cid].itertuples():
            L += [f"- **{c.target}: {c.verdict}.** {c.reason}"]
        p = parts[parts["id"] == cid]
        if len(p):
            L += [
                "",
                md_table(
                    ["target", "part", "ours", "interval", "verdict", "counted"],
                    [
                        [
                            r.target,
                            r.part,
                            value_text(r.ours, r.unit),
                            interval_text(r.ci_low, r.ci_high, r.unit),
                            r.verdict,
                            "yes" if r.in_verdict else "context",
                        ]
                        for r in p.itertuples()
                    ],
                ),
            ]
        L += [""] + [f"![{figures[s]}]({s}.png)" for s in fig_for.get(cid, []) if s in figures] + [""]
    return L


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


def table1_section(t1: pd.DataFrame, target: str) -> list[str]:
    d = t1[t1["target"] == target].dropna(axis=1, how="all")
    if d.empty:
        return []
    sets = [c.removesuffix("_mean") for c in d.columns if c.endswith("_mean") and not c.startswith("paper")]
    size = {s: int(d[f"{s}_n"].max()) for s in sets if f"{s}_n" in d}
    whole = lambda s: size.get(s.split("_", 1)[0] + "_all", 0)  # noqa: E731  (a split's name has no '_')
    main = [s for s in sets if s.endswith("_all")] + [
        s for s in sets if not s.endswith("_all") and size.get(s, 0) < whole(s)
    ]
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
    rows = []
    for r in d.itertuples(index=False):
        r = r._asdict()
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
        rows.append(
            [
                r["regime"],
                r["strategy"],
                r["n_seeds"],
                *cells,
                blank(r.get("params")),
                blank(r.get("paper")),
                count(r.get("paper_params_stated"), "~"),
                exact,
            ]
        )
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


def render(d: Any) -> str:
    """The whole report from a namespace of the report's frames (see report.main)."""
    p = d.params
    L = [
        "# Attention saturation and gradient suppression at inflection layers: a reproduction",
        "",
        f"Profile `{p.study.profile}`: model `{p.model.name}` ({d.depth} layers, width {d.width}); targets {', '.join(p.study.targets)}; "
        f"regimes {', '.join(p.study.regimes)}; seeds {', '.join(map(str, p.study.seeds))}; every number below is computed from the study's outputs "
        "and data/paper/stated.csv.",
        "",
        "## Claims",
        "",
    ]
    L += claim_table(d.claims)
    L += ["How to read a verdict:", ""] + [f"- {x}" for x in HOW_TO_READ] + [""]
    L += [
        "## Setup against the paper's",
        "",
        "The paper column is the setup the paper states (data/paper/stated.csv, section 6), key by key.",
        "",
        md_table(["setting", "paper", "this run", ""], setup_rows(p, d.stated_setup, d.depth, d.width)),
        "",
    ]
    L += evidence(d.claims, d.parts, dict(d.figures), d.fig_for)
    L += ["## Table 1", ""]
    for t in p.study.targets:
        L += table1_section(d.table1, t)
    L += [
        "Data: [table1.csv](table1.csv); every comparison: [comparisons.csv](comparisons.csv).",
        "",
        "### Trainable parameters",
        "",
        md_table(
            [
                "strategy",
                "ours (exact)",
                "our formula",
                "formula matches",
                "paper (stated)",
                "bert-base exact",
                "stated.csv note",
            ],
            [
                [
                    r.strategy,
                    f"{r.ours_min:,}" if r.ours_min == r.ours_max else f"{r.ours_min:,}-{r.ours_max:,}",
                    blank(getattr(r, "formula", None)),
                    blank(getattr(r, "formula_matches", None)),
                    count(r.paper_stated, "~"),
                    count(r.bert_base_exact)
                    + (
                        f" ({count(r.bert_base_exact_with_pooler)} with the pooler)"
                        if blank(r.bert_base_exact_with_pooler)
                        else ""
                    ),
                    blank(r.paper_note),
                ]
                for r in d.parameters.itertuples()
            ],
        ),
        "",
    ]
    L += [
        "## Layer selection",
        "",
        describe_rule(p.ski, d.depth, d.ablation) + " " + describe_stale(p.ski, d.selection),
        "",
    ]
    if len(d.ablation):
        g = d.ablation.groupby(["method", "alpha", "s", "cap"], as_index=False, sort=False).agg(
            size=("size", "mean"), same=("equals_study_band", "mean"), rule=("study_rule", "any")
        )
        L += [
            "Each rule variant on the saved diagnostics (no training): mean band size and the share of groups where it picks the study's band "
            "([selection_ablation.csv](selection_ablation.csv); every selector's band: [bands.csv](bands.csv)).",
            "",
            md_table(
                ["method", "alpha", "s", "cap", "mean size", "same band as the study", ""],
                [
                    [
                        r.method,
                        r.alpha,
                        r.s,
                        r.cap,
                        f"{r.size:.1f}",
                        f"{100 * r.same:.0f}%",
                        "the study's rule" if r.rule else "",
                    ]
                    for r in g.itertuples()
                ],
            ),
            "",
        ]
    L += [f"![{dict(d.figures)[s]}]({s}.png)" for s in ("ski", "selectors", "random_bands")] + [""]
    L += (
        ["## Overlap audit", ""]
        + [
            f"- {describe_overlap(t, s, x.get('n', 0), x.get('in_source'), x.get('in_sst2'), x.get('phrase_covered'))}"
            for t, by in d.data.get("audit", {}).items()
            for s, x in by.items()
        ]
        + [""]
    )
    a = d.audit[d.audit["strategy"].isin(["none", "lora_selective", "full"])] if len(d.audit) else d.audit
    if len(a):
        w = a.pivot_table(
            index=["target", "split", "subset", "n"], columns=["regime", "strategy"], values="accuracy", sort=False
        )
        L += [f"- {x}" for t in p.study.targets for x in describe_clean(d.audit, t)] + [""]
        L += [
            "Accuracy (%) by evaluation set, mean over seeds (every strategy: [audit.csv](audit.csv)):",
            "",
            md_table(
                ["target", "split", "subset", "sentences", *[f"{r} / {s}" for r, s in w.columns]],
                [[*k, *[num(v) for v in row]] for k, row in zip(w.index, w.to_numpy())],
            ),
            "",
        ]
    L += [
        "## Source models",
        "",
        describe_over_training(d.source),
        "",
        f"![{dict(d.figures)['source_curves']}](source_curves.png)",
        "",
    ]
    L += [
        "## Statistics and method notes",
        "",
        f"- Seeds are the unit: per-seed paired differences, mean and {100 * p.report.confidence:g}% Student-t interval (stats.seed_interval); "
        f"the smallest effect detectable at power {p.report.power:g} and alpha {p.report.alpha:g} (stats.detectable_effect). "
        "A part is Inconclusive when the interval includes 0 and the detectable effect exceeds the stated one.",
        "- Equivalence (P3, P6 'comparable'): TOST with the margin named in the part's reason (verdicts.equivalence_margin).",
        f"- comparisons.csv adds a hierarchical bootstrap (seeds, then sentences; {p.report.bootstrap:,} resamples) and per-seed exact McNemar "
        "tests (secondary), with Holm's correction over each target x evaluation set's family of seed-level p-values.",
        "- The paper's layer indices (of 12) are compared at the same relative depth; its inflection layers are the contiguous run of its band. "
        "Gradient ratios are compared on the log scale.",
        "- verdict_code in metrics/summary.json: 1 Reproduced, 0.5 Partially reproduced, 0 Not reproduced, -1 Inconclusive.",
        "",
    ]
    L += [
        "## Limitations",
        "",
        f"- {len(p.study.seeds)} seed(s): {describe_power(d.parts)}.",
        f"- The model is `{p.model.name}` ({d.depth} layers), "
        + (
            "the paper's model."
            if p.model.name == "bert-base-uncased"
            else "not the paper's bert-base: layer claims are compared by relative depth."
        ),
        "- Overlap is measured by exact and phrase matches against SST-2; paraphrases are not detected.",
        "",
    ]
    L += [
        "## Timing",
        "",
        md_table(
            ["stage", "items", "wall time (s)", "share", "tokens/s"],
            [
                [r.stage, r.items, num(r.wall_seconds, ".1f"), f"{100 * r.share:.1f}%", num(r.tokens_per_second, ".0f")]
                for r in d.timing.itertuples()
            ],
        ),
        "",
        "Precision: " + "; ".join(f"{k} ({v})" for k, v in d.precision.items()) + ".",
        "",
    ]
    L += [
        "## Files",
        "",
        ", ".join(f"[{s}.csv]({s}.csv)" for s, _ in d.figures)
        + "; claims.csv, claim_parts.csv, comparisons.csv, table1.csv, parameters.csv, "
        "selection_ablation.csv, bands.csv, audit.csv, timing.csv.",
        "",
    ]
    return "\n".join(L)
