"""report.md, section by section: the claims first, then how to read them, the setup and its departures from the
paper, the power table, the evidence claim by claim; then the detail sections of
:mod:`~inflection_layers.reporting.sections_detail` (Table 1, the bands, the intervention, the lenses, the overlap
audit, the source models, method notes and timing). Each section is a function of the report's typed inputs and
judgement; :func:`render` joins them.
"""

from __future__ import annotations

import math
from typing import Any

from inflection_layers.reporting.markdown import (
    HOW_TO_READ,
    blank,
    describe_counts,
    interval_text,
    md_table,
    num,
    setup_rows,
    value_text,
)
from inflection_layers.reporting.paper import setup
from inflection_layers.reporting.sections_detail import (
    audit_section,
    bands_section,
    mechanism_section,
    notes_section,
    table1_block,
    timing_section,
)
from inflection_layers.reporting.stats import MOST_SEEDS

FIG_FOR = {
    "P1": ["fig1_accuracy_vs_params"],
    "P2": ["fig1_accuracy_vs_params"],
    "P5": ["fig2_entropy", "fig3_act_grad"],
    "P6": ["fig3_act_grad", "fig4_param_grad"],
    "P7": ["ski", "selectors"],
    "P8": ["fig2_entropy"],
    "P9": ["fig5_probes"],
    "P10": ["delta_cka"],
    "O1": ["random_bands"],
    "O2": ["random_bands"],
    "O4": ["intervene_gradient", "intervene_entropy"],
    "O6": ["anneal_gradient"],
    "O7": ["lazy_layers"],
    "O8": ["features"],
    "O9": ["features"],
    "O10": ["fig1_accuracy_vs_params"],
}


def header(inputs: Any) -> list[str]:
    p = inputs.params
    return [
        "# Attention saturation and gradient suppression at inflection layers: a reproduction",
        "",
        f"Profile `{p.study.profile}`: model `{p.model.name}` ({inputs.depth} layers); "
        f"targets {', '.join(p.study.targets)}; regimes {', '.join(p.study.regimes)}; "
        f"seeds {', '.join(map(str, p.study.seeds))}. Every number below is computed from the study's outputs, "
        "data/paper/stated.csv and the decision table fixed before the data (data/paper/decisions.csv).",
        "",
    ]


def claims_section(j: Any) -> list[str]:
    """The claims table: one row per claim, target and role; the deciding part's interval with its level."""
    rows = [
        [
            c.id + ("" if c.role == "primary" else f" ({c.role})"),
            c.target,
            c.claim,
            c.paper_value,
            value_text(c.ours, c.unit),
            interval_text(c.ci_low, c.ci_high, c.unit, c.level),
            f"{c.rule}; {c.test}",
            c.n_seeds,
            f"**{c.verdict}**",
        ]
        for c in j.claims.itertuples()
    ]
    head = ["id", "target", "claim", "paper", "ours", "interval (level)", "rule", "seeds", "verdict"]
    return (
        ["## Claims", "", md_table(head, rows), "", describe_counts(j.claims), "", "How to read a verdict:", ""]
        + [f"- {x}" for x in HOW_TO_READ]
        + [""]
    )


def limitations(inputs: Any) -> list[str]:
    """Every way this run's profile departs from the paper, generated from the params against stated.csv's setup,
    with the reason data/paper/departures.csv gives where it gives one."""
    p, stated = inputs.params, setup(inputs.paper)
    why = dict(zip(inputs.departures["key"], inputs.departures["why"], strict=True))
    out = []
    for key, theirs in stated.items():
        node: Any = p
        for part in key.split("."):
            node = getattr(node, part, None)
        ours = vars(node) if hasattr(node, "__dataclass_fields__") else node
        if ours != theirs:
            out.append(f"- `{key}`: {ours} here, {theirs} in the paper" + (f" ({why[key]})." if key in why else "."))
    draws = p.ski.random_draws
    out.append(f"- `ski.random_draws`: {draws} random band(s) per group; the paper has no random-band control.")
    out.append(f"- {len(p.study.seeds)} seed(s) per cell: the power table gives the seeds each claim needs.")
    out.append("- Overlap is measured by exact and phrase matches against SST-2; paraphrases are not detected.")
    return out


