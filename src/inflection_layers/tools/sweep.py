r"""The learning-rate sweep behind `finetune.lr.*` and `lora.lr` (run by hand, not a stage of the study).

The rule: one rate per method family, chosen on held-out Rotten Tomatoes train sentences in both regimes. Each
family (head, shallow, full, bitfit, LoRA, IA3, prefix) is trained with three rates, exactly as the `finetune`
stages train it (the same steps, batch size, schedule and engine), from every source model given, on RT train
minus a stratified held-out part, and scored on that part; validation and test are never used. The rate with the
best mean held-out accuracy over the sources (ties: the smaller rate) is the family's; where it is the grid's
highest or lowest rate, the family gets one more rate beyond that edge, once, and the choice is made again. LoRA is
tuned on `lora_all`, which uses no selector, and IA3 on `ia3_all`: every LoRA selector and intervention cell shares
`lora.lr`, both IA3 cells `finetune.lr.ia3`, so no band gets a rate of its own. Run from the repository root:

    python -m inflection_layers.tools.sweep --data data/prepared \
        --sources models/source/over-42 models/source/under-42 --out plots/sweep

Writes <out>/lr.csv (family, lr, source, held-out accuracy) and <out>/lr.md (the table and the choice), and prints
the parameters to set in the profiles. `--append <earlier lr.csv> --families` (no family) only extends the edges of
an earlier sweep.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from inflection_layers.adapt import GroupData, build_run, evaluate_runs, score, train_runs
from inflection_layers.artifacts import atomic_path, read_csv, read_parquet
from inflection_layers.cells import Group
from inflection_layers.config import Params, load_params
from inflection_layers.errors import run_main
from inflection_layers.frozen import frozen_cells
from inflection_layers.modeling import load_model, load_tokenizer, pick_device, seed_everything
from inflection_layers.precision import Precision, resolve
from inflection_layers.reporting.paper import PAPER_TARGET
from inflection_layers.training import batch_stream, tokenize

logger = logging.getLogger(__name__)

GRID = {  # three rates per family, around the usual values for each
    "head": (3e-4, 1e-3, 3e-3),
    "shallow": (3e-5, 1e-4, 3e-4),
    "full": (2e-5, 5e-5, 1e-4),
    "bitfit": (3e-4, 1e-3, 3e-3),
    "lora": (3e-4, 1e-3, 3e-3),
    "ia3": (1e-3, 3e-3, 1e-2),
    "prefix": (1e-3, 3e-3, 1e-2),
}
TRAINED = {"lora": "lora_all", "ia3": "ia3_all"}  # the cell a family is tuned on (the others: the family itself)
PARAM = {"lora": "lora.lr"}  # the parameter a family's rate sets (the others: finetune.lr.<family>)
HELD_OUT = 1000  # Rotten Tomatoes train examples held out for scoring


def held_out_data(data_dir: Path, tokenizer: object, params: Params, seed: int) -> GroupData:
    """RT train minus a stratified held-out part (the pool the batches come from), and the held-out part as the
    evaluation set."""
    from sklearn.model_selection import train_test_split

    train = read_parquet(data_dir / "rt_train.parquet", ["id", "text", "label"])
    pool, held = train_test_split(train, test_size=HELD_OUT, stratify=train["label"], random_state=seed)
    pool, held = pool.sort_index(), held.sort_index().reset_index(drop=True)
    ids = tokenize(tokenizer, pool["text"], params.model.max_length)
    return GroupData(
        ids,
        pool["label"].tolist(),
        batch_stream([len(x) for x in ids], params.finetune.batch_size, seed, params.finetune.steps),
        held[["id", "label"]].assign(split="held_out"),
        tokenize(tokenizer, held["text"], params.model.max_length),
        tokenizer.pad_token_id,
    )


def family_probs(
    params: Params,
    family: str,
    lr: float,
    source: Path,
    data: GroupData,
    device: torch.device,
    precision: Precision,
    seed: int,
) -> np.ndarray:
    """Train one family at one rate from a source model, as the finetune stages do; its held-out probabilities."""
    if family == "head":
        p = replace(params, finetune=replace(params.finetune, lr=replace(params.finetune.lr, head=lr)))
        seed_everything(seed)
        model = load_model(str(source)).to(device).eval()
        return frozen_cells(model, ["none", "head"], p, data, device, precision, keep_reps=False, seed=seed)["head"][
            "probs"
        ]
    run = build_run(params, Group(PAPER_TARGET, "over", seed), TRAINED.get(family, family), source, None, device)
    run.lr, run.diag = lr, set()
    train_runs([run], params, data, device, precision)
    return evaluate_runs([run], params, data, device, precision)[run.cell.strategy]["probs"]


def sweep_source(
    params: Params, source: Path, data_dir: Path, seed: int, rates: dict[str, tuple[float, ...]]
) -> list[dict]:
    """Every rate of every family in `rates` from one source model -> rows (family, lr, source, accuracy, seconds)."""
    device = pick_device()
    data = held_out_data(data_dir, load_tokenizer(str(source)), params, seed)
    precision = resolve(params.model.precision, device, params.model.name)
    rows = []
    for family, family_rates in rates.items():
        for lr in family_rates:
            t0 = time.perf_counter()
            _, scores = score(data.eval_frame, family_probs(params, family, lr, source, data, device, precision, seed))
            rows.append(
                {
                    "family": family,
                    "lr": lr,
                    "source": source.name,
                    "accuracy": scores["held_out_accuracy"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            logger.info("%s %s lr %g: held-out accuracy %.4f", source.name, family, lr, rows[-1]["accuracy"])
    return rows


def snap(rate: float) -> float:
    """The nearest (in log scale) of 1, 2, 3 or 5 times a power of ten."""
    exponent = math.floor(math.log10(rate))
    ladder = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 3, 5)]
    return float(f"{min(ladder, key=lambda r: abs(math.log(r / rate))):.0e}")


def edge_extensions(table: pd.DataFrame, chosen: pd.DataFrame) -> dict[str, tuple[float, ...]]:
    """One more rate, once, for each family whose chosen rate is at an edge of its grid.

    The step continues the grid's own spacing (the ratio of the two outermost rates), snapped to 1, 2, 3 or 5
    times a power of ten. A family already swept beyond its grid is not extended again.
    """
    out = {}
    for r in chosen.itertuples():
        swept = sorted(table.loc[table["family"] == r.family, "lr"].unique())
        if len(swept) != len(GRID[r.family]) or len(swept) < 2:
            continue
        if r.lr == swept[-1]:
            out[r.family] = (snap(swept[-1] ** 2 / swept[-2]),)
        elif r.lr == swept[0]:
            out[r.family] = (snap(swept[0] ** 2 / swept[1]),)
    return out


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Per family, the rate with the best mean held-out accuracy over the sources (ties: the smaller rate)."""
    mean = (
        table.groupby(["family", "lr"], as_index=False)["accuracy"]
        .mean()
        .sort_values(["family", "accuracy", "lr"], ascending=[True, False, True])
    )
    return mean.groupby("family", sort=False).head(1).reset_index(drop=True)


