"""The default preset sizes itself to the data and the budget; anything the user sets wins."""

import json

from conftest import run_cli
from muselab import api
from muselab.cli import main
from muselab.core.registry import size_row
from muselab.text.lm_recipe import TextLMRecipe
from muselab.text.seq2seq_recipe import TextSeq2SeqRecipe


def test_size_row_picks_the_first_limit_above():
    assert [size_row(v, [10, 100]) for v in (0, 9.9, 10, 99, 100, 10**9)] == [0, 0, 1, 1, 2, 2]


def test_text_lm_rule_grows_with_data_and_is_capped_by_the_budget():
    recipe = TextLMRecipe()
    small = recipe.size_for_data({"train_tokens": 20_000, "vocab_size": 30}, None)
    medium = recipe.size_for_data({"train_tokens": 200_000, "vocab_size": 30}, 5.0)
    large = recipe.size_for_data({"train_tokens": 20_000_000, "vocab_size": 30}, None)
    capped = recipe.size_for_data({"train_tokens": 20_000_000, "vocab_size": 30}, 5.0)
    widths = [s.layer["model"]["n_embd"] for s in (small, medium, large)]
    assert widths == sorted(widths) and len(set(widths)) == 3
    assert small.layer["model"]["dropout"] > large.layer["model"]["dropout"]
    # five minutes cannot train the large model: the budget's row, without dropout (it would underfit)
    assert capped.layer["model"] == {**medium.layer["model"], "dropout": 0.0}
    assert "capped" in capped.rule and capped.inputs["budget_minutes"] == 5.0


def test_seq2seq_rule_keeps_the_tuned_preset_for_cmudict_sized_data():
    recipe = TextSeq2SeqRecipe()
    stats = {"train_pairs": 112_000, "source_vocab_size": 30, "target_vocab_size": 43}
    chosen = recipe.size_for_data(stats, None)
    preset = api.resolve_config("text-seq2seq")
    model = preset.model.model_dump()
    assert all(model[key] == value for key, value in chosen.layer["model"].items())
    assert chosen.layer["train"] == {"batch_size": preset.train.batch_size, "lr": preset.train.lr}
    tiny = recipe.size_for_data({**stats, "train_pairs": 500}, None)
    assert tiny.layer["model"]["hidden"] < model["hidden"] and tiny.layer["model"]["dropout"] > model["dropout"]


def test_default_preset_records_the_rule_and_set_wins(corpus_file, tmp_path, capsys):
    out = tmp_path / "run"
    api.train("text-lm", str(corpus_file), out, overrides=["model.n_layer=3", "train.eval_every=0"], max_steps=2,
              quiet=True)
    saved = json.loads((out / "config.json").read_text())
    sizing = saved["sizing"]
    assert sizing["rule"] == "xs" and sizing["inputs"]["train_tokens"] == saved["data"]["train_tokens"]
    assert sizing["chose"]["model.n_layer"] == 2 and sizing["overridden"] == ["model.n_layer"]
    assert saved["config"]["model"]["n_layer"] == 3  # --set wins
    assert saved["config"]["model"]["n_embd"] == sizing["chose"]["model.n_embd"]  # the rest is the rule's
    assert api.load(out).model.cfg.n_layer == 3
    assert main(["info", str(out)]) == 0
    assert "sizing: row xs, overridden: model.n_layer" in capsys.readouterr().out


