"""`train.precision=auto`: bf16 autocast where it makes training faster here, fp32 elsewhere.

The rule, by device:
- CUDA: bf16 when the GPU supports it (`torch.cuda.is_bf16_supported()`), else fp32.
- CPU: fp32, unless the CPU has bf16 matrix units (AMX `amx_bf16` or `avx512_bf16` in its flags) *and* a
  probe of this model's real training step (forward and backward, same batch) runs at least 15 % faster
  under bf16. Bare bf16 matmuls are several times faster on such CPUs, yet small models lose to per-op
  overheads (a 4x128 text model trained 17 % slower), so only the model's own step decides. Without those
  units bf16 is emulated and far slower: no probe is run. The probe's timings are cached per machine and
  model shape in `$MUSELAB_CACHE/precision.json`, so it costs about a second once.
- MPS and anything else: fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from muselab.core.io import atomic_write_text

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
PROBE_GAIN = 0.85  # bf16 is chosen when its step takes at most this share of the fp32 step's time

# seconds per training step: precision -> seconds
StepProbe = Callable[[str], float]


@dataclass(frozen=True)
class PrecisionChoice:
    value: str  # "fp32" | "bf16"
    reason: str


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def decide_precision(device_type: str, *, cuda_bf16: bool = False, flags: frozenset[str] = frozenset(),
                     probe: StepProbe | None = None) -> PrecisionChoice:
    """The precision `auto` means for this device and these capabilities (the rule in the module doc)."""
    if device_type == "cuda":
        if cuda_bf16:
            return PrecisionChoice("bf16", "the GPU supports bf16")
        return PrecisionChoice("fp32", "the GPU has no bf16 support")
    if device_type != "cpu":
        return PrecisionChoice("fp32", f"bf16 autocast is not used on {device_type}")
    units = sorted(BF16_CPU_FLAGS & flags)
    if not units:
        return PrecisionChoice("fp32", "this CPU has no AMX or AVX512-BF16, so bf16 would be slower")
    if probe is None:
        return PrecisionChoice("fp32", f"this CPU has {', '.join(units)} but no step was timed")
    fp32_s = probe("fp32")
    try:
        bf16_s = probe("bf16")
    except (RuntimeError, TypeError) as err:  # an op without bf16 support (some signal-processing kernels)
        return PrecisionChoice("fp32", f"this model's step fails under bf16 autocast ({str(err).splitlines()[0]})")
    timing = f"a training step takes {fp32_s * 1e3:.1f} ms in fp32, {bf16_s * 1e3:.1f} ms in bf16"
    if bf16_s <= PROBE_GAIN * fp32_s:
        return PrecisionChoice("bf16", f"{timing} (this CPU has {', '.join(units)})")
    return PrecisionChoice("fp32", f"{timing}: bf16 is not enough faster for this model")


def _cache_path() -> Path:
    return Path(os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab") / "precision.json"


def cached_probe(probe: StepProbe, model_key: str) -> StepProbe:
    """`probe` with its timings remembered per machine (CPU, threads, torch) and model shape."""
    machine = f"{_cpu_name()}|{torch.get_num_threads()}|{torch.__version__}"
    key = hashlib.sha256(f"{machine}|{model_key}".encode()).hexdigest()[:20]
    path = _cache_path()

    def timed(precision: str) -> float:
        try:
            cache = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
        entry = cache.get(key) if isinstance(cache.get(key), dict) else {}
        if isinstance(entry.get(precision), (int, float)):
            return float(entry[precision])
        seconds = probe(precision)
        cache[key] = {**entry, precision: seconds}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cache, indent=1))
        except OSError as err:  # a read-only cache costs a probe next time, nothing more
            log.debug("could not cache the precision probe in %s: %s", path, err)
        return seconds

    return timed


def resolve_precision(requested: str, device: torch.device, probe: StepProbe | None = None,
                      model_key: str = "") -> PrecisionChoice:
    """`requested` unless it is "auto"; then the rule above, probing (cached) where it needs to."""
    if requested != "auto":
        return PrecisionChoice(requested, "set in the config")
    if device.type == "cuda":
        return decide_precision("cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    flags = cpu_flags() if device.type == "cpu" else frozenset()
    return decide_precision(device.type, flags=flags,
                            probe=cached_probe(probe, model_key) if probe is not None else None)
