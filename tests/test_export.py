"""`muselab export`: each exportable recipe's network as ONNX and TorchScript reproduces torch; the rest is
refused in one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import muselab
from muselab import api, cli
from muselab.core.registry import Recipe, get_recipe
from muselab.core.rundir import RunDir
from muselab.exporter import exportable_recipes

EXPORTABLE = ["audio-vocoder", "image-gan", "image-vae", "text-lm"]
TOLERANCE = 1e-4  # fp32


def tolerance(name: str) -> float:
    # The vocoder's 8 Griffin-Lim iterations, each with a momentum step, grow the two arithmetics' rounding
    # differences about tenfold (matrix-product DFTs in the export, FFTs in torch)
    return 1e-3 if name == "audio-vocoder" else TOLERANCE
# torch 2.13 deprecates TorchScript; the format stays for runtimes that read it (LibTorch, older deployments)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> dict[str, Path]:
    """One tiny run per exportable recipe (a few steps: the weights need not be good, only trained).
    The GAN is class-conditional, so a labels input is covered too. Tests must not modify them."""
    root = tmp_path_factory.mktemp("export-runs")
    made = {"text-lm": tiny_run}
    for name, overrides in (("image-gan", {"model": {"conditional": True}}), ("image-vae", {}), ("audio-vocoder", {})):
        data = "builtin:digits" if name.startswith("image") else None
        api.train(name, data, root / name, preset="tiny", overrides=overrides, max_steps=2, quiet=True)
        made[name] = root / name
    return made


@torch.no_grad()
def _cases(run: api.Run) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs of other shapes than the export's examples, and what muselab itself makes of them."""
    gen = torch.Generator().manual_seed(7)
    model = run.model
    if run.recipe.name == "text-lm":
        block = model.cfg.block_size
        ids = torch.randint(0, model.cfg.vocab_size, (3, block), generator=gen)
        return {"input_ids": ids}, model.uncached_step()(ids)
    if run.recipe.name == "image-gan":
        z, labels = torch.randn(3, model.cfg.latent_dim, generator=gen), torch.tensor([2, 0, 9])
        return {"latent": z, "labels": labels}, model.generate_from(z, labels)
    if run.recipe.name == "image-vae":
        z = torch.randn(5, model.cfg.latent_dim, generator=gen)
        return {"latent": z}, model.decode(z)
    mel = torch.randn(2, 80, 21, generator=gen) - 4.0
    return {"mel": mel}, model.vocode(mel)


def test_the_exportable_recipes_are_the_plain_networks():
    assert exportable_recipes() == EXPORTABLE


