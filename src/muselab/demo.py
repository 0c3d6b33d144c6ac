"""`muselab demo`: train on built-in data, generate, evaluate, and write an HTML report.

Each modality adds a section here; the whole demo stays under ten minutes on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from muselab import api
from muselab.core.owned import OwnedFolder
from muselab.core.rundir import RunDir
from muselab.data.text import load_text_corpus
from muselab.report.html import Section, write_report

TEXT_DATA = "builtin:words"
# Wall-clock budget per section and preset; presets not listed run their step count.
TEXT_MINUTES = {"default": 1.5}
G2P_MINUTES = {"default": 1.5}
IMAGE_DATA = "builtin:digits"
IMAGE_MINUTES = {"default": 1.0}
AUDIO_DATA = "builtin:tones"
AUDIO_MINUTES = {"default": 1.0}
DEMO_PHRASE = "C4:0.5 E4:0.5 G4:0.5 C5:1.5 R:0.5 G4:0.5 E4:0.5 C4:2"
SPEECH_DATA = "builtin:speech"
SPEECH_MINUTES = {"default": 2.0}
SPEECH_UTTERANCES = {"default": 400}  # the tiny preset sets its own
MUSIC_DATA = "builtin:bach"
MUSIC_MINUTES = {"default": 1.0}
# "Ode to Joy" (Beethoven, 1824), the melody the music section harmonises
DEMO_MELODY = "E4 E4 F4 G4 G4 F4 E4 D4 C4 C4 D4 E4 E4:1.5 D4:0.5 D4:2"
DEMO_SENTENCE = "Hello from muselab. This voice learned to speak a few minutes ago."
G2P_WORDS = ["muselab", "generative", "symphony", "xylophone", "quixotic", "brexit"]


class DemoFolder(OwnedFolder):
    """The demo's --out: `.muselab-demo.json` lists what the demo wrote, so --overwrite removes only that."""

    MARKER = ".muselab-demo.json"
    WHAT = "demo"
    LEGACY_NAMES = ("report.html",)


def _into_run(run_dir: Path, name: str) -> Path:
    """A file the demo adds to one of its runs joins that run's record of muselab's files."""
    run = RunDir(run_dir)
    run.reopen()
    return run / name


def _text_section(out: DemoFolder, preset: str) -> Section:
    run_dir = out / "text-lm"
    result = api.train("text-lm", TEXT_DATA, run_dir, preset=preset, max_minutes=TEXT_MINUTES.get(preset))
    run = api.load(run_dir)
    metrics = run.evaluate()
    samples = run.generate(max_new_tokens=200, num_samples=3, temperature=0.8, seed=0, stream=False).items
    dictionary = set(load_text_corpus(TEXT_DATA).text.split())
    words = [w for s in samples for w in s.split()]
    summary = {"steps": result.step, "minutes": round(result.elapsed_s / 60, 2), **metrics}
    if words:
        # the point of this model: words that look English but are not in the dictionary
        summary["new_word_share"] = sum(w not in dictionary for w in words) / len(words)
    return Section(
        title="Text: a language model that invents English-looking words",
        text=(f"A character-level Transformer ({run.model.num_parameters():,} parameters, preset '{preset}') "
              f"trained on {TEXT_DATA}: the words of the CMU Pronouncing Dictionary, one per line. "
              "It writes new words one letter at a time. Novelty counts samples that copy no long span "
              "of the training text verbatim."),
        metrics=summary,
        images=[(RunDir(run_dir) / "loss.png", "training and validation loss")],
        samples=samples,
    )


def _g2p_section(out: DemoFolder, preset: str) -> Section:
    run_dir = out / "g2p"
    result = api.train("text-seq2seq", "builtin:cmudict", run_dir, preset=preset,
                       max_minutes=G2P_MINUTES.get(preset))
    run = api.load(run_dir)
    metrics = run.evaluate()
    picture = _into_run(run_dir, "attention.png")
    lines = run.generate(input=G2P_WORDS, beam=5, attention_plot=str(picture)).lines()
    return Section(
        title="Text: spelling to pronunciation (grapheme-to-phoneme)",
        text=(f"An RNN encoder-decoder with {run.config.model.attention} attention "
              f"({run.model.num_parameters():,} parameters) trained for {result.elapsed_s / 60:.1f} minutes on "
              "CMUdict (stress stripped). Word error rate is the share of held-out test words with any phoneme "
              "wrong; the full default preset trains for 30 minutes. The picture shows where the decoder "
              f"looked in '{G2P_WORDS[0]}' while writing each phoneme."),
        metrics={k: v for k, v in metrics.items() if k in {"wer", "per", "wer_greedy", "per_greedy", "test_pairs", "split"}},
        images=[(picture, f"attention while pronouncing '{G2P_WORDS[0]}'")],
        samples=["\n".join(lines)],
    )


