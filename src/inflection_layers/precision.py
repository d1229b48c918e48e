"""`model.precision`: fp32 or bf16 autocast, and how `auto` decides by capability and measurement.

CPUs differ: without bf16 instructions, bf16 autocast runs many times slower than fp32; with
``avx512_bf16`` or ``amx_bf16`` it can run faster (docs/speed.md has the measurements). So ``auto`` picks bf16 only
where the
hardware reports bf16 support (a CUDA device that supports it; on a CPU the ``avx512_bf16`` or
``amx_bf16`` flag) **and**, on a CPU, a short probe on the study's own model confirms that it is
faster. The decision is kept per machine (CPU model, flags, torch version) in a small cache file,
so every stage of a run resolves the same way and the probe runs once. Every stage records the
resolved precision in its metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by this factor in the probe to be chosen
CACHE_ENV = "INFLECTION_LAYERS_CACHE"


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision: 'fp32' or 'bf16', on a device, and why it was chosen."""

    name: str
    device: str
    reason: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this precision (a no-op for fp32)."""
        if self.name == "bf16":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def record(self) -> dict[str, str]:
        """What a stage writes into its metrics."""
        return {"precision": self.name, "precision_reason": self.reason}


def cpu_info() -> tuple[str, set[str]]:
    """(CPU model name, flags) from /proc/cpuinfo; ('', set()) where it is not available."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cache_file(name: str = "precision.json") -> Path:
    """Where per-machine decisions are kept: $INFLECTION_LAYERS_CACHE or ~/.cache/inflection-layers."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inflection-layers")
    return root / name


def recall(name: str, key: str) -> dict | None:
    """A decision kept for this machine (`key`) in cache file `name`, or None."""
    try:
        path = cache_file(name)
        return json.loads(path.read_text()).get(key) if path.is_file() else None
    except (OSError, ValueError):
        return None


def remember(name: str, key: str, decision: dict) -> None:
    """Keep a decision for this machine; a cache that cannot be written only costs a probe next time."""
    path = cache_file(name)
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known[key] = decision
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1) + "\n")
    except OSError:
        logger.warning("could not keep the decision in %s", path)


def bf16_cpu_flags() -> list[str]:
    """The bf16 flags (of BF16_CPU_FLAGS) this CPU reports, sorted; empty without bf16 hardware."""
    return sorted(cpu_info()[1] & set(BF16_CPU_FLAGS))


def machine_key(model_name: str) -> str:
    return f"{cpu_info()[0]}|{','.join(bf16_cpu_flags())}|torch {torch.__version__}|{model_name}"


def median_seconds(run: Callable[[], None], n: int = 3) -> float:
    """Median wall seconds of `run` over n calls after one warm-up call."""
    run()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def resolve(
    requested: str, device: torch.device, model_name: str, probe: Callable[[str], None] | None = None
) -> Precision:
    """Resolve `model.precision` on `device`. `probe(name)` runs one representative training step
    under precision `name` ('fp32' or 'bf16'); it is timed only where `auto` needs a measurement."""
    if requested in ("fp32", "bf16"):
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("model.precision = 'bf16' but this GPU does not support bf16; use auto or fp32")
        return Precision(requested, device.type, "set by model.precision")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return Precision(
            "bf16" if ok else "fp32", "cuda", "the GPU supports bf16" if ok else "the GPU does not support bf16"
        )
    have = bf16_cpu_flags()
    if not have:
        return Precision("fp32", "cpu", f"the CPU reports none of {list(BF16_CPU_FLAGS)}")
    key = machine_key(model_name)
    if known := recall("precision.json", key):
        return Precision(
            known["name"], "cpu", known["reason"] + f" (measured once on this machine, kept in {cache_file()})"
        )
    if probe is None:
        return Precision("fp32", "cpu", f"the CPU reports {have} but no probe was run")
    t32, t16 = median_seconds(lambda: probe("fp32")), median_seconds(lambda: probe("bf16"))
    ratio = t32 / t16
    name = "bf16" if ratio >= MIN_SPEEDUP else "fp32"
    reason = f"the CPU reports {have}; a probe step took {t32:.3f} s in fp32 and {t16:.3f} s in bf16 ({ratio:.2f}x)"
    remember("precision.json", key, {"name": name, "reason": reason})
    logger.info("precision %s: %s", name, reason)
    return Precision(name, "cpu", reason)