@pytest.mark.parametrize("name", EXPORTABLE)
def test_each_export_spec_names_its_inputs_and_axes(name, runs):
    run = api.load(runs[name], "cpu")
    spec = run.recipe.export_module(run.model, run.config, run.assets)
    assert len(spec.input_names) == len(spec.example_inputs)
    assert set(spec.dynamic_axes) <= {*spec.input_names, *spec.output_names}
    assert set(spec.meaning) == {*spec.input_names, *spec.output_names}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_export_reproduces_torch(name, runs, tmp_path):
    import onnxruntime

    out = tmp_path / "model.onnx"
    done = api.export(runs[name], "onnx", out)
    assert done.path == out and done.max_abs_diff is not None and done.max_abs_diff < tolerance(name)
    run = api.load(runs[name], "cpu")
    feed, expected = _cases(run)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {key: value.numpy() for key, value in feed.items()})
    assert got.shape == tuple(expected.shape) and got.dtype == np.float32
    assert np.abs(got - expected.numpy()).max() < tolerance(name)

    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert [i["name"] for i in sidecar["inputs"]] == [i.name for i in session.get_inputs()] == list(feed)
    assert [o["name"] for o in sidecar["outputs"]] == [o.name for o in session.get_outputs()]
    assert sidecar["inputs"][0]["shape"][0] == "batch" and sidecar["outputs"][0]["dtype"] == "float32"
    assert sidecar["format"] == "onnx" and sidecar["opset"] == 18 and sidecar["recipe"] == name
    assert sidecar["provenance"]["run_id"] == run.run_id and "AI-generated" in sidecar["notice"]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_torchscript_export_reloads_and_reproduces_torch(name, runs, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert cli.main(["export", str(runs[name]), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max abs difference from torch" in capsys.readouterr().out
    feed, expected = _cases(api.load(runs[name], "cpu"))
    with torch.no_grad():
        got = torch.jit.load(str(out))(*feed.values())
    assert got.shape == expected.shape and (got - expected).abs().max() < tolerance(name)
    assert json.loads(Path(f"{out}.json").read_text())["pair_with"]


def test_what_the_sidecar_pairs_with(runs, tmp_path):
    muselab.export(runs["text-lm"], "torchscript", tmp_path / "text-lm.pt")  # the package's API
    for name in ("audio-vocoder", "image-gan"):
        muselab.load(runs[name]).export("torchscript", tmp_path / f"{name}.pt")  # a loaded run, on any device
    pairs = {name: json.loads((tmp_path / f"{name}.pt.json").read_text())["pair_with"]
             for name in ("text-lm", "audio-vocoder", "image-gan")}
    assert pairs["text-lm"]["tokenizer"] == "tokenizer.json" and pairs["text-lm"]["context_tokens"] > 1
    assert pairs["audio-vocoder"]["sample_rate"] == 22050 and pairs["audio-vocoder"]["hop"] == 256
    assert pairs["image-gan"]["image_size"] == 8 and len(pairs["image-gan"]["class_names"]) == 10


def test_the_default_file_joins_the_run_and_a_users_file_needs_overwrite(runs, tmp_path, capsys):
    run = Path(shutil.copytree(runs["image-vae"], tmp_path / "run"))
    assert cli.main(["export", str(run), "--format", "torchscript"]) == 0
    assert (run / "model.pt").is_file() and (run / "model.pt.json").is_file()
    assert {"model.pt", "model.pt.json"} <= set(RunDir(run).recorded())  # --overwrite of the run removes them
    assert cli.main(["export", str(run), "--format", "torchscript"]) == 0  # the run's own file: replaced

    mine = tmp_path / "mine.pt"
    mine.write_text("keep me")
    assert cli.main(["export", str(run), "--format", "torchscript", "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite" in err and mine.read_text() == "keep me"
    assert cli.main(["export", str(run), "--format", "torchscript", "--out", str(mine), "--overwrite"]) == 0
    assert torch.jit.load(str(mine)) is not None


def test_a_recipe_without_a_plain_network_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "diffusion"
    api.train("image-diffusion", "builtin:digits", run, preset="tiny", max_steps=1, quiet=True)
    assert cli.main(["export", str(run)]) == 2
    assert capsys.readouterr().err.strip() == ("muselab: error: image-diffusion runs cannot be exported; export "
                                               f"works for {', '.join(EXPORTABLE)}")
    assert not (run / "model.onnx").exists()


@pytest.mark.parametrize("args,words", [
    (["--format", "torchscript", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--opset", "11"], "use 18 or newer"),
])
def test_bad_export_options_are_one_line_errors(args, words, runs, capsys):
    assert cli.main(["export", str(runs["image-vae"]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err


def test_onnx_without_its_packages_says_how_to_get_them(runs, monkeypatch, capsys):
    import importlib.util

    real: Callable = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert cli.main(["export", str(runs["image-vae"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("muselab: error: ONNX export needs the onnxscript package: pip install 'muselab[export]' "
                   "(or export with --format torchscript)")


def test_a_recipe_exports_by_overriding_export_module_only():
    assert type(get_recipe("image-diffusion")).export_module is Recipe.export_module
    assert type(get_recipe("image-gan")).export_module is not Recipe.export_module


def test_an_example_of_size_one_on_a_dynamic_axis_is_a_recipe_bug_caught_before_exporting(tmp_path):
    from muselab.core.registry import ExportSpec
    from muselab.exporter import _write_onnx

    spec = ExportSpec(torch.nn.Identity(), (torch.zeros(1, 3),), ["x"], ["y"], {"x": {0: "batch"}}, "identity")
    with pytest.raises(ValueError, match="give it 2 or more"):
        _write_onnx(spec.module, spec.example_inputs, spec, tmp_path / "m.onnx", 18)
    assert not (tmp_path / "m.onnx").exists()
