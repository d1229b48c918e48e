"""Missing or damaged data fails before anything is touched, as one line naming the file (and, for a file an earlier
stage wrote, the stage to rerun); no stage touches the network.

- a data.dir that is not there while the hub is unreachable (`validate` and `prepare`);
- damaged copies of the offline data files: cut mid-line or at a line end, a NUL byte, bytes that are not UTF-8 or
  ASCII, with and without data.verify_checksums;
- truncated inputs of later stages: a prepared parquet split, a selection JSON, a diagnose table;

through the stage cases of tests/stage_cases.py (run once per session by conftest's `stage_runs`), and directly on
the readers (`read_parquet`, `read_json`, `source.train_source`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from stage_cases import DAMAGED, GROUP, SHARED_DATA, Run, line_of, refused, source_workdir

from inflection_layers import source
from inflection_layers.artifacts import read_json, read_parquet, write_json
from inflection_layers.config import parse_params
from inflection_layers.errors import DataError, InputError


def test_no_stage_touched_the_network(stage_runs: dict[str, Run]) -> None:
    assert stage_runs["net-attempts"].log == ""  # not one connection or name lookup in any case


# ------------------------------------------------------------------------------ 4. data.dir missing


def test_missing_data_dir_offline_names_it_and_fails_fast(stage_runs: dict[str, Run]) -> None:
    run = stage_runs["prepare:data.dir=./missing"]
    line = refused(stage_runs, "prepare:data.dir=./missing")
    assert re.search(
        rf"data\.dir = '\./missing' \({re.escape(str(run.cwd / 'missing'))}\) is missing "
        r"and the Hugging Face hub is unreachable "
        r"\(HF_HUB_OFFLINE is set\)",
        line,
    ), line
    assert run.seconds < 5  # asked once, no retries


def test_validate_refuses_a_missing_data_dir_when_the_hub_is_unreachable(stage_runs: dict[str, Run]) -> None:
    assert re.search(
        r"data\.dir = '\./missing'.* is missing and the Hugging Face hub is unreachable",
        refused(stage_runs, "validate:data.dir=./missing"),
    )


# --------------------------------------------------------------------------- 5. damaged data files


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_data_file_is_one_line_naming_it(stage_runs: dict[str, Run], name: str) -> None:
    """The specific check comes before the checksum, so a cut line or a bad byte is named as such even with
    verify_checksums: true."""
    rel, change, _, message = DAMAGED[name]
    original = (SHARED_DATA / rel).read_bytes()
    damaged = change(original)
    first = (
        next(i for i, (a, b) in enumerate(zip(original, damaged, strict=True)) if a != b)
        if len(damaged) == len(original)
        else 0
    )
    expected = message.format(line=line_of(damaged, first), lines=damaged.count(b"\n"))
    path = stage_runs[name].cwd / "data-copy" / rel
    line = refused(stage_runs, name)
    assert line.startswith(f"error: prepare: {path}: ") and re.search(expected, line), line


# -------------------------------------------------------------- 7. truncated inputs of later stages


def test_a_truncated_parquet_names_the_file_and_the_stage_that_writes_it(stage_runs: dict[str, Run]) -> None:
    line = refused(stage_runs, "truncated-parquet:diagnose")
    assert re.search(
        r"error: diagnose@[\w-]+: data/prepared/rt_train\.parquet: truncated or corrupt parquet file \(.*\); "
        r"it is written by stage prepare: rerun `dvc repro -f prepare`",
        line,
    ), line


def test_a_truncated_selection_names_the_file_and_the_stage_that_writes_it(stage_runs: dict[str, Run]) -> None:
    line = refused(stage_runs, "truncated-json:finetune_peft")
    assert re.search(
        rf"error: finetune_peft@{GROUP}: metrics/selection/{GROUP}\.json: truncated or corrupt JSON file \(.*\); "
        rf"it is written by stage select@{GROUP}: rerun `dvc repro -f select@{GROUP}`",
        line,
    ), line


@pytest.mark.parametrize(
    "name", ["truncated-csv-mid-file:select", "truncated-csv-mid-value:select", "truncated-csv-in-labels:select"]
)
def test_a_truncated_diagnose_table_names_the_file_and_the_stage_that_writes_it(
    stage_runs: dict[str, Run], name: str
) -> None:
    line = refused(stage_runs, name)
    assert re.search(
        rf"error: select@{GROUP}: metrics/diagnose/{GROUP}\.csv: .*it is written by stage diagnose@{GROUP}", line
    ), line


def test_truncated_prepared_parquet_names_the_file_in_the_stage_that_reads_it(tiny_dir: Path, tmp_path: Path) -> None:
    work = source_workdir(tmp_path, tiny_dir)
    split = work / "data/prepared/sst2_source.parquet"
    split.write_bytes(split.read_bytes()[: split.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"^{re.escape(str(split))}: truncated or corrupt parquet file"):
        read_parquet(split)
    params = parse_params(yaml.safe_load((work / "params.yaml").read_text()))
    with pytest.raises(InputError, match=r"sst2_source\.parquet: truncated or corrupt parquet file"):
        source.train_source(params, "under", 7, work / "data/prepared")


@pytest.mark.parametrize("text", ['{"band": [1, 2', "", "\x00\x01"], ids=["truncated", "empty", "binary"])
def test_truncated_json_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sel.json"
    write_json(path, {"band": [1, 2]})
    assert read_json(path) == {"band": [1, 2]}
    path.write_text(text)
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: truncated or corrupt JSON file"):
        read_json(path)


@pytest.mark.parametrize("queued", [True, False])
def test_a_relative_data_dir_in_a_queued_experiment_says_to_give_it_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queued: bool
) -> None:
    """`dvc exp run --queue` runs in a temporary copy under .dvc/tmp/exps, where ../shared/data is not the data."""
    from dataclasses import replace

    from inflection_layers.config import load_params
    from inflection_layers.validate import check_data_source

    work = tmp_path / (".dvc/tmp/exps/tmpabc" if queued else "repo")
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params = replace(params, data=replace(params.data, source="local", dir="../shared/data"))
    with pytest.raises(DataError, match=r"is missing, and data\.source is 'local'") as e:
        check_data_source(params)
    assert ("queue it with an absolute one" in str(e.value)) == queued
