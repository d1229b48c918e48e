"""The paper's accuracy and parameter claims (P1-P4, P11), one function each, pure over the Evidence;
:func:`all_claims` runs every claim, the paper's and ours (:mod:`~inflection_layers.reporting.claims_layers`:
P5-P7; :mod:`~inflection_layers.reporting.claims_depth`: P8-P10; :mod:`~inflection_layers.reporting.claims_ours`:
O1-O3, O10, O11; :mod:`~inflection_layers.reporting.claims_mechanism`: O4-O9).

Accuracy claims read the per-seed accuracy on the target's validation split, all sentences, paired by seed. Every
part's rule and effect come from the decision table (data/paper/decisions.csv); a paper claim is decided by its
primary parts, on the paper's own strategies and regimes, and our extra strategies are extension rows.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from inflection_layers.reporting.claims_base import (
    CLAIM_COLUMNS,
    PAPER_STRATEGIES,
    PART_COLUMNS,
    SEL,
    Evidence,
    arm,
    category_part,
    claim_row,
    has,
    missing_part,
    paired,
    part,
    primary,
)
from inflection_layers.reporting.paper import bert_base_parameters


def paper_acc(ev: Evidence, regime: str, strategy: str) -> str:
    """The paper's accuracy of one arm as text, in percent ('91.20 ± 0.30'; 'n/a' where not stated)."""
    m, s = ev.paper.accuracy(regime, strategy)
    return "n/a" if m is None else f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")


def diff_text(d: float | None) -> str:
    """An accuracy difference as text ('+1.20 points'; 'n/a' for None)."""
    return "n/a" if d is None else f"{100 * d:+.2f} points"


def over_under(
    ev: Evidence, pid: str, role: str, acc: pd.DataFrame, target: str, strategies: tuple[str, ...]
) -> list[dict]:
    """OVER - UNDER per seed for each strategy present in both regimes (a missing one: Inconclusive)."""
    out = []
    for s in strategies:
        if has(acc, s):
            out.append(
                part(
                    ev,
                    pid,
                    role,
                    s,
                    target,
                    f"over - under, {s}",
                    paired(arm(acc, "over", s), arm(acc, "under", s)),
                    paper_value=diff_text(ev.paper.gap()),
                )
            )
        else:
            out.append(
                missing_part(
                    ev, pid, role, s, target, f"over - under, {s}", "the profile lacks this strategy in both regimes"
                )
            )
    return out


