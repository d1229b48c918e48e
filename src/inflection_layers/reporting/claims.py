"""The paper's accuracy and parameter claims (P1-P4, P11) and ours (O1-O3), one function each, pure over the
:class:`~inflection_layers.reporting.claims_base.Evidence` DataFrames; :func:`all_claims` runs every claim (the layer
claims P5-P10 are in :mod:`inflection_layers.reporting.claims_layers`).

Accuracy claims read the per-seed accuracy on the target's validation split, all sentences; each
comparison is paired by seed. The effect a part is about is the paper's own stated difference where it
states one (from stated.csv), else None: a direction only.
"""

from __future__ import annotations

import pandas as pd

from inflection_layers.cells import LORA_STRATEGIES, PLAIN_STRATEGIES
from inflection_layers.reporting import verdicts as V
from inflection_layers.reporting.claims_base import (
    CLAIM_COLUMNS,
    PART_COLUMNS,
    Evidence,
    arm,
    category_part,
    claim_row,
    missing_part,
    paired,
    primary,
    seed_part,
)
from inflection_layers.reporting.paper import bert_base_parameters, lora_parameters

SEL = "lora_selective"
FAMILIES = PLAIN_STRATEGIES + LORA_STRATEGIES


def families(acc: pd.DataFrame) -> list[str]:
    """The strategy families present (lora_random as one, the mean of its draws), in study order."""
    have = set(acc.loc[acc["strategy"] == acc["family"], "strategy"])
    return [f for f in FAMILIES if f in have]


def both(acc: pd.DataFrame, strategy: str, regimes: tuple[str, ...] = ("under", "over")) -> bool:
    return all(((acc["regime"] == r) & (acc["strategy"] == strategy)).any() for r in regimes)


def paper_acc(ev: Evidence, regime: str, strategy: str) -> str:
    m, s = ev.paper.accuracy(regime, strategy)
    return "n/a" if m is None else f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")


def paper_diff(ev: Evidence, a: tuple[str, str], b: tuple[str, str]) -> float | None:
    return ev.paper.accuracy_difference(*a, *b)


def diff_text(d: float | None) -> str:
    return "n/a" if d is None else f"{100 * d:+.2f} points"


def _missing(
    pid: str, target: str, text: str, section: str, paper_value: str, label: str, why: str
) -> tuple[dict, list[dict]]:
    """A claim whose inputs this profile lacks: one Inconclusive part with the reason."""
    part = missing_part(pid, target, label, why)
    return claim_row(pid, target, text, section, paper_value, [part]), [part]