def test_other_presets_are_not_resized(corpus_file, tmp_path):
    out = tmp_path / "run"
    api.train("text-lm", str(corpus_file), out, preset="tiny", max_steps=1, quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["sizing"] is None
    assert saved["config"]["model"]["n_embd"] == api.resolve_config("text-lm", preset="tiny").model.n_embd


def test_dry_run_prints_the_choice_and_steps_and_writes_nothing(corpus_file, tmp_path):
    result = run_cli("train", "text-lm", "--data", str(corpus_file), "--max-minutes", "2", "--dry-run",
                     "--set", "model.n_head=4", "--set", "model.n_embd=32", "--out", str(tmp_path / "run"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sizing rule: row xs" in out and "overridden by your settings: model.n_embd, model.n_head" in out
    steps = int(out.split("steps: about ")[1].split()[0].replace(",", ""))
    assert steps > 10
    assert "n_embd = 32" in out and "# max_steps = (unset)" in out
    assert list(tmp_path.iterdir()) == []


def test_image_rule_by_number_of_images():
    from muselab.image.gan_recipe import ImageGANRecipe

    recipe = ImageGANRecipe()
    default = api.resolve_config("image-gan")
    few, some = (recipe.size_for_data({"train_images": n}, 5.0) for n in (300, 5_000))
    many_short, many_long = (recipe.size_for_data({"train_images": 50_000}, m) for m in (10.0, None))
    assert some.layer == {"model": {"width": default.model.width}, "train": {"batch_size": default.train.batch_size}}
    assert few.layer["train"]["batch_size"] < default.train.batch_size and few.layer["model"]["diffaugment"]
    assert many_short.layer == some.layer and many_long.layer["model"]["width"] == 2 * default.model.width


def test_diffusion_narrows_for_large_images_on_a_short_budget():
    from muselab.image.diffusion_recipe import ImageDiffusionRecipe

    recipe = ImageDiffusionRecipe()
    default = api.resolve_config("image-diffusion")
    digits, shapes_short, shapes_long = (recipe.size_for_data({"train_images": 5_000, "size": size}, minutes)
                                         for size, minutes in ((8, 15.0), (32, 15.0), (32, None)))
    assert digits.rule == shapes_long.rule == "medium"
    assert digits.layer == shapes_long.layer == {"model": {"width": default.model.width},
                                                 "train": {"batch_size": default.train.batch_size}}
    assert shapes_short.rule == "medium, narrow" and shapes_short.inputs["size"] == 32
    assert shapes_short.layer == {"model": {"width": 16}, "train": {"batch_size": 32}}
    # few images keep the small-data row's settings under the narrow width
    few = recipe.size_for_data({"train_images": 300, "size": 64}, 5.0)
    assert few.rule == "small, narrow" and few.layer["model"]["width"] == 16 and few.layer["train"]["batch_size"] == 32


def test_image_default_preset_keeps_the_data_shape(tmp_path):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(24):
        Image.new("RGB", (8, 8), (10 * i, 255 - 10 * i, 128)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    api.train("image-gan", str(folder), out, max_steps=1, overrides=["data.size=8", "eval.samples=16",
                                                                     "eval.reference_images=16"], quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["sizing"]["rule"] == "small" and saved["config"]["model"]["size"] == 8
    assert saved["config"]["model"]["diffaugment"] == "color,translation,cutout" and not saved["sizing"]["overridden"]


def test_music_rule_keeps_the_tuned_preset_for_bach_sized_data():
    from muselab.music.recipe import MusicLMRecipe

    recipe = MusicLMRecipe()
    preset = api.resolve_config("music-lm")
    bach = recipe.size_for_data({"train_tokens": 500_000, "train_pieces": 300}, None)
    assert all(getattr(preset.model, key) == value for key, value in bach.layer["model"].items())
    assert bach.layer["train"]["batch_size"] == preset.train.batch_size and bach.layer["train"]["lr"] == preset.train.lr
    few = recipe.size_for_data({"train_tokens": 10_000, "train_pieces": 6}, None)
    assert few.layer["model"]["n_embd"] < preset.model.n_embd and few.layer["model"]["dropout"] > preset.model.dropout
    many_short = recipe.size_for_data({"train_tokens": 20_000_000, "train_pieces": 9_000}, 15.0)
    many_long = recipe.size_for_data({"train_tokens": 20_000_000, "train_pieces": 9_000}, None)
    assert "capped" in many_short.rule and many_short.layer["model"]["n_embd"] == preset.model.n_embd
    assert many_long.layer["model"]["n_embd"] > preset.model.n_embd


def test_audio_rules_keep_the_tuned_presets_for_the_built_in_data():
    from muselab.audio.ddsp_recipe import AudioDDSPRecipe
    from muselab.audio.tts_recipe import TTSRecipe
    from muselab.audio.vocoder_recipe import VocoderRecipe

    cases = [(AudioDDSPRecipe(), "train_minutes", (1.0, 12.0, 600.0), "hidden"),
             (VocoderRecipe(), "train_seconds", (60.0, 1_500.0, 36_000.0), "dim"),
             (TTSRecipe(), "train_utterances", (200, 2_680, 20_000), "dim")]
    for recipe, measure, (few, built_in, many), width in cases:
        preset = recipe.config_class()
        small, medium = (recipe.size_for_data({measure: n}, 10.0) for n in (few, built_in))
        many_short, many_long = (recipe.size_for_data({measure: many}, m) for m in (10.0, None))
        assert medium.rule == "medium" and medium.layer["train"]["batch_size"] == preset.train.batch_size
        assert medium.layer["model"][width] == getattr(preset.model, width)
        if recipe.name == "audio-tts":  # no small row: smaller batches and dropout measured worse
            assert small.layer == medium.layer
        else:
            assert small.rule == "small" and small.layer["train"]["batch_size"] < preset.train.batch_size
        assert many_short.layer == medium.layer, recipe.name  # ten minutes cannot train the wide model
        assert many_long.rule == "large" and many_long.layer["model"][width] == 2 * getattr(preset.model, width)