def p1(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P1: OVER outperforms UNDER by about the stated gap, for every strategy of the paper (and, as ours, head,
    bitfit)."""
    acc, gap = primary(ev.acc, target), ev.paper.gap()
    text = f"OVER outperforms UNDER by about {'n/a' if gap is None else f'{100 * gap:.2f}'} points across all settings"
    parts = over_under(ev, "P1", "primary", acc, target, PAPER_STRATEGIES)
    rows = [claim_row(ev, "P1", "primary", target, text, "7 (i)", f"{diff_text(gap)} for every strategy", parts)]
    ext = over_under(ev, "P1", "extension", acc, target, ("head", "bitfit"))
    rows.append(claim_row(ev, "P1", "extension", target, text + " (our extra strategies)", "ours", "n/a", ext, "ours"))
    return rows, parts + ext


def p2(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P2: under OVER, selective LoRA beats shallow, full and LoRA-all (per-seed differences)."""
    acc = primary(ev.acc, target)
    text = "under OVER, selective LoRA at the SKI band is the most accurate method (above shallow, full and LoRA-all)"
    paper_value = f"selective {paper_acc(ev, 'over', SEL)} vs " + ", ".join(
        f"{s} {paper_acc(ev, 'over', s)}" for s in ("shallow", "full", "lora_all")
    )
    parts = []
    for s in ("shallow", "full", "lora_all"):
        label = f"over: selective - {s}"
        if has(acc, SEL, ("over",)) and has(acc, s, ("over",)):
            d = ev.paper.accuracy_difference("over", SEL, "over", s)
            parts.append(
                part(
                    ev,
                    "P2",
                    "primary",
                    s,
                    target,
                    label,
                    paired(arm(acc, "over", SEL), arm(acc, "over", s)),
                    paper_value=diff_text(d),
                )
            )
        else:
            parts.append(
                missing_part(
                    ev, "P2", "primary", s, target, label, "the profile lacks OVER selective LoRA or this rival"
                )
            )
    return [claim_row(ev, "P2", "primary", target, text, "7 (ii), 7.2, 8", paper_value, parts)], parts


def p3(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P3: LoRA-all performs identically to shallow unfreezing under OVER (TOST within the paper's seed std)."""
    acc = primary(ev.acc, target)
    text = "LoRA everywhere performs identically to shallow unfreezing"
    paper_value = f"lora_all {paper_acc(ev, 'over', 'lora_all')} vs shallow {paper_acc(ev, 'over', 'shallow')}"
    label = "over: lora_all - shallow"
    if has(acc, "lora_all", ("over",)) and has(acc, "shallow", ("over",)):
        values = paired(arm(acc, "over", "lora_all"), arm(acc, "over", "shallow"))
        parts = [
            part(
                ev,
                "P3",
                "primary",
                "lora_all-shallow",
                target,
                label,
                values,
                paper_value=diff_text(ev.paper.accuracy_difference("over", "lora_all", "over", "shallow")),
            )
        ]
    else:
        parts = [
            missing_part(
                ev, "P3", "primary", "lora_all-shallow", target, label, "the profile lacks OVER lora_all or shallow"
            )
        ]
    return [claim_row(ev, "P3", "primary", target, text, "7 (iii), 8", paper_value, parts)], parts


def p4_specs(acc: pd.DataFrame) -> list[tuple[str, str, Callable[[], pd.Series]]]:
    """P4's parts: (key, label, the per-seed values, computed on demand)."""
    return [
        (
            "under-shallow",
            "under: selective - shallow (claimed < 0)",
            lambda: paired(arm(acc, "under", SEL), arm(acc, "under", "shallow")),
        ),
        (
            "under-full",
            "under: selective - full (claimed < 0)",
            lambda: paired(arm(acc, "under", SEL), arm(acc, "under", "full")),
        ),
        (
            "interaction",
            "(selective - shallow) over minus under (claimed > 0)",
            lambda: paired(
                paired(arm(acc, "over", SEL), arm(acc, "over", "shallow")),
                paired(arm(acc, "under", SEL), arm(acc, "under", "shallow")),
            ),
        ),
        (
            "selective-over-under",
            "selective: over - under",
            lambda: paired(arm(acc, "over", SEL), arm(acc, "under", SEL)),
        ),
    ]


def p4(ev: Evidence, target: str) -> tuple[list[dict], list[dict]]:
    """P4: under UNDER selective LoRA degrades (below shallow and full), the gain of selective over shallow is
    larger under OVER, and UNDER selective is below OVER selective. The paper's own numbers contradict the first
    part; said so."""
    acc = primary(ev.acc, target)
    own = ev.paper.accuracy_difference("under", SEL, "under", "shallow")
    text = "under UNDER, selective LoRA degrades: below shallow and full, and below OVER selective LoRA"
    paper_value = (
        f"under selective {paper_acc(ev, 'under', SEL)} vs under shallow {paper_acc(ev, 'under', 'shallow')}: "
        f"the paper's own difference is {diff_text(own)}, against its claimed degradation"
    )
    why = "the profile lacks selective LoRA, shallow or full in both regimes"
    parts = []
    for key, label, values in p4_specs(acc):
        ok = has(acc, SEL) and has(acc, "shallow") and (key != "under-full" or has(acc, "full", ("under",)))
        parts.append(
            part(ev, "P4", "primary", key, target, label, values())
            if ok
            else missing_part(ev, "P4", "primary", key, target, label, why)
        )
    return [claim_row(ev, "P4", "primary", target, text, "7 (iv), 7.2, 8", paper_value, parts)], parts


def _sig_round(x: int, like: int) -> int:
    """x rounded to as many significant digits as `like` has (110,000,000 has 2)."""
    digits = max(1, len(str(abs(int(like))).rstrip("0")))
    return int(float(f"{x:.{digits}g}"))


def p11_exact(ev: Evidence, strategy: str) -> list[int]:
    """The exact bert-base counts of one strategy (shallow: without and with the pooler), where defined."""
    p = ev.params
    rank, targets, k = p.lora.rank, len(p.lora.targets), p.finetune.shallow_k
    pools = (False, True) if strategy == "shallow" else (True,)
    exact = (bert_base_parameters(strategy, rank, targets, k, ev.paper.band(), pooler=pool) for pool in pools)
    return [e for e in exact if e is not None]


def p11_counts(ev: Evidence) -> tuple[list[dict], list[str]]:
    """P11a's part (each stated count at its precision against the exact arithmetic), and the stated counts."""
    observed, shown, stated_text = [], [], []
    for s in PAPER_STRATEGIES:
        stated, exact = ev.paper.stated_parameters(s), p11_exact(ev, s)
        if stated is None or not exact:
            continue
        stated_text.append(f"{s} ~{stated:,}")
        observed.append(any(_sig_round(e, stated) == stated for e in exact))
        shown.append(
            f"{s}: stated ~{stated:,}, exact {' or '.join(f'{e:,}' for e in exact)} ({stated / exact[0]:.2f}x)"
        )
    if not observed:
        why = "stated.csv gives no parameter count"
        return [missing_part(ev, "P11a", "primary", "counts", "all", "stated counts", why)], stated_text
    label, paper_value = "each stated count at its precision", "; ".join(stated_text)
    counts = category_part(
        ev,
        "P11a",
        "primary",
        "counts",
        "all",
        label,
        observed,
        True,
        shown=shown,
        expected_text="the exact count",
        paper_value=paper_value,
    )
    return [counts], stated_text


def p11(ev: Evidence) -> tuple[list[dict], list[dict]]:
    """P11a: the stated parameter counts against the exact arithmetic for bert-base; P11b: '99.7% fewer'."""
    counts, stated_text = p11_counts(ev)
    text = "the stated trainable-parameter counts agree with the exact arithmetic"
    rows = [claim_row(ev, "P11a", "primary", "all", text, "6, 7", "; ".join(stated_text) or "n/a", counts)]
    ratio = _fewer(ev)
    text = "selective LoRA trains 99.7% fewer parameters than full unfreezing"
    rows.append(claim_row(ev, "P11b", "primary", "all", text, "6, 7", "99.7% fewer", ratio))
    return rows, counts + ratio


def _fewer(ev: Evidence) -> list[dict]:
    """'99.7% fewer': 1 - selective / full, exactly for bert-base at the stated precision (0.1%), and ours (context)."""
    paper, p = ev.paper, ev.params
    sel = bert_base_parameters("lora_selective", p.lora.rank, len(p.lora.targets), p.finetune.shallow_k, paper.band())
    full = bert_base_parameters("full", p.lora.rank, len(p.lora.targets), p.finetune.shallow_k, paper.band())
    exact = 100 * (1 - sel / full)
    ours = ev.cells.groupby("family")["trainable_parameters"].mean() if len(ev.cells) else pd.Series(dtype=float)
    note = f"; ours {100 * (1 - ours[SEL] / ours['full']):.2f}% fewer" if SEL in ours and "full" in ours else ""
    return [
        category_part(
            ev,
            "P11b",
            "primary",
            "ratio",
            "all",
            "1 - selective / full for bert-base, to 0.1%",
            [round(exact, 1)],
            99.7,
            shown=[f"exactly {exact:.3f}% ({sel:,} of {full:,}){note}"],
            expected_text="99.7",
            paper_value="99.7% fewer",
        )
    ]


def all_claims(ev: Evidence, targets: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every claim per target (P11 once; O3 on rt, against cr), in the report's order: (claims.csv, claim_parts.csv)."""
    from inflection_layers.reporting import claims_depth as D
    from inflection_layers.reporting import claims_layers as L
    from inflection_layers.reporting import claims_mechanism as M
    from inflection_layers.reporting import claims_ours as O

    per_target = [
        p1,
        p2,
        p3,
        p4,
        L.p5,
        L.p6,
        L.p7,
        D.p8,
        D.p9,
        D.p10,
        O.o1,
        O.o2,
        M.o4,
        M.o5,
        M.o6,
        M.o7,
        M.o8,
        M.o9,
        O.o10,
        O.o11,
    ]
    rows, parts = [], []
    for fn in per_target:
        for t in targets:
            r, ps = fn(ev, t)
            rows += r
            parts += ps
    for r, ps in (p11(ev), O.o3(ev) if "rt" in targets else ([], [])):
        rows += r
        parts += ps
    order = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11a", "P11b"] + [
        f"O{i}" for i in range(1, 12)
    ]
    claims = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    claims = claims.iloc[
        sorted(
            range(len(claims)),
            key=lambda i: (order.index(claims["id"].iloc[i]), claims["role"].iloc[i] != "primary", i),
        )
    ]
    return claims.reset_index(drop=True), pd.DataFrame(parts, columns=PART_COLUMNS)
