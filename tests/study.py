"""A whole study on a tiny random BERT and fake data in the original file formats: every stage's main(), in dvc.yaml's
order, with the arguments dvc.yaml gives, for every matrix item. Tests of the stages and the report read its outputs."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from transformers import BertForSequenceClassification

from conftest import tiny_config
from inflection_layers import (
    cka,
    diagnose,
    features,
    finetune,
    intervene,
    prepare,
    probes,
    report,
    select,
    source,
    validate,
)
from inflection_layers.archs import PACKAGED
from inflection_layers.cells import groups, sources
from inflection_layers.config import parse_params
from inflection_layers.modeling import load_tokenizer

WORDS = ["good", "bad", "fine", "awful", "film", "plot", "great", "dull"]
ROOTS = ["models/finetune", "models/finetune_peft", "models/finetune_tau"]
STAGES = {"finetune": "plain", "finetune_peft": "peft", "finetune_tau": "tau"}


def smoke(**sections: dict) -> dict:
    """The smoke profile as `dvc exp run -S profile=smoke` composes it, with some keys replaced."""
    with initialize_config_module("inflection_layers.conf", version_base=None):
        raw = OmegaConf.to_container(compose(config_name="config", overrides=["profile=smoke"]), resolve=True)
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def fake_data(root: Path) -> Path:
    """SST-2, RT and CR files in the original formats with the real row counts (the loaders check them), tiny
    vocabulary."""
    (root / "SST-2").mkdir(parents=True)
    (root / "rt-polaritydata").mkdir()
    (root / "CR").mkdir()
    for name, n in (("train", 67_349), ("dev", 872)):
        rows = [f"{WORDS[i % 8]} {WORDS[(i * 7) % 8]} {name} {i} \t{i % 2}\n" for i in range(n)]
        (root / f"SST-2/{name}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    for ext, label in (("pos", 1), ("neg", 0)):
        lines = [f"{WORDS[(i + label) % 8]} movie {ext} {i} .\n" for i in range(5_331)]
        (root / f"rt-polaritydata/rt-polarity.{ext}").write_bytes("".join(lines).encode("latin-1"))
    for ext, label, n in (("pos", 1, 2_407), ("neg", 0, 1_368)):
        (root / f"CR/custrev.{ext}").write_text(
            "".join(f"{WORDS[(i + 3 * label) % 8]} product {ext} {i} .\n" for i in range(n))
        )
    return root


def tiny_params(
    root: Path, targets: list[str], regimes: list[str], seeds: list[int], overrides: dict | None = None
) -> dict:
    """The smoke profile on a tiny random BERT: every kind of stage and cell, tiny sizes; `overrides` replaces keys
    per section afterwards ({"study": {"tau_strategies": []}})."""
    raw = smoke(
        study={
            "targets": targets,
            "regimes": regimes,
            "seeds": seeds,
            "strategies": ["none", "head", "shallow", "full"],
            "peft_strategies": [
                "lora_selective",
                "lora_all",
                "lora_random",
                "lora_top",
                "ia3_all",
                "ia3_selective",
                "prefix",
            ],
        },
        data={
            "source": "local",
            "dir": str(fake_data(root / "raw")),
            "sst2_subsample": 64,
            "eval_subsample": 120,
            "verify_checksums": False,
        },
        model={"name": str(root / "tiny"), "max_length": 32, "precision": "fp32"},
        source={"epochs_under": 1, "epochs_over": 2, "batch_size": 16, "lr": 1e-3, "eval_batch_size": 256},
        diagnose={"batches": 2, "batch_size": 8},
        ski={"max_band": 2, "s": 0, "random_draws": 2},
        finetune={"steps": 4, "diag_every": 2, "batch_size": 8, "eval_batch_size": 512},
        lora={"rank": 2, "alpha": 4},
        intervene={"temperatures": [1.0, 2.0], "diag_every": 1},
        features={"train_tokens": 300, "expansion": 2, "k": 4, "epochs": 1, "batch_size": 64},
        analysis={
            "strategies": [
                "none",
                "shallow",
                "full",
                "lora_selective",
                "lora_all",
                "lora_selective_tau",
                "lora_selective_tau_ctrl",
                "lora_selective_anneal",
            ],
            "pca_dim": 16,
        },
        probe={"epochs": 2, "hidden": 16},
        report={"bootstrap": 100},
    )
    for section, values in (overrides or {}).items():
        raw[section].update(values)
    return raw


def flags(**kw: str | list[str]) -> list[str]:
    """--key value pairs as dvc.yaml writes them (underscores become hyphens; a list is several values)."""
    out: list[str] = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [v])]
    return out


@contextlib.contextmanager
def inside(root: Path) -> Iterator[None]:
    old_cwd, old_argv, old_env = Path.cwd(), sys.argv, os.environ.get("INFLECTION_LAYERS_CACHE")
    os.chdir(root)
    os.environ["INFLECTION_LAYERS_CACHE"] = str(root / "cache")
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        if old_env is None:
            os.environ.pop("INFLECTION_LAYERS_CACHE", None)
        else:
            os.environ["INFLECTION_LAYERS_CACHE"] = old_env


def run(module: object, *args: str) -> None:
    """One stage's main() with the arguments dvc.yaml gives it."""
    sys.argv = [module.__name__, *args]
    module.main()


