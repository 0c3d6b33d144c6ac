"""The recipe contract: every registered recipe goes through train -> generate -> save -> detect -> evaluate,
and the generation pipeline's checks reach a recipe that has no safety code of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from pydantic import BaseModel

from muselab import api
from muselab.core import registry
from muselab.core.registry import Capabilities, Evaluation, recipe_names
from muselab.core.results import Result
from muselab.core.rundir import RunDir
from muselab.safety.detect import detect_file
from muselab.safety.moderation import PolicyViolation


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_declares_what_the_pipeline_needs(name: str) -> None:
    recipe = registry.get_recipe(name)
    assert recipe.name == name and recipe.summary
    assert isinstance(recipe.capabilities, Capabilities)
    assert issubclass(recipe.controls_class, BaseModel) and issubclass(recipe.config_class, BaseModel)
    fields = recipe.controls_class.model_fields
    assert recipe.capabilities.main_control in fields
    assert set(recipe.capabilities.inputs) <= set(fields)
    assert set(recipe.capabilities.inputs.values()) <= {"steer", "transform"}
    assert {"tiny", "default"} <= set(recipe.presets)


# -------------------------------------------------------------------------- a recipe with no safety code

@pytest.fixture()
def unigram_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(registry._RECIPES, "text-unigram", "example_recipe:UnigramRecipe")
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50, encoding="utf-8")
    out = tmp_path / "unigram"
    api.train("text-unigram", str(text), out, quiet=True)
    return out


def test_a_recipe_without_safety_code_still_gets_every_check(unigram_run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from example_recipe import UnigramRecipe

    run = api.load(unigram_run)
    # input moderation: a blocked prompt refuses the request, a redacted one is masked in the output
    with pytest.raises(PolicyViolation, match="sexual"):
        run.generate("porn", length=5, seed=1)
    result = run.generate("shit happens ", length=5, seed=1)
    assert result.items[0].startswith("**** happens ")
    assert result.notes[0]["moderation"]["prompt"] == [{"category": "profanity", "action": "redact", "count": 1}]
    assert result.notes[0]["memorization"] == {"checked": False, "reason": "this recipe has no memorization measure"}
    # output moderation, item by item: a blocked sample is refused, the other kept
    plain = UnigramRecipe.generate

    def sometimes_blocked(self: Any, *args: Any) -> Any:
        made = plain(self, *args)
        made.texts[1] = "some porn here"
        return made

    monkeypatch.setattr(UnigramRecipe, "generate", sometimes_blocked)
    mixed = run.generate("", length=5, seed=2, num_samples=3)
    assert len(mixed.items) == 2 and [(r.index, r.check, r.category) for r in mixed.refused] == [
        (1, "output moderation", "sexual")]
    # provenance: every saved file carries its manifest
    files = mixed.save(tmp_path / "out")
    assert len(files) == 2
    for file in files:
        found = detect_file(file)
        assert found["manifest"]["ai_generated"] is True and found["manifest"]["recipe"] == "text-unigram"
        assert "moderation" in found["manifest"] and "memorization" in found["manifest"]


def test_a_result_made_outside_the_pipeline_cannot_be_saved(tmp_path: Path) -> None:
    from muselab.core.errors import MuselabError
    from muselab.core.results import TextResult

    with pytest.raises(MuselabError, match="pipeline"):
        TextResult(texts=["hello"]).save(tmp_path / "out")


# --------------------------------------------------------------------------- every registered recipe

def _wav(path: Path) -> str:
    t = np.arange(22050) / 22050
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    return str(path)


# recipe -> (data, config overrides, generation controls); pictures at 64 px so they carry a watermark
CASES: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "text-lm": ("builtin:words", [], {"prompt": "", "max_new_tokens": 8, "stream": False}),
    "text-seq2seq": ("builtin:cmudict", [], {"input": ["cat", "dog"]}),
    "image-gan": ("builtin:digits", ["data.size=64", "eval.samples_per_class=10", "eval.reference_images=100"],
                  {"num_samples": 2}),
    "image-vae": ("builtin:digits", ["data.size=64", "eval.samples_per_class=10", "eval.reference_images=100"],
                  {"num_samples": 2}),
    # x0 prediction: two steps leave an epsilon model's pictures clipped black and white and a v model's
    # near noise, neither of which holds a watermark; an untrained x0 model draws smooth grey
    "image-diffusion": ("builtin:digits", ["data.size=64", "model.prediction=x0", "eval.samples_per_class=10",
                                           "eval.reference_images=100"], {"num_samples": 2, "steps": 4}),
    "audio-ddsp": ("builtin:tones", [], {"notes": "C4:1 E4:1 G4:1 C5:1 G4:1 E4:1 C4:2"}),
    "audio-vocoder": ("builtin:tones", [], {}),
    "audio-tts": ("builtin:speech", ["eval.recognizer=false"],
                  {"text": "Hello there. This sentence is long enough to carry a watermark in its sound."}),
    "music-lm": ("builtin:bach", ["data.max_pieces=6"], {"bars": 2}),
}


def test_every_registered_recipe_has_a_contract_case() -> None:
    assert set(CASES) == set(recipe_names())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_train_generate_save_detect_evaluate(name: str, tmp_path: Path) -> None:
    data, overrides, controls = CASES[name]
    if name == "audio-vocoder":
        controls = {"wav": _wav(tmp_path / "in.wav")}
    out = tmp_path / "run"
    api.train(name, data, out, preset="tiny", max_steps=2, overrides=overrides, quiet=True)
    run = api.load(out, device="cpu")
    result = run.generate(seed=0, **controls)
    assert isinstance(result, Result) and len(result) >= 1 and not result.refused
    assert json.loads(json.dumps(result.to_json()))["provenance"]["recipe"] == name
    files = result.save(tmp_path / "out")
    for file in files:
        found = detect_file(file)
        assert found["manifest"]["recipe"] == name and found["manifest"]["ai_generated"] is True, found
        if found["kind"] in ("image", "audio"):
            assert found["watermark"] is True, found
    evaluation = run.recipe.evaluate(run.model, run.config, run.assets, RunDir(out),
                                     run.saved["data"]["spec"])
    assert isinstance(evaluation, Evaluation) and evaluation.metrics
