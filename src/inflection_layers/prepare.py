"""Stage `prepare`: load SST-2 and the targets, write the parquet splits and the overlap audit.

Outputs (paths from dvc.yaml; the folder is written atomically):
  <out>/sst2_source.parquet        the stratified SST-2 train sample the source models train on
  <out>/sst2_dev.parquet           SST-2 dev (the source models' dev set)
  <out>/{t}_{train,validation,test}.parquet   per target t of study.targets (id, text, label);
                                   validation and test stratified to data.eval_subsample when > 0
  <out>/audit.parquet              per evaluation sentence: in_source, in_sst2, phrase_covered,
                                   phrase_cover_share (see :mod:`inflection_layers.audit`)
  <metrics>                        source used, sizes, audit summary, sha256 of the files read
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from inflection_layers.artifacts import atomic_path, stage_args, write_json
from inflection_layers.audit import audit_frame, summarise
from inflection_layers.cells import EVAL_SPLITS
from inflection_layers.config import Data, load_params
from inflection_layers.data import load_splits, select_tables
from inflection_layers.errors import run_main

logger = logging.getLogger(__name__)


def prepare(data: Data, targets: Sequence[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Load, subsample and audit -> (tables to write, including ``audit``; metrics)."""
    splits, used, files = load_splits(data, targets)
    tables = select_tables(splits, data, targets)
    evals = {f"{t}_{s}": tables[f"{t}_{s}"] for t in targets for s in EVAL_SPLITS}
    audit = audit_frame(evals, tables["sst2_source"], splits["sst2_train"], splits["sst2_dev"])
    metrics = {
        "source": used,
        "sizes": {name: len(df) for name, df in tables.items()},
        "sst2_train_size": len(splits["sst2_train"]),
        "sst2_source_positive_share": round(float(tables["sst2_source"]["label"].mean()), 6),
        "audit": summarise(audit),
        "files": files,
    }
    tables["audit"] = audit
    return tables, metrics


def write(tables: dict[str, pd.DataFrame], out: Path) -> None:
    """Every table as ``<out>/<name>.parquet``, the folder replaced atomically."""
    with atomic_path(out, is_dir=True) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)


def main() -> None:
    """Parse the paths dvc.yaml gives, read `study.targets` and `data.*` from params.yaml, write the outputs."""
    args = stage_args(
        __doc__,
        {
            "out": "folder of prepared splits and the audit",
            "metrics": "metrics JSON (sizes, audit summary, checksums)",
        },
    )
    params = load_params()
    t0 = time.perf_counter()
    tables, metrics = prepare(params.data, params.study.targets)
    write(tables, args.out)
    write_json(args.metrics, metrics | {"wall_seconds": round(time.perf_counter() - t0, 2)})
    for target, per_split in metrics["audit"].items():
        for split, a in per_split.items():
            logger.info(
                "%s %s: %d sentences; %d in SST-2 (%.1f%%), %d in the source sample, %d clean of SST-2 and its phrases",
                target,
                split,
                a["n"],
                a["in_sst2"],
                100 * a["in_sst2_share"],
                a["in_source"],
                a["clean_phrase"],
            )


if __name__ == "__main__":
    run_main(main)
