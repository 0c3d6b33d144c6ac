"""`muselab export`: a run's generator network as an ONNX or TorchScript file, for deployment without muselab.

A recipe says what to export through `Recipe.export_module` (the network, example inputs, input and output
names, the axes that may vary); everything else is here and the same for every recipe: the file is written
atomically, checked against torch on the example inputs, and described by a JSON sidecar (FILE.json) with
the names, shapes and dtypes of the inputs and outputs, what to pair the file with (sample rate, image size,
tokenizer) and where the weights came from.

Outputs of an exported network skip muselab's generation pipeline: no moderation, no memorization check,
no manifest, no watermark. The sidecar says so; whoever deploys it labels what it makes as AI-generated.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from muselab import __version__
from muselab.core.errors import ConfigError, OutputExistsError
from muselab.core.io import atomic_write, atomic_write_json
from muselab.core.modelcard import public_data
from muselab.core.registry import ExportSpec, Recipe, iter_recipes
from muselab.core.rundir import RunDir

if TYPE_CHECKING:
    from muselab.api import Run

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the torch.export-based ONNX exporter writes opset 18 and newer
ONNX_PACKAGES = ("onnx", "onnxscript")
INSTALL_HINT = "pip install 'muselab[export]'"
NOTICE = ("Outputs of this network are AI-generated. muselab's generation pipeline (moderation, memorization "
          "checks, manifests, watermarks) does not run inside it: label what it makes as AI-generated.")


@dataclass
class Exported:
    """What `export` wrote: the model file, its sidecar, and how closely the file reproduces torch."""

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float | None  # the file vs torch on the example inputs; None when no runtime was at hand


def exportable_recipes() -> list[str]:
    """The recipes that export (those that override `Recipe.export_module`)."""
    return [r.name for r in iter_recipes() if type(r).export_module is not Recipe.export_module]


def check_exportable(recipe: Recipe) -> None:
    if type(recipe).export_module is Recipe.export_module:
        raise ConfigError(f"{recipe.name} runs cannot be exported; export works for "
                          f"{', '.join(exportable_recipes())}")


def check_format(format: str, opset: int | None) -> None:
    """Refuse an unknown format, an opset where it does not apply, and ONNX without its packages."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; choose one of: {', '.join(FORMATS)}")
    if opset is not None and format != "onnx":
        raise ConfigError("--opset applies to --format onnx only")
    if opset is not None and opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old for torch's ONNX exporter; use {MIN_OPSET} or newer")
    if format == "onnx":
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"ONNX export needs the {' and '.join(missing)} package{'s' * (len(missing) > 1)}: "
                              f"{INSTALL_HINT} (or export with --format torchscript)")


