"""Reproduction check: a run's metrics/summary.json against a committed reference, within a stated tolerance.

    python -m inflection_layers.tools.reference metrics/summary.json tests/reference/smoke-summary.json
    python -m inflection_layers.tools.reference metrics/summary.json tests/reference/smoke-summary.json --update

The reference lists what must reproduce (only its keys are compared): accuracies per cell, exact
parameter counts, the leakage audit; not the verdicts, which can flip where an interval touches a
threshold. Integers, booleans and strings must match exactly. An accuracy may differ by `--examples`
(default 2) sentences of the set it is measured on, whose size the reference's own audit gives (the smoke
profile's 120 validation sentences: 0.017; rt's 34 clean-SST-2 sentences: 0.059); any other float by
`--atol` (default 0.02). On one machine a run is bitwise reproducible; the tolerance is for another CPU,
whose vector kernels round differently and whose small differences grow over training steps until a
sentence near the boundary flips.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The summary's parts that must reproduce on another CPU; verdicts, precision and the profile name are left out.
REPRODUCED = ("accuracy", "audit", "clean_sst2", "parameters", "seeds")


def set_sizes(ref: dict[str, Any]) -> dict[str, int]:
    """Sentences behind each accuracy prefix of a summary, from its audit: '.accuracy.<target>' -> the target's
    validation size, '.clean_sst2' -> rt's validation sentences not in SST-2 (the report's clean subset)."""
    audit = ref.get("audit", {})
    sizes = {f".accuracy.{t}": int(a["validation"]["n"]) for t, a in audit.items() if "n" in a.get("validation", {})}
    rt = audit.get("rt", {}).get("validation", {})
    if "n" in rt and "in_sst2" in rt:
        sizes[".clean_sst2"] = int(rt["n"] - rt["in_sst2"])
    return sizes


def tolerance(ref: dict[str, Any], atol: float, examples: float) -> Callable[[str], float]:
    """Tolerance of the float at a path: `examples` sentences of its set (plus rounding to 4 decimals), else `atol`."""
    sizes = set_sizes(ref)

    def tol(path: str) -> float:
        n = next((n for prefix, n in sizes.items() if path.startswith(prefix + ".")), 0)
        return examples / n + 1e-4 if n > 0 else atol

    return tol


def differences(run: Any, ref: Any, atol: float | Callable[[str], float], path: str = "") -> list[str]:
    """Every leaf of `ref` that `run` lacks or differs from (floats within `atol`, a number or a function of the
    leaf's path), as 'path: run != ref' lines."""
    if isinstance(ref, dict):
        if not isinstance(run, dict):
            return [f"{path or '.'}: {type(run).__name__} where the reference has a mapping"]
        return [
            d
            for k, v in ref.items()
            for d in (differences(run[k], v, atol, f"{path}.{k}") if k in run else [f"{path}.{k}: missing"])
        ]
    if isinstance(ref, list):
        if not isinstance(run, list) or len(run) != len(ref):
            return [f"{path}: {run!r} != {ref!r}"]
        return [
            d for i, (a, b) in enumerate(zip(run, ref, strict=False)) for d in differences(a, b, atol, f"{path}[{i}]")
        ]
    if isinstance(run, bool) != isinstance(ref, bool):
        return [f"{path}: {run!r} != {ref!r}"]
    if isinstance(ref, float) and isinstance(run, (int, float)):
        tol = atol(path) if callable(atol) else atol
        same = (math.isnan(ref) and math.isnan(run)) or abs(run - ref) <= tol
        return [] if same else [f"{path}: {run} != {ref} (|diff| {abs(run - ref):.4g} > {tol:.4g})"]
    return [] if run == ref else [f"{path}: {run!r} != {ref!r}"]


def reference_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The parts of a run's summary that a reference keeps (REPRODUCED); a summary lacking one is refused."""
    missing = [k for k in REPRODUCED if k not in summary]
    if missing:
        raise ValueError(f"the summary lacks {missing}: is it a complete run's metrics/summary.json?")
    return {k: summary[k] for k in REPRODUCED}


def main() -> None:
    """Compare (or, with --update, replace) the reference; exit 1 listing every difference."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path, help="this run's summary JSON")
    parser.add_argument("reference", type=Path, help="the committed reference")
    parser.add_argument("--examples", type=float, default=2, help="tolerance on accuracies, in sentences of their set")
    parser.add_argument("--atol", type=float, default=0.02, help="absolute tolerance on other floats")
    parser.add_argument("--update", action="store_true", help="write the summary as the new reference")
    args = parser.parse_args()
    if args.update:
        reference = reference_of(json.loads(args.summary.read_text()))
        args.reference.write_text(json.dumps(reference, indent=2) + "\n")
        print(f"{args.reference}: updated from {args.summary} ({', '.join(REPRODUCED)})")
        return
    reference = json.loads(args.reference.read_text())
    diffs = differences(json.loads(args.summary.read_text()), reference, tolerance(reference, args.atol, args.examples))
    for line in diffs:
        print(line)
    sizes = ", ".join(f"{k} {n}" for k, n in set_sizes(reference).items())
    print(
        f"{args.summary} vs {args.reference}: {len(diffs)} difference(s) beyond {args.examples:g} sentences of each"
        f" accuracy's set ({sizes}) or atol {args.atol}"
    )
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