def p1(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P1: OVER outperforms UNDER by about the stated gap, for every strategy (per-seed OVER - UNDER)."""
    acc, gap = primary(ev.acc, target), ev.paper.gap()
    text = f"OVER outperforms UNDER by about {'n/a' if gap is None else f'{100 * gap:.2f}'} points across all settings"
    paper_value = f"{diff_text(gap)} for every strategy"
    fams = [f for f in families(acc) if f != "none" and both(acc, f)]
    if not fams:
        return _missing(
            "P1",
            target,
            text,
            "7 (i)",
            paper_value,
            "over - under",
            "the profile lacks an UNDER/OVER pair of adapted cells",
        )
    effect = gap if gap and gap > 0 else None
    diffs = {f: paired(arm(acc, "over", f), arm(acc, "under", f)) for f in fams}
    mean = pd.concat(diffs.values(), axis=1).dropna().mean(axis=1)
    parts = [
        seed_part(
            "P1",
            target,
            "over - under, mean over the adapted strategies",
            mean,
            "greater",
            ev,
            effect=effect,
            in_verdict=False,
            paper_value=paper_value,
        )
    ]
    parts += [
        seed_part("P1", target, f"over - under, {f}", d, "greater", ev, effect=effect, paper_value=diff_text(gap))
        for f, d in diffs.items()
    ]
    if both(acc, "none"):
        parts.append(
            seed_part(
                "P1",
                target,
                "over - under, none (the source models before adaptation)",
                paired(arm(acc, "over", "none"), arm(acc, "under", "none")),
                "greater",
                ev,
                effect=effect,
                in_verdict=False,
            )
        )
    return claim_row("P1", target, text, "7 (i)", paper_value, parts), parts


def p2(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P2: under OVER, selective LoRA beats shallow, full and LoRA-all (per-seed differences)."""
    acc = primary(ev.acc, target)
    rivals = [s for s in ("lora_all", "shallow", "full") if both(acc, s, ("over",))]
    text = "under OVER, selective LoRA at the SKI band is the most accurate method (above LoRA-all, shallow and full)"
    paper_value = f"selective {paper_acc(ev, 'over', SEL)} vs " + ", ".join(
        f"{s} {paper_acc(ev, 'over', s)}" for s in ("lora_all", "shallow", "full")
    )
    if not rivals or not both(acc, SEL, ("over",)):
        return _missing(
            "P2",
            target,
            text,
            "7 (ii)",
            paper_value,
            "selective - rivals",
            "the profile lacks OVER selective LoRA or its rivals",
        )
    parts = []
    for s in rivals:
        d = paper_diff(ev, ("over", SEL), ("over", s))
        parts.append(
            seed_part(
                "P2",
                target,
                f"over: selective - {s}",
                paired(arm(acc, "over", SEL), arm(acc, "over", s)),
                "greater",
                ev,
                effect=d if d and d > 0 else None,
                paper_value=diff_text(d),
            )
        )
    return claim_row("P2", target, text, "7 (ii), 7.2, 8", paper_value, parts), parts


def p3(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P3: LoRA-all performs identically to shallow unfreezing under OVER (TOST equivalence)."""
    acc = primary(ev.acc, target)
    text = "LoRA everywhere performs identically to shallow unfreezing"
    paper_value = f"lora_all {paper_acc(ev, 'over', 'lora_all')} vs shallow {paper_acc(ev, 'over', 'shallow')}"
    if not (both(acc, "lora_all", ("over",)) and both(acc, "shallow", ("over",))):
        return _missing(
            "P3",
            target,
            text,
            "7 (iii)",
            paper_value,
            "lora_all - shallow",
            "the profile lacks OVER lora_all or shallow",
        )
    stds = [s for s in (ev.paper.accuracy("over", "lora_all")[1], ev.paper.accuracy("over", "shallow")[1]) if s]
    try:
        margin, why = V.equivalence_margin(max(stds) if stds else None, ev.paper.smallest_interpreted_difference())
    except ValueError as e:
        return _missing("P3", target, text, "7 (iii)", paper_value, "lora_all - shallow", str(e))
    part = seed_part(
        "P3",
        target,
        "over: lora_all - shallow",
        paired(arm(acc, "over", "lora_all"), arm(acc, "over", "shallow")),
        "equivalent",
        ev,
        margin=margin,
        margin_reason=why,
        paper_value=diff_text(paper_diff(ev, ("over", "lora_all"), ("over", "shallow"))),
    )
    return claim_row("P3", target, text, "7 (iii), 8", paper_value, [part]), [part]


def p4(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """P4: under UNDER selective LoRA degrades (below shallow and full), and the gain of selective over shallow is
    larger under OVER than under UNDER; UNDER selective is below OVER selective."""
    acc = primary(ev.acc, target)
    text = "under UNDER, selective LoRA degrades: below shallow and full, and below OVER selective LoRA"
    own = paper_diff(ev, ("under", SEL), ("under", "shallow"))
    paper_value = f"under selective {paper_acc(ev, 'under', SEL)} vs under shallow {paper_acc(ev, 'under', 'shallow')} (the paper's own difference {diff_text(own)})"
    if not both(acc, SEL):
        return _missing(
            "P4",
            target,
            text,
            "7 (iv)",
            paper_value,
            "under selective",
            "the profile lacks selective LoRA in both regimes",
        )
    parts = []
    for s in ("shallow", "full"):
        if both(acc, s, ("under",)):
            d = paper_diff(ev, ("under", SEL), ("under", s))
            parts.append(
                seed_part(
                    "P4",
                    target,
                    f"under: selective - {s} (claimed < 0)",
                    paired(arm(acc, "under", SEL), arm(acc, "under", s)),
                    "less",
                    ev,
                    paper_value=f"{diff_text(d)} (the paper's own numbers)" if d is not None else "n/a",
                )
            )
    if both(acc, "shallow"):
        gain = {r: paired(arm(acc, r, SEL), arm(acc, r, "shallow")) for r in ("over", "under")}
        stated = [paper_diff(ev, (r, SEL), (r, "shallow")) for r in ("over", "under")]
        inter = None if None in stated else stated[0] - stated[1]
        parts.append(
            seed_part(
                "P4",
                target,
                "interaction: (selective - shallow) over minus under (claimed > 0)",
                paired(gain["over"], gain["under"]),
                "greater",
                ev,
                paper_value=f"{diff_text(inter)} (the paper's own numbers)",
            )
        )
    d = paper_diff(ev, ("over", SEL), ("under", SEL))
    parts.append(
        seed_part(
            "P4",
            target,
            "selective: over - under",
            paired(arm(acc, "over", SEL), arm(acc, "under", SEL)),
            "greater",
            ev,
            effect=d if d and d > 0 else None,
            paper_value=diff_text(d),
        )
    )
    return claim_row("P4", target, text, "7 (iv), 7.2, 8", paper_value, parts), parts


def o1(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """O1 (ours): the SKI band beats random bands of its size; SKI's percentile among the draws per seed."""
    acc = primary(ev.acc, target)
    text = "the SKI band beats random bands of its size (the lora_random control)"
    parts = []
    for r in sorted(set(acc["regime"]), key=["under", "over"].index):
        a = acc[acc["regime"] == r]
        draws = a[(a["family"] == "lora_random") & (a["strategy"] != "lora_random")]
        if not ((a["strategy"] == SEL).any() and len(draws)):
            continue
        sel = arm(a, r, SEL)
        parts.append(
            seed_part(
                "O1",
                target,
                f"{r}: selective - mean of the random bands",
                paired(sel, arm(a, r, "lora_random")),
                "greater",
                ev,
            )
        )
        pct, ranks = [], []
        for seed, g in draws.groupby("seed"):
            if seed in sel.index:
                x, d = sel.loc[seed], g["accuracy"].to_numpy()
                pct.append(((d < x).sum() + 0.5 * (d == x).sum()) / len(d))
                ranks.append(f"{1 + int((d > x).sum())} of {1 + len(d)}")
        p = seed_part(
            "O1",
            target,
            f"{r}: share of random bands below SKI, minus one half (rank per seed: {', '.join(ranks)})",
            pd.Series(pct) - 0.5,
            "greater",
            ev,
            unit="percentile points",
            in_verdict=False,
        )
        parts.append(p)
    if not parts:
        parts = [
            missing_part(
                "O1", target, "selective vs random bands", "the profile has no lora_selective and lora_random cells"
            )
        ]
    return claim_row(
        "O1", target, text, "ours", "n/a (the paper has no random-band control)", parts, source="ours"
    ), parts


def o2(ev: Evidence, target: str) -> tuple[dict, list[dict]]:
    """O2 (ours): SKI beats each rival selector at equal budget (lora_rgn, lora_cka, lora_complement)."""
    acc = primary(ev.acc, target)
    text = "SKI beats each rival selector at equal budget (Auto-RGN, representation change, its complement)"
    cells = ev.cells[ev.cells["target"] == target]
    parts = []
    for r in sorted(set(acc["regime"]), key=["under", "over"].index):
        for rival in ("lora_rgn", "lora_cka", "lora_complement"):
            if not (both(acc, SEL, (r,)) and both(acc, rival, (r,))):
                continue
            c = cells[cells["regime"] == r]
            budget = {
                s: sorted(set(c.loc[c["strategy"] == s, "trainable_parameters"].astype(int))) for s in (SEL, rival)
            }
            note = (
                "equal budget"
                if budget[SEL] == budget[rival]
                else f"budget {budget[SEL]} vs {budget[rival]} parameters"
            )
            parts.append(
                seed_part(
                    "O2",
                    target,
                    f"{r}: selective - {rival} ({note})",
                    paired(arm(acc, r, SEL), arm(acc, r, rival)),
                    "greater",
                    ev,
                )
            )
    if not parts:
        parts = [missing_part("O2", target, "selective vs rival selectors", "the profile has no rival selector cells")]
    return claim_row("O2", target, text, "ours", "n/a (the paper has no rival selectors)", parts, source="ours"), parts


def _gap(acc: pd.DataFrame) -> pd.Series:
    """Per seed: OVER - UNDER averaged over the adapted strategy families present in both regimes."""
    fams = [f for f in families(acc) if f != "none" and both(acc, f)]
    diffs = [paired(arm(acc, "over", f), arm(acc, "under", f)) for f in fams]
    return pd.concat(diffs, axis=1).dropna().mean(axis=1) if diffs else pd.Series(dtype=float)


def o3(ev: Evidence, target: str = "rt", clean_target: str = "cr") -> tuple[dict, list[dict]]:
    """O3 (ours): what the overlap with SST-2 does: the OVER - UNDER gap on all rt sentences against the clean
    subsets, and against the clean target; and accuracy on all sentences against the clean subsets."""
    text = f"the overlap carries part of OVER's advantage on {target}: the OVER - UNDER gap is larger on all sentences than on the clean subsets, and larger on {target} than on {clean_target}"
    acc = ev.acc[ev.acc["target"] == target]
    base = primary(ev.acc, target)
    parts = []
    if len(base):
        split = base["split"].iloc[0]
        full = _gap(base)
        for subset in [s for s in dict.fromkeys(acc.loc[acc["split"] == split, "subset"]) if s != "all"]:
            sub = acc[(acc["split"] == split) & (acc["subset"] == subset)]
            n_all, n_sub = int(base["n"].max()), int(sub["n"].max())
            if n_sub >= n_all:
                continue
            parts.append(
                seed_part(
                    "O3",
                    target,
                    f"gap on all {n_all} - gap on {subset} ({n_sub} sentences)",
                    paired(full, _gap(sub)),
                    "greater",
                    ev,
                )
            )
            for r in sorted(set(sub["regime"]), key=["under", "over"].index):
                fams = [f for f in families(sub) if f != "none"]
                d = [paired(arm(base, r, f), arm(sub, r, f)) for f in fams]
                if d:
                    parts.append(
                        seed_part(
                            "O3",
                            target,
                            f"{r}: accuracy on all - on {subset}, mean over strategies",
                            pd.concat(d, axis=1).dropna().mean(axis=1),
                            "greater",
                            ev,
                            in_verdict=False,
                        )
                    )
        other = primary(ev.acc, clean_target)
        if len(other) and len(full):
            parts.append(
                seed_part(
                    "O3", target, f"gap on {target} - gap on {clean_target}", paired(full, _gap(other)), "greater", ev
                )
            )
    if not any(p["in_verdict"] for p in parts):
        parts = [
            missing_part(
                "O3",
                target,
                "overlap",
                f"no {target} sentence is flagged by the audit and no {clean_target} target is in the profile",
            )
        ] + parts
    return claim_row(
        "O3", target, text, "ours", "n/a (the paper does not audit the overlap)", parts, source="ours"
    ), parts


def _sig_round(x: int, like: int) -> int:
    """x rounded to as many significant digits as `like` has (110,000,000 has 2)."""
    digits = max(1, len(str(abs(int(like))).rstrip("0")))
    return int(float(f"{x:.{digits}g}"))


def p11(ev: Evidence) -> tuple[dict, list[dict]]:
    """P11: the paper's stated parameter counts against the exact arithmetic for bert-base; ours against ours."""
    paper, p = ev.paper, ev.params
    rank, targets, k = p.lora.rank, len(p.lora.targets), p.finetune.shallow_k
    parts, stated_text = [], []
    for s in ("lora_selective", "lora_all", "shallow", "full"):
        stated = paper.stated_parameters(s)
        if stated is None:
            continue
        exact = [
            bert_base_parameters(s, rank, targets, k, paper.band(), pooler=pool)
            for pool in ((False, True) if s == "shallow" else (True,))
        ]
        exact = [e for e in exact if e is not None]
        if not exact:
            continue
        stated_text.append(f"{s} ~{stated:,}")
        ok = any(_sig_round(e, stated) == stated for e in exact)
        parts.append(
            category_part(
                "P11",
                "all",
                f"{s}: stated ~{stated:,} vs exact for bert-base {' or '.join(f'{e:,}' for e in exact)}"
                f" (stated / exact = {stated / exact[0]:.2f})",
                [ok],
                True,
                expected_text="the stated count at its precision",
                shown=["agrees" if ok else f"disagrees: the exact count rounds to {_sig_round(exact[0], stated):,}"],
                paper_value=f"~{stated:,}",
            )
        )
    c = ev.cells
    lora = c[c["family"].isin(LORA_STRATEGIES)] if len(c) else c
    if len(lora) and ev.width:
        head = 2 * ev.width + 2
        expect = [lora_parameters(rank, ev.width, len(layers), targets) + head for layers in lora["lora_layers"]]
        match = [int(a) == b for a, b in zip(lora["trainable_parameters"], expect)]
        parts.append(
            category_part(
                "P11",
                "all",
                f"ours: every LoRA cell's exact count = {targets} x 2 x r x {ev.width} per adapted layer + head ({head:,})",
                match,
                True,
                shown=[f"{sum(match)} of {len(match)} match"],
                in_verdict=False,
            )
        )
    text = "the stated trainable-parameter counts agree with the exact arithmetic" + (
        f" ({', '.join(stated_text)})" if stated_text else ""
    )
    if not any(x["in_verdict"] for x in parts):
        parts = [missing_part("P11", "all", "stated counts", "stated.csv gives no parameter count")] + parts
    return claim_row("P11", "all", text, "6, 7", "; ".join(stated_text) or "n/a", parts), parts


def all_claims(ev: Evidence, targets: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every claim per target (P11 once, O3 on rt against cr): (claims.csv, claim_parts.csv) frames."""
    from inflection_layers.reporting import claims_layers as L

    per_target = [
        ("P1", p1),
        ("P2", p2),
        ("P3", p3),
        ("P4", p4),
        ("P5", L.p5),
        ("P6", L.p6),
        ("P7", L.p7),
        ("P8", L.p8),
        ("P9", L.p9),
        ("P10", L.p10),
        ("O1", o1),
        ("O2", o2),
    ]
    rows, parts = [], []
    for _, fn in per_target:
        for t in targets:
            r, ps = fn(ev, t)
            rows.append(r)
            parts += ps
    for fn, args in ((p11, ()), (o3, ("rt", "cr"))):
        if fn is o3 and "rt" not in targets:
            continue
        r, ps = fn(ev, *args)
        rows.append(r)
        parts += ps
    order = {k: i for i, (k, _) in enumerate(per_target[:10] + [("P11", None)] + per_target[10:] + [("O3", None)])}
    claims = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    claims = claims.iloc[sorted(range(len(claims)), key=lambda i: (order[claims["id"].iloc[i]], i))].reset_index(
        drop=True
    )
    return claims, pd.DataFrame(parts, columns=PART_COLUMNS)