def export_run(run: Run, format: str = "onnx", out: str | Path | None = None, *, opset: int | None = None,
               overwrite: bool = False) -> Exported:
    """Write the run's exportable network as `format` to `out` (default RUN/model.onnx or RUN/model.pt) and
    its sidecar to OUT.json. A file of the user's is replaced only with `overwrite`."""
    check_exportable(run.recipe)
    check_format(format, opset)
    spec = run.recipe.export_module(run.model, run.config, run.assets)
    if spec is None:
        raise ConfigError(f"this {run.recipe.name} run cannot be exported")
    rundir = RunDir(run.path)
    if out is None:
        target = rundir / f"model{FORMATS[format]}"  # the run's own file: recorded, and replaced freely
        rundir.reopen()
        rundir.record(target.name, f"{target.name}.json")
    else:
        target = Path(out)
        for path in (target, Path(f"{target}.json")):
            if path.exists() and not overwrite:
                raise OutputExistsError(f"'{path}' exists; pass --overwrite to replace it, or choose another --out")
    sidecar = Path(f"{target}.json")

    # The file is made on the CPU in float32, whatever device and precision the run was loaded with
    module = copy.deepcopy(spec.module).to("cpu", torch.float32).eval()
    inputs = tuple(x.detach().cpu() for x in spec.example_inputs)
    with torch.no_grad():
        expected = _as_tuple(module(*inputs))
    with _quiet():
        if format == "onnx":
            atomic_write(target, lambda tmp: _write_onnx(module, inputs, spec, tmp, opset or DEFAULT_OPSET))
            got, runtime = _run_onnx(target, spec, inputs)
        else:
            atomic_write(target, lambda tmp: _write_torchscript(module, inputs, tmp))
            got, runtime = _run_torchscript(target, inputs), f"torch.jit {torch.__version__}"
    diff = None if got is None else max(float((torch.as_tensor(g) - e).abs().max()) for g, e in zip(got, expected,
                                                                                                      strict=True))
    atomic_write_json(sidecar, _sidecar(run, spec, format, target, opset or DEFAULT_OPSET, inputs, expected, diff,
                                        runtime))
    return Exported(target, sidecar, format, diff)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' warnings and progress lines say nothing a user of `muselab export` can act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _write_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], spec: ExportSpec, path: Path,
                opset: int) -> None:
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1, max=spec.axis_max.get(name))
        return dims[name]

    for input_name, x in zip(spec.input_names, inputs, strict=True):
        for axis, name in spec.dynamic_axes.get(input_name, {}).items():
            if x.shape[axis] < 2:  # a recipe's bug, not the user's: torch.export would fix the axis
                raise ValueError(f"example input '{input_name}' has size {x.shape[axis]} on its dynamic axis "
                                 f"'{name}'; give it 2 or more")
    shapes = tuple({axis: dim(name) for axis, name in spec.dynamic_axes.get(input_name, {}).items()}
                   for input_name in spec.input_names)
    torch.onnx.export(module, inputs, str(path), input_names=spec.input_names, output_names=spec.output_names,
                      opset_version=opset, dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False)


def _write_torchscript(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(module, inputs, check_trace=False)
    traced.save(str(path))


def _run_onnx(path: Path, spec: ExportSpec, inputs: tuple[torch.Tensor, ...]) -> tuple[list[Any] | None, str]:
    """The file's outputs under onnxruntime (None when it is not installed: the export stands unchecked)."""
    try:
        import onnxruntime
    except ImportError:
        return None, "none (onnxruntime is not installed)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(spec.input_names, inputs, strict=True)}
    return session.run(spec.output_names, feed), f"onnxruntime {onnxruntime.__version__}"


def _run_torchscript(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(_as_tuple(torch.jit.load(str(path))(*inputs)))


def _described(names: list[str], tensors: tuple[torch.Tensor, ...], spec: ExportSpec) -> list[dict[str, Any]]:
    rows = []
    for name, x in zip(names, tensors, strict=True):
        axes = spec.dynamic_axes.get(name, {})
        rows.append({"name": name, "shape": [axes.get(i, size) for i, size in enumerate(x.shape)],
                     "dtype": str(x.dtype).removeprefix("torch."), "meaning": spec.meaning.get(name, "")})
    return rows


def _sidecar(run: Run, spec: ExportSpec, format: str, target: Path, opset: int, inputs: tuple[torch.Tensor, ...],
             outputs: tuple[torch.Tensor, ...], diff: float | None, runtime: str) -> dict[str, Any]:
    saved = run.saved
    return {
        "file": target.name,
        "format": format,
        **({"opset": opset} if format == "onnx" else {}),
        "recipe": run.recipe.name,
        "what": spec.description,
        "inputs": _described(spec.input_names, inputs, spec),
        "outputs": _described(spec.output_names, outputs, spec),
        "axis_max": spec.axis_max,
        "pair_with": spec.pair_with,
        "check": {"max_abs_diff": diff, "against": "torch on the example inputs", "runtime": runtime},
        "notice": NOTICE,
        "provenance": {
            "run": run.path.name,
            "run_id": run.run_id,
            "preset": saved.get("preset"),
            "data": public_data(saved.get("data", {})),
            "trained_with": saved.get("versions", {}),
            "config": saved.get("config", {}),
            "exported_with": {"muselab": __version__, "torch": torch.__version__},
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
