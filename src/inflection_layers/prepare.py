"""Stage `prepare`: load SST-2 and Rotten Tomatoes, write parquet splits, audit source/target overlap.

Outputs (paths from dvc.yaml):
  <out>/{sst2_train,sst2_dev,rt_train,rt_validation,rt_test}.parquet  (id, text, label)
  <out>/sst2_source.parquet   the stratified SST-2 train subsample used for source training
  <out>/overlap_free.json     ids of RT validation/test sentences found in neither SST-2 train nor dev
  <metrics>                   sizes and the overlap audit
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from inflection_layers.artifacts import atomic_path, write_json
from inflection_layers.config import Data, load_params
from inflection_layers.data import EXPECTED_ROWS, SPLITS, load_splits, overlap, stratified_subsample

logger = logging.getLogger(__name__)


def audit(splits: dict[str, pd.DataFrame]) -> tuple[dict, dict[str, list[str]]]:
    """Overlap of every RT split with SST-2 train and dev -> (metrics, overlap-free ids of validation/test)."""
    metrics: dict = {}
    free: dict[str, list[str]] = {}
    for split in ("rt_train", "rt_validation", "rt_test"):
        target = splits[split]
        in_train, s_train = overlap(target, splits["sst2_train"])
        in_dev, s_dev = overlap(target, splits["sst2_dev"])
        clean = ~(in_train | in_dev)
        metrics[split] = {"vs_sst2_train": s_train, "vs_sst2_dev": s_dev, "overlap_free": int(clean.sum())}
        if split != "rt_train":
            free[split] = target.loc[clean, "id"].tolist()
    return metrics, free


def sha256(path: Path) -> str:
    """Hex digest of a file, recorded so a changed local copy is visible in metrics/data.json."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(params: Data) -> tuple[dict[str, pd.DataFrame], dict, dict[str, list[str]]]:
    """Load, subsample and audit -> (tables to write, metrics, overlap-free ids)."""
    splits, used = load_splits(params.source, params.dir)
    tables = {name: splits[name] for name in SPLITS}
    tables["sst2_source"] = stratified_subsample(splits["sst2_train"], params.sst2_subsample, params.subsample_seed)
    overlap_metrics, free = audit(splits)
    metrics = {
        "source": used,
        "sizes": {name: len(df) for name, df in tables.items()},
        "sst2_source_positive_share": round(float(tables["sst2_source"]["label"].mean()), 6),
        "overlap": overlap_metrics,
    }
    if used == "local":
        metrics["sha256"] = {rel: sha256(Path(params.dir) / rel) for rel in EXPECTED_ROWS}
    return tables, metrics, free


def main() -> None:
    """Parse the paths dvc.yaml gives, read `data.*` from params.yaml, write every output atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of prepared splits")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON (sizes and overlap audit)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params().data

    tables, metrics, free = prepare(params)
    with atomic_path(args.out, is_dir=True) as tmp:
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "overlap_free.json").write_text(json.dumps(free, indent=1) + "\n")
    write_json(args.metrics, metrics)
    for split in ("rt_validation", "rt_test"):
        o = metrics["overlap"][split]["vs_sst2_train"]
        logger.info("%s: %d of %d sentences also in SST-2 train (%.1f%%)", split, o["count"], o["total"], 100 * o["share"])


if __name__ == "__main__":
    main()