REPORT_ARGS = flags(
    cells=ROOTS,
    cell_metrics=[r.replace("models", "metrics") for r in ROOTS],
    cell_plots=[r.replace("models", "plots") for r in ROOTS],
    source="metrics/source",
    diagnose="metrics/diagnose",
    selection="metrics/selection",
    intervene="metrics/intervene",
    cka="metrics/cka.csv",
    probes="metrics/probes.csv",
    features="metrics/features.csv",
    data_metrics="metrics/data.json",
    audit="data/prepared/audit.parquet",
    paper="data/paper",
    summary="metrics/summary.json",
    out="plots/report",
)


def group_stages(g: object) -> None:
    """diagnose, select, intervene and the three finetune stages of one group."""
    src = f"models/source/{g.regime}-{g.seed}"
    run(
        diagnose,
        *flags(
            group=g.name,
            model=src,
            data="data/prepared",
            layers=f"metrics/diagnose/{g.name}.csv",
            heads=f"metrics/diagnose/{g.name}-heads.csv",
            metrics=f"metrics/diagnose/{g.name}.json",
        ),
    )
    sel = f"metrics/selection/{g.name}.json"
    run(
        select,
        *flags(group=g.name, layers=f"metrics/diagnose/{g.name}.csv", out=sel, table=f"plots/selection/{g.name}.csv"),
    )
    run(
        intervene,
        *flags(
            group=g.name,
            model=src,
            data="data/prepared",
            selection=sel,
            table=f"metrics/intervene/{g.name}.csv",
            metrics=f"metrics/intervene/{g.name}.json",
        ),
    )
    for stage, kind in STAGES.items():
        extra = {"selection": sel} if kind != "plain" else {}
        run(
            finetune,
            *flags(
                kind=kind,
                group=g.name,
                source=src,
                data="data/prepared",
                **extra,
                out=f"models/{stage}/{g.name}",
                metrics=f"metrics/{stage}/{g.name}",
                plots=f"plots/{stage}/{g.name}",
            ),
        )


def build(
    root: Path,
    targets: list[str],
    regimes: list[str],
    seeds: list[int],
    with_report: bool = True,
    overrides: dict | None = None,
) -> Path:
    """Every stage of a tiny study in `root` (params: `tiny_params` with `overrides`); returns root."""
    torch.manual_seed(0)
    config = tiny_config(3)
    config.vocab_size = 30_522  # the packaged tokenizer's vocabulary
    BertForSequenceClassification(config).save_pretrained(root / "tiny")
    load_tokenizer(PACKAGED).save_pretrained(root / "tiny")
    raw = tiny_params(root, targets, regimes, seeds, overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "paper").symlink_to(Path(__file__).resolve().parents[1] / "data" / "paper")
    params = parse_params(raw)
    with inside(root):
        run(validate, *flags(out="data/validated.json"))
        run(prepare, *flags(out="data/prepared", metrics="metrics/data.json"))
        for s in sources(params.study):
            run(
                source,
                *flags(
                    regime=s.regime,
                    seed=str(s.seed),
                    data="data/prepared",
                    out=f"models/source/{s.name}",
                    metrics=f"metrics/source/{s.name}.json",
                ),
            )
        for g in groups(params.study):
            group_stages(g)
        run(cka, *flags(cells=ROOTS, table="metrics/cka.csv", metrics="metrics/cka.json"))
        run(probes, *flags(cells=ROOTS, table="metrics/probes.csv", metrics="metrics/probes.json"))
        run(
            features,
            *flags(
                sources="models/source",
                data="data/prepared",
                cells=ROOTS,
                cell_metrics=[r.replace("models", "metrics") for r in ROOTS],
                table="metrics/features.csv",
                metrics="metrics/features.json",
            ),
        )
        if with_report:
            run(report, *REPORT_ARGS)
    return root