def markdown(table: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """The sweep's table (held-out accuracy per family, rate and source) and the chosen rates."""
    wide = table.pivot_table(index=["family", "lr"], columns="source", values="accuracy").reset_index()
    lines = ["| family | lr | " + " | ".join(wide.columns[2:]) + " |", "|---|---|" + "---|" * (len(wide.columns) - 2)]
    for r in wide.itertuples(index=False):
        mark = " (chosen)" if ((chosen["family"] == r[0]) & (chosen["lr"] == r[1])).any() else ""
        lines.append(f"| {r[0]} | {r[1]:g}{mark} | " + " | ".join(f"{100 * v:.2f}" for v in r[2:]) + " |")
    return (
        "Held-out accuracy (%) on 1,000 Rotten Tomatoes train sentences left out of training.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def combine(table: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """Earlier rows and new ones; a (family, rate, source) measured again keeps its latest row."""
    new = pd.DataFrame(rows)
    both = pd.concat([table, new]) if len(table) else new
    return both.drop_duplicates(["family", "lr", "source"], keep="last").reset_index(drop=True)


def main() -> None:
    """Sweep every family from each source model; write the table and the choice."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument(
        "--sources", type=Path, nargs="+", required=True, help="source checkpoints, e.g. models/source/over-42"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for lr.csv and lr.md")
    parser.add_argument("--seed", type=int, default=42, help="batch order, initialisation and held-out split")
    parser.add_argument(
        "--families",
        nargs="*",
        choices=list(GRID),
        default=list(GRID),
        help="the families to sweep (default: all; none with --append: only extend an earlier sweep's edges)",
    )
    parser.add_argument(
        "--append", type=Path, help="an earlier lr.csv whose rows join this run's (a sweep done in parts)"
    )
    args = parser.parse_args()
    params = load_params()
    grid = {f: GRID[f] for f in args.families}
    earlier = read_csv(args.append) if args.append else pd.DataFrame(columns=["family", "lr", "source"])
    table = combine(
        earlier, [r for source in args.sources for r in sweep_source(params, source, args.data, args.seed, grid)]
    )
    extra = edge_extensions(table, choose(table))
    if extra:
        logger.info("chosen rates at an edge of the grid, one more rate each: %s", extra)
        table = combine(
            table, [r for source in args.sources for r in sweep_source(params, source, args.data, args.seed, extra)]
        )
    chosen = choose(table)
    with atomic_path(args.out, is_dir=True) as out:
        table.to_csv(out / "lr.csv", index=False)
        (out / "lr.md").write_text(markdown(table, chosen))
    for r in chosen.itertuples():
        print(f"{PARAM.get(r.family, f'finetune.lr.{r.family}')}: {r.lr:g}  (mean held-out accuracy {r.accuracy:.4f})")


if __name__ == "__main__":
    run_main(main)