def setup_section(j: Any, inputs: Any) -> list[str]:
    rows = setup_rows(inputs.params, setup(inputs.paper), inputs.depth, j.evidence.width)
    return [
        "## Setup against the paper's, and the limitations",
        "",
        "The paper column is its stated setup (data/paper/stated.csv).",
        "",
        md_table(["setting", "paper", "this run", ""], rows),
        "",
        "Where this run departs from the paper:",
        "",
        *limitations(inputs),
        "",
    ]


def seeds_text(n: float) -> str:
    """A power table's seed count: '38', 'n/a' without an sd, 'over 1,000,000' beyond the search."""
    return f"over {MOST_SEEDS:,}" if n == math.inf else num(n, ".0f")


def power_section(j: Any, inputs: Any) -> list[str]:
    """Prospective power: the seeds each primary part needs for its claimed effect, at the paper's seed sd and ours."""
    p = inputs.params.report
    rows = [
        [
            r.id,
            r.target,
            r.part,
            f"{num(r.effect, '.3g')} {r.unit}",
            num(r.sd_paper, ".3g"),
            seeds_text(r.seeds_paper),
            num(r.sd_ours, ".3g"),
            seeds_text(r.seeds_ours),
            r.n_seeds,
        ]
        for r in j.power.itertuples()
    ]
    return [
        "## How many seeds each claim needs",
        "",
        "Seeds for a two-sided one-sample t-test over per-seed differences to detect the claimed effect with "
        f"power {p.power:g} at alpha {p.alpha:g}, at the paper's seed sd (two stated rows, taken as independent) "
        "and at ours ([power.csv](power.csv)). This is planning, not evidence: it never changes a verdict.",
        "",
        md_table(
            ["id", "target", "part", "effect", "sd (paper)", "seeds (paper)", "sd (ours)", "seeds (ours)", "seeds run"],
            rows,
        ),
        "",
    ]


def evidence_section(j: Any, figures: dict[str, str]) -> list[str]:
    """Every part of every claim, with the claim's reason and figures."""
    L = [
        "## Evidence, claim by claim",
        "",
        "Every part (claim_parts.csv): primary parts decide, extension rows are ours, context rows carry no verdict.",
        "",
    ]
    for cid in dict.fromkeys(j.claims["id"]):
        L += [f"### {cid}: {j.claims.loc[j.claims['id'] == cid, 'claim'].iloc[0]}", ""]
        L += [
            f"- **{c.target}{'' if c.role == 'primary' else ' (' + c.role + ')'}: {c.verdict}.** {c.reason}"
            for c in j.claims[j.claims["id"] == cid].itertuples()
        ]
        p = j.parts[j.parts["id"] == cid]
        if len(p):
            L += [
                "",
                md_table(
                    ["target", "role", "part", "ours", "interval (level)", "rule", "verdict"],
                    [
                        [
                            r.target,
                            r.role,
                            r.label,
                            value_text(r.ours, r.unit),
                            interval_text(r.ci_low, r.ci_high, r.unit, r.level),
                            blank(r.rule),
                            blank(r.verdict) or "context",
                        ]
                        for r in p.itertuples()
                    ],
                ),
            ]
        L += [""] + [f"![{figures[s]}]({s}.png)" for s in FIG_FOR.get(cid, []) if s in figures] + [""]
    return L


def render(inputs: Any, j: Any, drawn: list[tuple[str, str]]) -> str:
    """The whole report."""
    figures = dict(drawn)
    L = (
        header(inputs)
        + claims_section(j)
        + setup_section(j, inputs)
        + power_section(j, inputs)
        + evidence_section(j, figures)
    )
    L += (
        table1_block(j, inputs)
        + bands_section(j, inputs, figures)
        + mechanism_section(figures, inputs)
        + audit_section(j, inputs)
    )
    L += notes_section(inputs, figures) + timing_section(j, inputs)
    L += [
        "## Files",
        "",
        ", ".join(f"[{s}.csv]({s}.csv)" for s, _ in drawn)
        + "; claims.csv, claim_parts.csv, power.csv, comparisons.csv, "
        "table1.csv, parameters.csv, selection_ablation.csv, bands.csv, gradient_measures.csv, audit.csv, timing.csv.",
        "",
    ]
    return "\n".join(L)