def _image_section(out: DemoFolder, preset: str) -> Section:
    run_dir = out / "image-gan"
    result = api.train("image-gan", IMAGE_DATA, run_dir, preset=preset, overrides=["model.conditional=true"],
                       max_minutes=IMAGE_MINUTES.get(preset))
    run = api.load(run_dir)
    metrics = run.evaluate()
    walk = run.generate(interpolate=["1", "2"], steps=8, label="3")
    strip = _into_run(run_dir, "interpolation.png")
    Image.fromarray(walk.grid).save(strip)
    keep = {"fd_muselab", "kid_muselab", "precision", "recall", "control_accuracy", "classifier_test_accuracy",
            "memorization_share"}
    return Section(
        title="Images: a class-conditional GAN draws the digit you ask for",
        text=(f"A conditional DCGAN ({run.model.num_parameters():,} parameters) trained for "
              f"{result.elapsed_s / 60:.1f} minutes on {IMAGE_DATA} (scikit-learn's 8x8 handwritten digits). "
              "Each row of the grid is one requested digit. Control accuracy is the share of 1,000 samples per "
              "digit that a separate classifier, trained by muselab on the data alone, reads as the digit asked "
              "for; the Fréchet distance (fd_muselab), kernel distance (kid_muselab) and precision/recall use "
              "that classifier's features, not Inception's, so they are not comparable with published FID or "
              "KID. The strip walks through the latent space between two seeds for the digit 3."),
        metrics={k: v for k, v in metrics.items() if k in keep},
        images=[(run_dir / "samples.png", "samples, one row per digit"), (strip, "interpolation between two seeds"),
                (run_dir / "memorization.png", "the samples closest to a training image"),
                (run_dir / "loss.png", "discriminator and generator losses")],
    )


def _audio_section(out: DemoFolder, preset: str) -> Section:
    ddsp_dir, vocoder_dir = out / "audio-ddsp", out / "audio-vocoder"
    ddsp = api.train("audio-ddsp", AUDIO_DATA, ddsp_dir, preset=preset, max_minutes=AUDIO_MINUTES.get(preset))
    run = api.load(ddsp_dir)
    ddsp_metrics = run.evaluate()
    with out.writing():  # the sound and its manifest
        (phrase_file,) = run.generate(DEMO_PHRASE, seed=0).save(out / "phrase.wav", overwrite=True)
    vocoder = api.train("audio-vocoder", AUDIO_DATA, vocoder_dir, preset=preset,
                        max_minutes=AUDIO_MINUTES.get(preset))
    vocoder_metrics = api.load(vocoder_dir).evaluate()
    keep = {"mrstft", "mrstft_sine_baseline", "pitch_within_20_cents", "mcd", "mcd_griffin_lim",
            "mrstft_griffin_lim", "realtime_factor"}
    metrics = {f"ddsp_{k}": v for k, v in ddsp_metrics.items() if k in keep}
    metrics |= {f"vocoder_{k}": v for k, v in vocoder_metrics.items() if k in keep}
    samples = sorted((vocoder_dir / "samples").glob("*.wav"))
    return Section(
        title="Sound: a learned instrument and a neural vocoder",
        text=(f"A DDSP harmonic-plus-noise synthesizer driven by a small network from pitch and loudness, trained "
              f"for {ddsp.elapsed_s / 60:.1f} minutes on {AUDIO_DATA} (synthetic flute, clarinet, bowed string and "
              f"brass notes), plays '{DEMO_PHRASE}'. Its resynthesis of held-out notes is compared with a plain "
              "sine at the same pitch and loudness (multi-resolution STFT distance, lower is better). The vocoder "
              f"turns 80-band mel spectrograms back into sound at 22,050 Hz, trained for {vocoder.elapsed_s / 60:.1f} "
              "minutes, beside Griffin-Lim with 32 iterations on the same mels."),
        metrics=metrics,
        images=[(ddsp_dir / "f0.png", "requested and rendered pitch"),
                (ddsp_dir / "spectrograms.png", "a held-out note and its resynthesis"),
                (vocoder_dir / "spectrograms.png", "original, vocoder and Griffin-Lim")],
        audio=[(phrase_file, f"the learned instrument plays {DEMO_PHRASE}")]
              + [(path, path.stem.replace("_", " ")) for path in samples],
    )


