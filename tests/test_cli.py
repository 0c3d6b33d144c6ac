"""The command line on its happy paths, in a real subprocess."""

import json
import shutil

import pytest

from conftest import run_cli


def test_version_and_recipes():
    assert run_cli("--version").stdout.startswith("muselab ")
    recipes = run_cli("recipes")
    listed = [line.split()[0] for line in recipes.stdout.splitlines()]
    assert recipes.returncode == 0 and {"text-lm", "text-seq2seq", "image-gan", "image-vae"} <= set(listed)
    assert listed == sorted(listed)


def test_generate_prints_text(tiny_run):
    result = run_cli("generate", str(tiny_run), "--prompt", "The", "--max-new-tokens", "30", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The") and len(result.stdout) > 10


def test_same_seed_same_output_across_processes(tiny_run):
    args = ("generate", str(tiny_run), "--max-new-tokens", "40", "--seed", "9", "--num-samples", "3")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0 and first.stdout == second.stdout
    assert first.stdout.count("----- sample") == 3


def test_generate_to_a_folder_writes_manifests(tiny_run, tmp_path):
    out = tmp_path / "samples"
    result = run_cli("generate", str(tiny_run), "--num-samples", "2", "--max-new-tokens", "20", "--seed", "1",
                     "--temperature", "0.7", "--top-k", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    texts = sorted(out.glob("*.txt"))
    assert [p.name for p in texts] == ["sample_000.txt", "sample_001.txt"]
    manifest = json.loads((out / "sample_000.txt.json").read_text())
    assert manifest["ai_generated"] is True and manifest["recipe"] == "text-lm"
    assert manifest["seed"] == 1 and manifest["controls"]["top_k"] == 5
    assert manifest["digital_source_type"].endswith("trainedAlgorithmicMedia")
    again = run_cli("generate", str(tiny_run), "--num-samples", "2", "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_generate_help_lists_the_controls(tiny_run):
    result = run_cli("generate", str(tiny_run), "--help")
    for option in ("--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty",
                   "--no-repeat-ngram-size", "--stop", "--num-samples", "--seed", "--max-new-tokens"):
        assert option in result.stdout


def test_info(tiny_run):
    result = run_cli("info", str(tiny_run), "--json")
    info = json.loads(result.stdout)
    assert info["recipe"] == "text-lm" and info["step"] == 30 and info["final_val_loss"] > 0


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--preset", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "val_loss" in html and "new_word_share" in html
    assert "grapheme-to-phoneme" in html and "wer" in html
    assert "conditional GAN" in html and "control_accuracy" in html and html.count("data:image/png;base64,") >= 9
    assert "learned instrument" in html and "vocoder_mcd" in html and html.count("<audio") >= 2
    if shutil.which("flite"):
        assert "four voices" in html and "wer_flite_reference" in html and html.count("<audio") >= 5
    assert "chorales learnt from Bach" in html and "in_key_share_random" in html
    if shutil.which("fluidsynth"):
        assert html.count("<audio") >= 4 and (out / "music" / "ode.wav").is_file()
    assert (out / "music" / "ode.mid").is_file() and (out / "music" / "chorale.png").is_file()
    assert run_cli("demo", "--preset", "tiny", "--out", str(out)).returncode == 2
