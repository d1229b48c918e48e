"""Stage `validate`: the whole of params.yaml, checked before any other stage runs.

Every other stage depends on this stage's output, a small file whose content never changes while
the parameters are valid: DVC therefore runs `validate` first whenever params.yaml changes, stops
the pipeline on a bad value before any other stage has deleted its previous outputs, and reruns
nothing downstream when the parameters pass. Checked: unknown, missing and mistyped keys and ranges
(the typed schema of :mod:`inflection_layers.config`), and the constraints that need the model's
depth or the data's size, read cheaply from the model's config.json and the data's known counts.
Each message names the full key, the value and what is allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from inflection_layers.archs import ARCHS, model_config
from inflection_layers.artifacts import stage_args, write_json
from inflection_layers.cells import expand, family, strategy_names
from inflection_layers.config import Params, load_params
from inflection_layers.data import SPLIT_SIZES, SST2_TRAIN_SIZE
from inflection_layers.errors import DataError, ParamError, run_main
from inflection_layers.hub import hub_unreachable

logger = logging.getLogger(__name__)

CONTENT = {"params": "valid"}  # the output's content: constant while the parameters are valid


def model_shape(name: str) -> tuple[str, int]:
    """(model_type, number of layers) from the model's config.json, without loading weights or importing torch."""
    config = model_config(name)
    return str(config.get("model_type")), int(config.get("num_hidden_layers", 0))


def need(ok: bool, key: str, value: object, allowed: str) -> None:
    """Refuse a value with the one-line ParamError that names the key, the value and what is allowed."""
    if not ok:
        raise ParamError(key, value, allowed)


def check_model(params: Params, model_type: str, num_layers: int) -> None:
    """The model's family and depth against the keys that count layers."""
    model = f"(the model {params.model.name!r} has {num_layers} layers)"
    need(
        model_type in ARCHS,
        "model.name",
        params.model.name,
        f"a model of a supported family {sorted(ARCHS)}; this one is {model_type!r}",
    )
    need(
        params.finetune.shallow_k <= num_layers,
        "finetune.shallow_k",
        params.finetune.shallow_k,
        f"an integer in [1, {num_layers}] {model}",
    )
    need(
        params.ski.max_band is None or params.ski.max_band <= num_layers,
        "ski.max_band",
        params.ski.max_band,
        f"null or an integer in [1, {num_layers}] {model}",
    )
    if "prefix" in params.study.peft_strategies:
        need(
            ARCHS[model_type].prefix,
            "study.peft_strategies",
            "prefix",
            f"no prefix with {model_type}: its forward takes no past_key_values, which prefix tuning needs "
            "(drop 'prefix' from the list)",
        )


def check_strategies(params: Params) -> None:
    """What the analysis reads must be run, and be analysable."""
    run = {family(s) for s in expand(strategy_names(params), 1)}
    for s in params.analysis.strategies:
        need(s in run, "analysis.strategies", s, f"strategies the study runs: {sorted(run)}")
    need(
        "prefix" not in params.analysis.strategies,
        "analysis.strategies",
        "prefix",
        "strategies whose attention is square: prefix tuning adds virtual keys, "
        "so its entropy and rank are not comparable",
    )
    need(
        not ("lora_random" in params.analysis.strategies and params.ski.random_draws == "all"),
        "analysis.strategies",
        "lora_random",
        "a fixed ski.random_draws to analyse random bands ('all' trains a different number per group)",
    )


def check_sizes(params: Params) -> None:
    """The data must be large enough for every sample the params ask of it."""
    need(
        params.data.sst2_subsample <= SST2_TRAIN_SIZE,
        "data.sst2_subsample",
        params.data.sst2_subsample,
        f"an integer in [0, {SST2_TRAIN_SIZE:,}] (0 = all)",
    )
    d = params.diagnose
    for target in params.study.targets:
        sizes = SPLIT_SIZES[target]
        need(
            d.batches * d.batch_size <= sizes["train"],
            "diagnose.batches",
            d.batches,
            f"at most {sizes['train'] // d.batch_size} batches of {d.batch_size} "
            f"({target} train has {sizes['train']:,} examples)",
        )
        for split in params.finetune.eval_splits:
            need(
                params.data.eval_subsample <= sizes[split],
                "data.eval_subsample",
                params.data.eval_subsample,
                f"0 (all) or at most {sizes[split]:,} ({target} {split} has {sizes[split]:,} examples)",
            )
        sample = sum(min(params.data.eval_subsample or sizes[s], sizes[s]) for s in params.finetune.eval_splits)
        for share, what in ((params.probe.train_fraction, "train"), (1 - params.probe.train_fraction, "evaluate")):
            need(
                share * sample >= 20,
                "probe.train_fraction",
                params.probe.train_fraction,
                f"a share that leaves at least 20 sentences to {what} on ({target}'s analysis sample has {sample:,})",
            )


def check(params: Params, model_type: str, num_layers: int) -> None:
    """Every constraint between sections, the model and the data; raises ParamError naming the key."""
    check_model(params, model_type, num_layers)
    check_strategies(params)
    check_sizes(params)


def queued_hint(where: Path) -> str:
    """A hint when a relative data.dir is read inside a queued experiment's temporary copy of the repository."""
    if where.is_absolute() or ".dvc/tmp/exps" not in Path.cwd().as_posix():
        return ""
    return (
        " (a queued experiment runs in a temporary copy of the repository under .dvc/tmp, where a relative "
        "data.dir points elsewhere: queue it with an absolute one, e.g. -S data.dir=$(realpath ../shared/data))"
    )


def check_data_source(params: Params) -> None:
    """`data.dir` must exist for data.source local, and for auto unless the hub can be reached."""
    where = Path(params.data.dir)
    if where.is_dir() or params.data.source == "hub":
        return
    if params.data.source == "local":
        raise DataError(
            f"params.yaml: data.dir = {params.data.dir!r} ({where.resolve()}) is missing, and data.source is "
            f"'local'{queued_hint(where)}"
        )
    if why := hub_unreachable():
        raise DataError(
            f"params.yaml: data.dir = {params.data.dir!r} ({where.resolve()}) is missing "
            "and the Hugging Face hub is unreachable "
            f"({why}); point data.dir at the offline copies or go online{queued_hint(where)}"
        )


def main() -> None:
    """Validate params.yaml completely; write the constant marker file only when it passes."""
    args = stage_args(
        "Stage `validate`: check every parameter before any stage runs.",
        {
            "out": "the marker file every stage depends on",
        },
    )
    params = load_params()
    model_type, num_layers = model_shape(params.model.name)
    check(params, model_type, num_layers)
    check_data_source(params)
    write_json(args.out, CONTENT)
    logger.info(
        "params.yaml is valid (profile %s; model %s, %d layers)", params.study.profile, params.model.name, num_layers
    )


if __name__ == "__main__":
    run_main(main)