def _speech_section(out: DemoFolder, preset: str) -> Section:
    import shutil

    title = "Speech: text to speech trained on flite's voices"
    if shutil.which("flite") is None:
        return Section(title=title, text="Skipped: builtin:speech is made with the speech synthesizer flite, which "
                                         "is not installed (apt-get install flite).")
    run_dir = out / "audio-tts"
    overrides = [f"data.utterances={SPEECH_UTTERANCES[preset]}"] if preset in SPEECH_UTTERANCES else []
    result = api.train("audio-tts", SPEECH_DATA, run_dir, preset=preset, overrides=overrides,
                       max_minutes=SPEECH_MINUTES.get(preset))
    run = api.load(run_dir)
    metrics = run.evaluate(overrides=["eval.sentences=4", "eval.samples=1"])
    with out.writing():  # the sound, its word timestamps and its manifest
        # the G2P section's model pronounces "muselab", which CMUdict lacks
        g2p = str(out / "g2p") if (out / "g2p" / "config.json").is_file() else None
        spoken = run.generate(DEMO_SENTENCE, seed=0, g2p=g2p).save(out / "speech.wav", overwrite=True)
    keep = {"wer", "wer_flite_reference", "resynth_wer", "mcd_db", "resynth_mcd_db", "f0_rmse_cents",
            "realtime_factor"}
    return Section(
        title=title,
        text=(f"A FastSpeech 2-style acoustic model ({run.model.num_parameters():,} parameters) trained for "
              f"{result.elapsed_s / 60:.1f} minutes on {SPEECH_DATA} (sentences spoken by flite's four voices, "
              "with flite's phone durations), spoken by the default vocoder (Griffin-Lim where none ships); the "
              "G2P model above pronounces 'muselab'. Word error rates are pocketsphinx's, an "
              "offline recogniser, on held-out sentences: on muselab's speech, on the vocoder applied to flite's "
              "own mel (resynth) and on flite's recordings. A few minutes of training makes a voice with the "
              "right rhythm and pitch but few words a recogniser understands; the default preset trains for 30 "
              "minutes."),
        metrics={k: v for k, v in metrics.items() if k in keep},
        images=[(run_dir / "spectrograms.png", "flite, the vocoder on flite's mel, muselab"),
                (run_dir / "alignment.png", "phoneme durations: predicted, and flite's")],
        audio=[(spoken[0], DEMO_SENTENCE), (run_dir / "samples" / "tts.wav", "a held-out sentence: muselab"),
               (run_dir / "samples" / "flite_000.wav", "the same sentence: flite")],
    )


def _music_section(out: DemoFolder, preset: str) -> Section:
    from muselab.core.errors import DataError
    from muselab.data.soundfont import find_soundfont, fluidsynth_path

    run_dir = out / "music-lm"
    result = api.train("music-lm", MUSIC_DATA, run_dir, preset=preset, max_minutes=MUSIC_MINUTES.get(preset))
    run = api.load(run_dir)
    metrics = run.evaluate(overrides=["eval.pieces=4", "eval.bars=4", "eval.harmonize=2"])
    try:
        fluidsynth_path(), find_soundfont()
        render = True
    except DataError:  # no synthesizer: MIDI and piano rolls only
        render = False
    with out.writing():  # MIDI, piano roll and sound of each piece, with their manifests
        free = run.generate(bars=4, key="G major", seed=0, render=render).save(out / "music" / "chorale.mid",
                                                                               overwrite=True)
        harmonised = run.generate(melody=DEMO_MELODY, seed=0, render=render).save(out / "music" / "ode.mid",
                                                                                 overwrite=True)
    generated, random_baseline = metrics["generated"], metrics["random_baseline"]
    summary = {"steps": result.step, "val_nll_per_note": metrics["val_nll_per_note"],
               "random_nll_per_note": metrics["random_nll_per_note"],
               "in_key_share": generated["in_key_share"], "in_key_share_random": random_baseline["in_key_share"],
               "pitch_class_distance": generated["pch_distance"],
               "pitch_class_distance_random": random_baseline["pch_distance"]}
    if "harmonized" in metrics:
        summary["parallels_per_100_chords"] = metrics["harmonized"]["parallels_per_100_chords"]
    pictures = [path for path in free + harmonised if path.suffix == ".png"]
    sounds = [path for path in free + harmonised if path.suffix == ".wav"]
    return Section(
        title="Music: four-part chorales learnt from Bach",
        text=(f"A Transformer ({run.model.num_parameters():,} parameters) trained for {result.elapsed_s / 60:.1f} "
              f"minutes on {MUSIC_DATA}: the Bach chorales that ship with music21, four voices on a 16th-note grid, "
              "transposed to every key. It writes a chorale of four bars in G major, and harmonises 'Ode to Joy' "
              "(soprano given; alto, tenor and bass written by the model). Each score is a MIDI file beside its "
              "piano roll and, with FluidSynth installed, its sound played by a General MIDI SoundFont. Beside each "
              "measure stands a random baseline with the same rhythm and uniformly random pitches in each voice's "
              "range."),
        metrics=summary,
        images=[(path, "piano roll: " + ("a new chorale" if path in free else "Ode to Joy harmonised"))
                for path in pictures],
        audio=[(path, "a new chorale" if path in free else "Ode to Joy harmonised") for path in sounds],
    )


def run_demo(out: Path, preset: str = "default", overwrite: bool = False) -> Path:
    folder = DemoFolder(out)
    folder.claim(overwrite)
    sections = [_text_section(folder, preset), _g2p_section(folder, preset), _image_section(folder, preset),
                _audio_section(folder, preset), _speech_section(folder, preset), _music_section(folder, preset)]
    folder.record("report.html")
    return write_report(out, "muselab demo", sections,
                        footer=f"Runs are in {out}; inspect one with `muselab info {out / 'text-lm'}`.")
