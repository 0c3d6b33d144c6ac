"""The CLI speaks one language: help shows defaults, ranges and choices; configs can be seen before a run;
recipe-specific options apply where they work; old spellings keep working with a note."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import BaseModel

from muselab import api
from muselab.cli import _generate_parser, main
from muselab.core.config import load_toml
from muselab.core.controls import parse_controls
from muselab.core.registry import get_recipe, recipe_names
from muselab.core.toml_out import dumps_toml

FACTS = re.compile(r"\((?:[^()]*; )?(default: |range: |choices: |required)")


@pytest.mark.parametrize("name", recipe_names())
def test_generate_help_of_every_recipe_gives_each_option_a_default_range_or_choices(name, capsys):
    assert main(["generate", "--recipe", name, "--help"]) == 0
    shown = capsys.readouterr().out
    parser = _generate_parser(get_recipe(name), "muselab generate")
    options = [a for a in parser._actions if a.help and a.help != "==SUPPRESS==" and a.dest != "help"]
    assert options
    for action in options:
        assert FACTS.search(action.help), f"{name} {action.option_strings[0]}: {action.help}"
        assert action.option_strings[0] in shown
    controls = get_recipe(name).controls_class.model_fields
    assert all("--" + field.replace("_", "-") in shown for field in controls)


def test_generate_help_shows_choices_and_ranges_of_the_controls(capsys):
    assert main(["generate", "--recipe", "text-lm", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--memorization {flag,resample,reject,off}" in text
    assert "(default: 0.8; range: >= 0)" in text  # temperature
    assert "(default: 1.0; range: > 0 and <= 1)" in text  # top-p


def test_generate_recipe_without_help_is_refused_in_one_line(capsys):
    assert main(["generate", "--recipe", "text-lm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--recipe only shows" in err


def test_recipes_name_prints_config_fields_with_defaults_per_preset_data_and_controls(capsys):
    assert main(["recipes", "image-gan"]) == 0
    text = capsys.readouterr().out
    assert "builtin:digits" in text and "builtin:shapes" in text
    # dotted config fields with the default preset's value, the other presets' values, range, description
    assert re.search(r"^  model\.width = 16 \(tiny: 8, base: 64; range: >= 1\)  channels", text, re.M)
    assert re.search(r"^  model\.loss = hinge \(choices: nonsaturating, hinge, wgan-gp\)", text, re.M)
    assert re.search(r"^  train\.max_steps = \d+ \(tiny: ", text, re.M)
    assert re.search(r"^  --num-samples, --n \(default: 16; range: >= 1 and <= 10000\)", text, re.M)
    assert re.search(r"^  --memorization \(default: flag; choices: flag, resample, reject, off\)", text, re.M)


@pytest.mark.parametrize("name", recipe_names())
def test_recipes_name_lists_every_config_field(name, capsys):
    assert main(["recipes", name]) == 0
    text = capsys.readouterr().out

    def leaves(model: type[BaseModel], prefix: str) -> list[str]:  # sections may nest (data.mixed.utterances)
        found = []
        for key, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += leaves(kind, f"{prefix}{key}.")
            else:
                found.append(f"{prefix}{key}")
        return found

    for dotted in leaves(get_recipe(name).config_class, ""):
        assert f"\n  {dotted} = " in text, dotted


@pytest.mark.parametrize("name", recipe_names())
@pytest.mark.parametrize("preset", ["default", "tiny"])
def test_print_config_reads_back_as_the_same_config(name, preset, tmp_path, capsys):
    args = ["train", name, "--print-config", "--preset", preset, "--set", "train.log_every=3"]
    assert main(args) == 0
    toml = tmp_path / "c.toml"
    toml.write_text(capsys.readouterr().out, encoding="utf-8")
    expected = api.resolve_config(name, preset=preset, overrides=["train.log_every=3"])
    assert api.resolve_config(name, preset=preset, config_file=str(toml)) == expected
    # the file alone gives the same config, unless it says to pass the preset too (TOML has no null)
    if "--preset" not in toml.read_text().splitlines()[0]:
        assert api.resolve_config(name, config_file=str(toml)) == expected


def test_print_config_then_config_reproduces_the_default_run_config(corpus_file, tmp_path, capsys):
    assert main(["train", "text-lm", "--preset", "tiny", "--print-config"]) == 0
    toml = tmp_path / "c.toml"
    toml.write_text(capsys.readouterr().out, encoding="utf-8")
    common = ["--data", str(corpus_file), "--max-steps", "1", "--quiet"]
    assert main(["train", "text-lm", "--preset", "tiny", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "text-lm", "--config", str(toml), "--out", str(tmp_path / "b"), *common]) == 0
    configs = [json.loads((tmp_path / run / "config.json").read_text())["config"] for run in "ab"]
    assert configs[0] == configs[1]


def test_toml_writer_round_trips_values_toml_can_hold(tmp_path):
    data = {"a": 1, "b": 0.1, "c": 1e-05, "d": "tab\there \"q\" é", "e": [1, 2], "f": True,
            "s": {"x": 2.0, "n": None, "deep": {"k": "v"}}, "weird key": "ok"}
    path = tmp_path / "x.toml"
    path.write_text(dumps_toml(data, header="made by a test"), encoding="utf-8")
    back = load_toml(path)
    expected = {**data, "s": {"x": 2.0, "deep": {"k": "v"}}}  # None is left out (TOML has no null)
    assert back == expected


SKIPS = {"image-gan", "image-vae", "audio-ddsp", "audio-vocoder"}


@pytest.mark.parametrize("name", recipe_names())
def test_skip_bad_files_is_taken_or_refused_in_one_line(name, capsys):
    status = main(["train", name, "--skip-bad-files", "--print-config"])
    out, err = capsys.readouterr()
    data = get_recipe(name).config_class.model_fields["data"].annotation
    if "skip_bad_files" in data.model_fields:
        assert status == 0 and "skip_bad_files = true" in out
    else:
        assert status == 2 and err.count("\n") == 1 and "--skip-bad-files does not apply to" in err
    assert SKIPS <= {n for n in recipe_names()
                     if "skip_bad_files" in get_recipe(n).config_class.model_fields["data"].annotation.model_fields}


def _audio_folder(root: Path) -> Path:
    root.mkdir()
    t = np.arange(22050) / 22050
    for i, hz in enumerate((220.0, 330.0, 440.0)):
        sf.write(root / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 22050)
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return root


def test_vocoder_folder_skips_a_bad_file_only_when_asked(tmp_path):
    from muselab.audio.vocoder_recipe import _load_folder
    from muselab.core.errors import DataError

    folder = _audio_folder(tmp_path / "audio")
    with pytest.raises(DataError, match="broken.wav"):
        _load_folder(folder, 0.3)
    train, test, info = _load_folder(folder, 0.3, skip_bad_files=True)
    assert len(train) + len(test) == 3 and info["skipped_files"] == 1


def test_ddsp_folder_skips_a_bad_file_only_when_asked(tmp_path):
    from muselab.audio.ddsp_recipe import AudioDDSPRecipe, _raw_clips
    from muselab.core.config import build_config
    from muselab.core.errors import DataError

    folder = _audio_folder(tmp_path / "audio")
    cfg = build_config(AudioDDSPRecipe.config_class, [{"data": {"f0": "pyin"}}])
    with pytest.raises(DataError, match="broken.wav"):
        _raw_clips(cfg, str(folder))
    cfg = build_config(AudioDDSPRecipe.config_class, [{"data": {"f0": "pyin", "skip_bad_files": True}}])
    train, test, _ = _raw_clips(cfg, str(folder))
    assert sorted(c.name for c in train + test) == ["tone0.wav", "tone1.wav", "tone2.wav"]


# -- one vocabulary: other spellings ----------------------------------------------------------------------
def test_images_take_num_samples_and_keep_n_as_an_alias():
    from muselab.image.controls import GANControls

    assert parse_controls(GANControls, {"n": 3}).num_samples == 3
    assert parse_controls(GANControls, {"num_samples": 4}).num_samples == 4
    parser = _generate_parser(get_recipe("image-gan"), "muselab generate")
    assert parser.parse_args(["--n", "5"]).num_samples == 5
    assert parser.parse_args(["--memorization", "reject"]).memorization == "reject"


def test_seq2seq_takes_num_beams_as_an_alias_of_beam():
    parser = _generate_parser(get_recipe("text-seq2seq"), "muselab generate")
    assert parser.parse_args(["--num-beams", "4"]).beam == 4
    from muselab.text.seq2seq_recipe import Seq2SeqControls

    assert parse_controls(Seq2SeqControls, {"num_beams": 4}).beam == 4


def test_copy_guard_is_a_deprecated_alias_of_memorization(capsys):
    from muselab.text.controls import TextGenerationControls

    with pytest.warns(DeprecationWarning, match="--copy-guard is deprecated; use --memorization"):
        controls = parse_controls(TextGenerationControls, {"copy_guard": "reject"})
    assert controls.memorization == "reject"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_controls(TextGenerationControls, {"memorization": "off"}).memorization == "off"
    parser = _generate_parser(get_recipe("text-lm"), "muselab generate")
    assert parser.parse_args(["--copy-guard", "reject"]).memorization == "reject"
    assert capsys.readouterr().err == "muselab: note: --copy-guard is deprecated; use --memorization\n"
    assert "--copy-guard" not in parser.format_help()  # hidden: help teaches the one name


def test_copy_guard_still_works_from_the_command_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "out.txt"
    status = main(["generate", str(tiny_run), "--copy-guard", "flag", "--max-new-tokens", "5", "--seed", "0",
                   "--out", str(out)])
    assert status == 0
    assert "muselab: note: --copy-guard is deprecated; use --memorization" in capsys.readouterr().err
    assert out.is_file()


def test_memorization_off_turns_the_text_guard_off(tiny_run):
    run = api.load(tiny_run, device="cpu")
    result = run.generate("", max_new_tokens=5, seed=0, stream=False, memorization="off")
    assert result.notes[0]["memorization"] == {"checked": False, "reason": "turned off"}
