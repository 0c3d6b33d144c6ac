"""The `audio-tts` recipe: text to speech with a FastSpeech 2-style acoustic model (`audio/tts/model.py`)
trained on builtin:speech, spoken through an `audio-vocoder` run or Griffin-Lim.

Data: builtin:speech's utterances (flite's four voices), each turned into the front end's phonemes with
durations, pitch and energy (`audio/tts/features.py`, cached); the held-out sentences validate.
Generation: the text is split into sentences by the front end, all sentences are synthesised as batches,
and their audio is joined; word timestamps come from the front end's word spans and the predicted
durations. Evaluation speaks held-out sentences and compares them with flite's own recordings: mel-cepstral
distortion (DTW), f0 RMSE in cents, the word error rate of an offline recogniser (pocketsphinx) on both,
and the real-time factor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from muselab.audio.tts.align import ALIGN_VERSION, learn_durations
from muselab.audio.tts.features import (
    UNALIGNED_VERSION,
    UtteranceFeatures,
    align_durations,
    cache_folder,
    extract,
    extract_unaligned,
    pad_stack,
    read_cached,
    symbols_of,
    voiced_symbol,
    with_durations,
    write_cached,
)
from muselab.audio.tts.frontend import G2P, Frontend
from muselab.audio.tts.inventory import PAUSES, PhonemeInventory
from muselab.audio.tts.model import AcousticConfig, AcousticModel, Stats
from muselab.audio.vocoder import MEL, Vocoder, mel_spectrogram
from muselab.audio.vocoder_recipe import griffin_lim_from_mel
from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ConfigError, ControlError, DataError
from muselab.core.io import sha256_json
from muselab.core.registry import (
    Capabilities,
    EvalAudio,
    Evaluation,
    GenerationContext,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import AudioResult
from muselab.core.rundir import RunDir
from muselab.core.sequences import edit_distance
from muselab.core.sizing import PresetRows
from muselab.data.speech import SpeechDataset, Utterance

logger = logging.getLogger(__name__)

SAMPLE_RATE = MEL.sr
SECONDS_PER_FRAME = MEL.hop / MEL.sr
MIN_FRAMES = 16  # a sentence's mel is padded with silence to this: Griffin-Lim's STFT needs some length
SILENT_LOG_MEL = -11.5129  # log(1e-5), the floor of log_mel
# evaluation writes what the recogniser heard in each sentence here, for muselab's speech, the vocoder on the
# reference's mel and the reference recording (flite's, or the data's own)
TRANSCRIPTS_FILE = "eval_transcripts.json"
TRANSCRIPT_NAMES = {"ours": "muselab", "resynth": "vocoder_on_reference_mel", "flite": "reference"}


# -- config ------------------------------------------------------------------------------------------
class TTSDataConfig(Section):
    utterances: int | None = Field(None, ge=1, description="utterances of builtin:speech to train on (the first "
                                                           "N of its fixed order; None = all of them)")
    alignment: Literal["auto", "flite", "mas"] = Field(
        "auto", description="phoneme durations: flite's phone times (builtin:speech), mas (learned before "
                            "training by monotonic alignment search: any recordings), auto (flite's when every "
                            "utterance has them, else mas)")
    alignment_rounds: int = Field(8, ge=1, le=100, description="rounds of hard EM that learn the durations "
                                                               "(data.alignment=mas)")


class TTSSynthesisConfig(Section):
    griffin_lim_iters: int = Field(32, ge=1, description="Griffin-Lim iterations when no --vocoder is given")
    batch_sentences: int = Field(16, ge=1, description="sentences synthesised together in one batch")


class TTSEvalConfig(Section):
    sentences: int = Field(20, ge=1, description="held-out sentences spoken and scored")
    sentences_file: str | None = Field(None, description="score these sentences (a text file, one per line) instead "
                                                         "of the held-out ones, flite recording the references: a "
                                                         "validation set for choosing settings (flite's voices only)")
    samples: int = Field(3, ge=0, description="of them written to RUN/samples as WAVs")
    recognizer: bool = Field(True, description="score intelligibility with pocketsphinx (word error rate)")
    vocoder: str | None = Field(None, description="an audio-vocoder run that speaks the mels (default Griffin-Lim); "
                                                  "it is also scored on flite's own mels, so each part's share shows")


class TTSRecipeConfig(Section):
    data: TTSDataConfig = TTSDataConfig()
    model: AcousticConfig = AcousticConfig()
    train: TrainConfig = TrainConfig(max_steps=50_000, max_minutes=30.0, batch_size=16, lr=1e-3, warmup_steps=300,
                                     min_lr_ratio=0.05, weight_decay=0.01, grad_clip=1.0, eval_every=500,
                                     eval_batches=4, checkpoint_every=500, log_every=20)
    synthesis: TTSSynthesisConfig = TTSSynthesisConfig()
    eval: TTSEvalConfig = TTSEvalConfig()


class TTSControls(BaseModel):
    """What an audio-tts voice can be asked to say, and how."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="The text to speak (any length: it is split into sentences).",
                             json_schema_extra={"file_option": True})
    speaker: str | None = Field(None, description="Voice: a speaker name the model was trained on (e.g. slt) or "
                                                  "its index; default the first.")
    speed: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False,
                         description="Speaking rate: 2 speaks twice as fast (durations divided by it).")
    pitch_shift: float = Field(0.0, ge=-24, le=24, allow_inf_nan=False,
                               description="Semitones to raise (or lower) the voice by, its formants kept where "
                                           "they are; 12 = an octave up.")
    pitch_scale: float = Field(1.0, ge=0.0, le=4.0, allow_inf_nan=False,
                               description="Expressiveness: the pitch contour's spread around its mean (0 = "
                                           "monotone, 2 = twice as lively).")
    energy: float = Field(0.0, ge=-24, le=24, allow_inf_nan=False, description="Loudness change in dB.")
    pause: float = Field(1.0, ge=0.0, le=5.0, allow_inf_nan=False,
                         description="Length of the pauses at punctuation, as a multiple of the predicted one.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of Griffin-Lim's initial phase.")
    vocoder: str | None = Field(None, description="An audio-vocoder run directory to turn the mel into sound "
                                                  "(default: the vocoder muselab ships, else Griffin-Lim).")
    griffin_lim: bool = Field(False, description="Turn the mel into sound with Griffin-Lim (lower quality) "
                                                 "instead of a vocoder.")
    g2p: str | None = Field(None, description="A text-seq2seq run trained on builtin:cmudict that pronounces words "
                                              "the dictionary lacks (default: they are spelled letter by letter "
                                              "and reported).")


# -- data --------------------------------------------------------------------------------------------
def _stats(items: list[UtteranceFeatures]) -> Stats:
    pitch = np.concatenate([f.pitch[f.pitch > 0] for f in items])
    energy = np.concatenate([f.energy[f.durations > 0] for f in items])
    if len(pitch) < 2:
        raise DataError("the speech data holds no voiced sound; check the recordings")
    log_d = np.concatenate([np.log1p(f.durations) for f in items])
    return Stats(float(pitch.mean()), float(max(pitch.std(), 0.5)), float(energy.mean()), float(max(energy.std(), 0.1)),
                 float(log_d.mean()))


class UtteranceBatches:
    """Whole utterances, padded per batch: random ones for training, all in order for validation."""

    def __init__(self, items: list[UtteranceFeatures], speakers: list[str], stats: Stats) -> None:
        self.items = items
        self.speaker_ids = [speakers.index(f.speaker) for f in items]
        self.by_length = sorted(range(len(items)), key=lambda k: items[k].mel.shape[1])
        self.stats = stats

    def __len__(self) -> int:
        return len(self.items)

    def _collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        chosen = [self.items[i] for i in indices]
        s = self.stats
        voiced = [f.pitch > 0 for f in chosen]
        pitch = [np.where(v, (f.pitch - s.pitch_mean) / s.pitch_std, 0.0) for f, v in zip(chosen, voiced, strict=True)]
        energy = [np.where(f.durations > 0, (f.energy - s.energy_mean) / s.energy_std, 0.0) for f in chosen]
        return {"ids": pad_stack([f.ids for f in chosen], torch.long),
                "durations": pad_stack([f.durations for f in chosen], torch.long),
                "pitch": pad_stack(pitch, torch.float32), "voiced": pad_stack(voiced, torch.bool),
                "energy": pad_stack(energy, torch.float32), "mel": pad_stack([f.mel for f in chosen], torch.float32),
                "mel_lengths": torch.tensor([f.mel.shape[1] for f in chosen]),
                "speaker": torch.tensor([self.speaker_ids[i] for i in indices])}

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Utterances of about one length (a random run of the length-sorted list, so little of the batch is
        padding: a fifth less compute per step on builtin:speech than a uniform draw)."""
        if batch_size >= len(self.items):
            return self._collate(torch.randint(0, len(self.items), (batch_size,), generator=generator).tolist())
        start = int(torch.randint(0, len(self.items) - batch_size + 1, (1,), generator=generator))
        return self._collate(self.by_length[start:start + batch_size])

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for count, first in enumerate(range(0, len(self.items), batch_size)):
            if limit and count >= limit:
                return
            yield self._collate(list(range(first, min(first + batch_size, len(self.items)))))


def alignment_of(data: SpeechDataset, wanted: str) -> str:
    """"flite" or "mas": how the durations of these data are found (data.alignment, "auto" resolved)."""
    timed = all(u.phones is not None for u in data.utterances)
    if wanted == "flite" and not timed:
        raise DataError(f"data.alignment=flite needs flite's phone times, and '{data.source}' has none; use "
                        "data.alignment=mas (learned alignment) or auto")
    return "flite" if wanted == "flite" or (wanted == "auto" and timed) else "mas"


def _learned(data: SpeechDataset, train_u: list[Utterance], test_u: list[Utterance], frontend: Frontend,
             inventory: PhonemeInventory, rounds: int) -> tuple[list[UtteranceFeatures], list[UtteranceFeatures]]:
    """Train and held-out targets with durations learned by monotonic alignment search (cached)."""
    items = [extract_unaligned(u, data, frontend, inventory) for u in train_u + test_u]
    held = [False] * len(train_u) + [True] * len(test_u)
    short = [u.id for u, f in zip(train_u + test_u, items, strict=True) if f.mel.shape[1] < len(f.ids)]
    if short:  # every phoneme needs a frame of its own
        logger.warning(f"left out {len(short)} recordings shorter than their phonemes ({', '.join(short[:3])}"
                       f"{', ...' if len(short) > 3 else ''})")
    keep = [k for k, f in enumerate(items) if f.mel.shape[1] >= len(f.ids)]
    if not keep:
        return [], []
    items, held = [items[k] for k in keep], [held[k] for k in keep]
    speakers = sorted({f.speaker for f in items})
    key = sha256_json({"data": data.fingerprint, "ids": [f.ids.tolist() for f in items], "rounds": rounds,
                       "version": UNALIGNED_VERSION, "align": ALIGN_VERSION})
    path = cache_folder(f"durations-v{ALIGN_VERSION}") / f"{key[:32]}.npz"
    saved = read_cached(path, ("durations", "lengths"))
    durations = np.split(saved["durations"], np.cumsum(saved["lengths"])[:-1]) if saved else None
    if durations is None or [len(d) for d in durations] != [len(f.ids) for f in items]:
        started = time.monotonic()
        durations = learn_durations([f.ids for f in items], [speakers.index(f.speaker) for f in items],
                                    [f.mel for f in items], len(inventory), rounds=rounds)
        logger.info(f"learned the phoneme durations of {len(items)} recordings (monotonic alignment search, "
                    f"{rounds} rounds) in {time.monotonic() - started:.0f} s")
        write_cached(path, {"durations": np.concatenate(durations), "lengths": np.array([len(d) for d in durations])})
    done = [with_durations(f, d, inventory) for f, d in zip(items, durations, strict=True)]
    return ([f for f, h in zip(done, held, strict=True) if not h], [f for f, h in zip(done, held, strict=True) if h])


def load_speech_features(spec: str, cfg: TTSRecipeConfig, inventory: PhonemeInventory, alignment: str | None = None
                         ) -> tuple[list[UtteranceFeatures], list[UtteranceFeatures], dict[str, Any]]:
    """(train, held out, info) targets; `alignment` (a trained run's) wins over data.alignment."""
    from muselab.data.speech import load_speech

    builtin = spec.startswith("builtin:")
    data = load_speech(spec, utterances=cfg.data.utterances if builtin else None)
    for note in data.notes:
        logger.info(note)
    alignment = alignment_of(data, alignment or cfg.data.alignment)
    frontend = Frontend(stress=inventory.stress)
    started = time.monotonic()
    train_u, test_u = data.split()
    if alignment == "flite":
        train = [extract(u, data, frontend, inventory) for u in train_u]
        test = [extract(u, data, frontend, inventory) for u in test_u]
    else:
        train, test = _learned(data, train_u, test_u, frontend, inventory, cfg.data.alignment_rounds)
    if time.monotonic() - started > 5:
        logger.info(f"made the training targets of {len(data)} utterances in {time.monotonic() - started:.0f} s "
                    "(cached for next time)")
    if not train:
        raise DataError(f"{spec} leaves no utterance for training (held out: {len(test)}); give more recordings"
                        + (" or ask for more utterances" if builtin else ""))
    durations = ("flite's phone times aligned to the front end's phonemes" if alignment == "flite" else
                 "learned: monotonic alignment search, (speaker, phoneme) Gaussians fitted by hard EM")
    info = {**data.info, "spec": spec, "alignment": alignment, "durations": durations,
            **({"alignment_rounds": cfg.data.alignment_rounds} if alignment == "mas" else {}),
            "pitch": "YIN median per voiced phoneme (semitones above 55 Hz)"}
    return train, test, info


# -- vocoders ----------------------------------------------------------------------------------------
def choose_vocoder(controls: TTSControls) -> tuple[Vocoder | None, str]:
    """The network that turns mels into sound and its name for the manifest: the run named by
    --vocoder, else the default (shipped) vocoder, else Griffin-Lim; --griffin-lim forces Griffin-Lim."""
    from muselab.audio.default_vocoder import default_vocoder_name, load_default_vocoder, load_vocoder

    if controls.griffin_lim:
        if controls.vocoder:
            raise ControlError("give --vocoder RUN or --griffin-lim, not both")
        return None, "griffin_lim"
    if controls.vocoder:
        return load_vocoder(controls.vocoder), controls.vocoder
    return load_default_vocoder(), default_vocoder_name()


def vocode(mel: torch.Tensor, vocoder: Vocoder | None, n_iter: int, seed: int) -> np.ndarray:
    """A log-mel [80, T] -> float32 samples (T * hop) at 22,050 Hz."""
    mel = mel.detach().float().cpu()
    with torch.no_grad():
        audio = vocoder.vocode(mel) if vocoder is not None else griffin_lim_from_mel(mel, n_iter, seed)
    return audio.numpy().astype(np.float32)


# -- the recipe ----------------------------------------------------------------------------------------
# The default preset's sizing rule (README: "Defaults that fit the data"), rows by training utterances:
# builtin:speech (2,680) and fewer take the preset as tuned (on 300 utterances in 4 minutes the preset's
# validation loss, 0.775, beat batch 8 with dropout 0.1, 0.795; its 192 width 0.750 against 128's 0.756);
# many more, with an hour, a wider model.
TTS_ROWS = PresetRows("train_utterances", (0, 10_000),
                      widen=("model.dim", "model.ffn_hidden", "model.predictor_hidden"))


class TTSRecipe(Recipe):
    pipeline_tag = "text-to-speech"
    name = "audio-tts"
    summary = "text to speech: FastSpeech 2-style acoustic model on builtin:speech, vocoder or Griffin-Lim"
    config_class = TTSRecipeConfig
    controls_class = TTSControls
    default_data = "builtin:speech"
    capabilities = Capabilities(main_control="text", writes_files=True, inputs={"text": "transform"})
    data_formats = ("an LJSpeech-style folder (metadata.csv with id|text|normalized lines, wavs/ID.wav), one speaker; "
                    "its phoneme durations are learned before training (monotonic alignment search)")
    builtin_data = {"builtin:speech": "715 sentences spoken by flite's four voices (slt, rms, awb, kal16), with "
                                      "exact phone durations; 45 sentences held out"}
    presets = {
        "tiny": {
            "data": {"utterances": 40},
            "model": {"dim": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ffn_hidden": 64,
                      "predictor_hidden": 32, "dropout": 0.0},
            "train": {"max_steps": 30, "max_minutes": None, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5,
                      "eval_every": 15, "eval_batches": 1, "checkpoint_every": 15, "log_every": 5},
            "synthesis": {"griffin_lim_iters": 4},
            "eval": {"sentences": 2, "samples": 1},
        },
        "default": {},
        "base": {
            "model": {"dim": 256, "encoder_layers": 4, "decoder_layers": 6, "ffn_hidden": 1024,
                      "predictor_hidden": 256, "postnet": True, "dropout": 0.1},
            "train": {"max_steps": 100_000, "max_minutes": None, "batch_size": 32, "lr": 1e-3, "warmup_steps": 4000,
                      "eval_every": 2000, "checkpoint_every": 2000},
        },
    }

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        return TTS_ROWS.size(self.config_class(), stats, budget_minutes)

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: TTSRecipeConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        inventory = assets["inventory"] if assets else PhonemeInventory()
        train, test, info = load_speech_features(data, cfg, inventory, assets.get("alignment") if assets else None)
        speakers = assets["speakers"] if assets else sorted({f.speaker for f in train})
        unknown = sorted({f.speaker for f in train + test} - set(speakers))
        if unknown:
            raise ConfigError(f"the data has speakers this model does not know ({', '.join(unknown)}); start a new run")
        stats = Stats(**assets["stats"]) if assets else _stats(train)
        made = {"inventory": inventory, "speakers": speakers, "stats": asdict(stats), "alignment": info["alignment"]}
        val = UtteranceBatches(test, speakers, stats) if test else None
        return PreparedData(UtteranceBatches(train, speakers, stats), val,
                            {**info, "train_utterances": len(train), "val_utterances": len(test)}, made)

    def build_model(self, cfg: TTSRecipeConfig, assets: dict[str, Any]) -> AcousticModel:
        inventory: PhonemeInventory = assets["inventory"]
        pauses = [i for i, s in enumerate(inventory.symbols) if s in PAUSES]
        voiced = [i for i, s in enumerate(inventory.symbols) if voiced_symbol(s)]
        return AcousticModel(cfg.model, len(inventory), len(assets["speakers"]), pauses, voiced,
                             Stats(**assets["stats"]))

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        assets["inventory"].save(run / "phonemes.json")
        run.write_json("speakers.json", {"speakers": assets["speakers"], "stats": assets["stats"],
                                         "alignment": assets.get("alignment", "flite")})

    def load_assets(self, cfg: TTSRecipeConfig, run: RunDir) -> dict[str, Any]:
        saved = run.read_json("speakers.json")
        return {"inventory": PhonemeInventory.load(run / "phonemes.json"), "speakers": saved["speakers"],
                "stats": saved["stats"], "alignment": saved.get("alignment", "flite")}

    def check_transfer(self, cfg: TTSRecipeConfig, source_cfg: TTSRecipeConfig, prepared: PreparedData,
                       source: Path) -> None:
        """The phoneme inventory and speakers travel with the assets; prepare_data checks the speakers."""

    # -- generation -------------------------------------------------------------------------------
    def speaker_index(self, assets: dict[str, Any], speaker: str | None) -> int:
        speakers: list[str] = assets["speakers"]
        if speaker is None:
            return 0
        if speaker in speakers:
            return speakers.index(speaker)
        if speaker.strip().isdigit() and int(speaker) < len(speakers):
            return int(speaker)
        raise ControlError(f"unknown speaker {speaker!r}; this model speaks with: "
                           + ", ".join(f"{s} ({i})" for i, s in enumerate(speakers)))

    def g2p(self, path: str, load_run: Callable[[str], Any] | None) -> G2P:
        """The pronouncer of unknown words that a text-seq2seq run at `path` makes."""
        if load_run is None:
            raise ControlError("--g2p needs the generation pipeline (muselab generate or muselab.load(...).generate)")
        if not (Path(path) / "config.json").is_file():
            raise ControlError(f"--g2p '{path}' is not a run directory; pass a text-seq2seq run trained on "
                               "builtin:cmudict")
        run = load_run(path)
        if run.recipe.name != "text-seq2seq":
            raise ControlError(f"--g2p '{path}' is a {run.recipe.name} run; pass a text-seq2seq run trained on "
                               "builtin:cmudict")

        def pronounce(words: list[str]) -> list[list[str]]:
            result = run.generate(input=words)
            out: list[list[str]] = [[] for _ in words]  # a refused word stays empty: it is spelled
            for position, phones in zip(result.input_indices, result.items, strict=True):
                out[position] = phones.split() if isinstance(phones, str) else list(phones)
            return out

        return pronounce

    def speak(self, model: AcousticModel, cfg: TTSRecipeConfig, assets: dict[str, Any], controls: TTSControls,
              g2p: G2P | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The whole text as one clip at 22,050 Hz, and its timing (sentences, words, phonemes)."""
        if controls.text is None or not controls.text.strip():
            raise ControlError("the text is empty; give some words to speak, e.g. --text \"Hello there.\"")
        speaker = self.speaker_index(assets, controls.speaker)
        inventory: PhonemeInventory = assets["inventory"]
        sentences = Frontend(g2p=g2p, stress=inventory.stress).sentences(controls.text)
        vocoder, _ = choose_vocoder(controls)
        device = next(model.parameters()).device
        seed = controls.seed or 0
        clips: list[np.ndarray] = []
        timing: dict[str, Any] = {"words": [], "sentences": [], "phonemes": [], "spelled_out": [], "g2p": []}
        offset = 0
        step = cfg.synthesis.batch_sentences
        for first in range(0, len(sentences), step):
            group = sentences[first:first + step]
            ids = pad_stack([np.array(inventory.encode(symbols_of(s)), dtype=np.int64) for s in group],
                            torch.long).to(device)
            out = model.synthesise(ids, torch.full((len(group),), speaker, device=device), speed=controls.speed,
                                   pause_scale=controls.pause, pitch_scale=controls.pitch_scale,
                                   energy_db=controls.energy)
            for row, sentence in enumerate(group):
                mel = out["mel"][row, :, : int(out["mel_lengths"][row])]
                if mel.shape[1] < MIN_FRAMES:
                    mel = torch.nn.functional.pad(mel, (0, MIN_FRAMES - mel.shape[1]), value=SILENT_LOG_MEL)
                audio = vocode(mel, vocoder, cfg.synthesis.griffin_lim_iters, seed)
                durations = out["durations"][row].cpu().tolist()
                ends = np.cumsum(durations).tolist()
                starts = [e - d for e, d in zip(ends, durations, strict=True)]
                base = offset / SAMPLE_RATE
                for word in sentence.words:  # +1: <bos> comes first
                    timing["words"].append({"word": word.word, "source": word.source,
                                            "start": round(base + starts[word.start + 1] * SECONDS_PER_FRAME, 3),
                                            "end": round(base + ends[word.end] * SECONDS_PER_FRAME, 3)})
                timing["phonemes"] += [[symbol, round(base + a * SECONDS_PER_FRAME, 3), round(base + b * SECONDS_PER_FRAME, 3)]
                                       for symbol, a, b in zip(symbols_of(sentence), starts, ends, strict=False)]
                timing["sentences"].append({"text": sentence.text, "start": round(base, 3),
                                            "end": round(base + len(audio) / SAMPLE_RATE, 3)})
                timing["spelled_out"] += [w for w in sentence.unknown if w not in timing["spelled_out"]]
                timing["g2p"] += [w.word for w in sentence.words if w.how == "g2p" and w.word not in timing["g2p"]]
                clips.append(audio)
                offset += len(audio)
        audio = np.concatenate(clips)
        if controls.pitch_shift:
            # On the sound, not the model's pitch input: the decoder follows its pitch input only within the
            # range its speakers cover (12 semitones asked gave 1.10-1.22x the f0 on the benchmark's model)
            from muselab.audio.dsp import shift_pitch

            audio = shift_pitch(audio, SAMPLE_RATE, controls.pitch_shift)
        peak = float(np.abs(audio).max()) if len(audio) else 0.0
        if peak > 0.99:  # 16-bit WAV clips at 1: scale down instead
            audio = audio * (0.99 / peak)
        return audio.astype(np.float32), timing

    def generate(self, model: AcousticModel, cfg: TTSRecipeConfig, assets: dict[str, Any], controls: TTSControls,
                 context: GenerationContext) -> AudioResult:
        speaker = self.speaker_index(assets, controls.speaker)  # an unknown speaker fails before any work
        g2p = self.g2p(controls.g2p, context.load_run) if controls.g2p else None
        audio, timing = self.speak(model, cfg, assets, controls, g2p)
        note: dict[str, Any] = {"vocoder": choose_vocoder(controls)[1],
                                "speaker": assets["speakers"][speaker],
                                "sentences": len(timing["sentences"])}
        if timing["g2p"]:
            note["g2p"] = {"run": controls.g2p, "words": timing["g2p"]}
        if timing["spelled_out"]:
            note["spelled_out"] = timing["spelled_out"]
            logger.warning(f"spelled out letter by letter (not in the dictionary"
                           f"{'; the G2P run gave no valid ARPAbet' if g2p else '; --g2p RUN pronounces such words'}"
                           f"): {', '.join(timing['spelled_out'])}")
        return AudioResult(clips=[audio], sample_rate=SAMPLE_RATE, timing=[timing], notes=[note])

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, model: AcousticModel, cfg: TTSRecipeConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> Evaluation:
        """Held-out sentences spoken by the model and compared with recordings of them (flite's, for a model
        of flite's voices; else the held-out recordings of the data), and the same comparison for the vocoder
        alone (the recording's own mel, vocoded): MCD (DTW), f0 RMSE in cents, and the word error rate of
        pocketsphinx on both and on the recordings; the real-time factor."""
        from muselab.audio.dsp import resample
        from muselab.data.speech import SPEECH_SAMPLE_RATE

        references, source = self._references(assets, cfg, data)
        recognizer = Recognizer() if cfg.eval.recognizer else None
        vocoder, vocoder_name = choose_vocoder(TTSControls(vocoder=cfg.eval.vocoder))
        scores: dict[str, dict[str, list[float]]] = {part: {"mcd": [], "cents": []} for part in ("ours", "resynth")}
        # word errors and reference words, per speaker: the recogniser's floor differs from voice to voice
        errors: dict[str, dict[str, list[int]]] = {"ours": {}, "resynth": {}, "flite": {}}
        examples: list[dict[str, Any]] = []
        transcripts: list[dict[str, Any]] = []  # what the recogniser heard, sentence by sentence
        spoken_seconds, synth_seconds = 0.0, 0.0
        for sentence, voice, ref, phones in references:
            started = time.perf_counter()
            ours, timing = self.speak(model, cfg, assets, TTSControls(text=sentence, speaker=voice, seed=0,
                                                                      vocoder=cfg.eval.vocoder))
            synth_seconds += time.perf_counter() - started
            spoken_seconds += len(ours) / SAMPLE_RATE
            true_mel = mel_spectrogram(resample(ref, SPEECH_SAMPLE_RATE, SAMPLE_RATE))
            resynth = vocode(true_mel, vocoder, cfg.synthesis.griffin_lim_iters, 0)
            clips = {"ours": resample(ours, SAMPLE_RATE, SPEECH_SAMPLE_RATE).numpy(),
                     "resynth": resample(resynth, SAMPLE_RATE, SPEECH_SAMPLE_RATE).numpy(), "flite": ref}
            for part in ("ours", "resynth"):
                self._score(ref, clips[part], scores[part])
            if recognizer is not None:
                truth = spoken_words(sentence)
                heard: dict[str, Any] = {"sentence": sentence, "voice": voice, "words": " ".join(truth)}
                for name, clip in clips.items():
                    hypothesis = recognizer.transcribe(clip, SPEECH_SAMPLE_RATE)
                    counts = errors[name].setdefault(voice, [0, 0])
                    wrong = edit_distance(truth, hypothesis.split())
                    counts[0] += wrong
                    counts[1] += len(truth)
                    heard[TRANSCRIPT_NAMES[name]] = {"heard": hypothesis, "errors": wrong}
                transcripts.append(heard)
            if len(examples) < max(1, cfg.eval.samples):
                examples.append({"sentence": sentence, "voice": voice, "flite": ref, "ours": ours, "resynth": resynth,
                                 "phonemes": timing["phonemes"], "flite_phones": phones})
        metrics: dict[str, Any] = {"mcd_db": _mean(scores["ours"]["mcd"]),
                                   "f0_rmse_cents": _mean(scores["ours"]["cents"]),
                                   "resynth_mcd_db": _mean(scores["resynth"]["mcd"]),
                                   "resynth_f0_rmse_cents": _mean(scores["resynth"]["cents"]),
                                   "realtime_factor": spoken_seconds / max(synth_seconds, 1e-9),
                                   "eval_sentences": len(references), "references": source,
                                   "vocoder": vocoder_name,
                                   "alignment": assets.get("alignment", "flite"),
                                   "parameters": model.num_parameters(), "threads": torch.get_num_threads()}
        if recognizer is not None:
            reference_key = "wer_flite_reference" if source.startswith("flite") else "wer_reference"
            keys = {"ours": "wer", "resynth": "resynth_wer", "flite": reference_key}
            metrics.update({key: _error_rate(errors[name].values()) for name, key in keys.items()})
            metrics["wer_by_speaker"] = {voice: {key: _error_rate([errors[name][voice]]) for name, key in keys.items()}
                                         for voice in errors["ours"]}
            metrics["recognizer"] = "pocketsphinx (default US English model)"
            run.write_json(TRANSCRIPTS_FILE, {"references": source, "sentences": transcripts})
        else:  # an earlier evaluation's transcripts would not match this eval.json
            (run.path / TRANSCRIPTS_FILE).unlink(missing_ok=True)
        self._pictures(examples[0], assets, cfg, run, data, vocoder is not None)
        return Evaluation(metrics, audio=self._samples(examples, cfg.eval.samples, run))

    def _references(self, assets: dict[str, Any], cfg: TTSRecipeConfig, data: str | None
                    ) -> tuple[list[tuple[str, str, np.ndarray, Any]], str]:
        """(sentence, speaker, 16 kHz recording, flite's phones or None) to compare with, and what they are:
        flite's recordings of the held-out sentences for a model of flite's voices, else the data's
        held-out recordings (its first recordings when none is held out)."""
        from muselab.audio.io import load_audio
        from muselab.data.speech import (
            SPEECH_SAMPLE_RATE,
            SPEECH_VOICES,
            flite_utterance,
            held_out_sentences,
            load_speech,
            read_sentences,
        )

        speakers = [s for s in assets["speakers"] if s in SPEECH_VOICES]
        if cfg.eval.sentences_file and not speakers:
            raise ConfigError("eval.sentences_file needs a model of flite's voices (flite records the references); "
                              "leave it out to score the data's held-out recordings")
        if speakers:
            sentences, what = held_out_sentences(), "the held-out sentences"
            if cfg.eval.sentences_file:
                sentences, what = read_sentences(Path(cfg.eval.sentences_file)), f"the sentences of {cfg.eval.sentences_file}"
            out = []
            for i, sentence in enumerate(sentences[: cfg.eval.sentences]):
                reference = flite_utterance(sentence, speakers[i % len(speakers)])
                audio, _, _ = load_audio(reference.path, sr=SPEECH_SAMPLE_RATE, min_seconds=0.0)
                out.append((sentence, reference.speaker, audio, reference.phones))
            return out, f"flite's recordings of {what}"
        if data is None or data.startswith("builtin:"):
            raise DataError("this model knows none of flite's voices: evaluate it on its own recordings with "
                            "--data FOLDER (the LJSpeech-layout folder it was trained on)")
        speech = load_speech(data, sample_rate=SPEECH_SAMPLE_RATE)
        train_u, test_u = speech.split()
        chosen = [u for u in test_u or train_u if u.speaker in assets["speakers"]][: cfg.eval.sentences]
        if not chosen:
            raise DataError(f"'{data}' holds no recording by this model's speakers ({', '.join(assets['speakers'])})")
        return ([(u.normalized, u.speaker, speech.audio(u), None) for u in chosen],
                "the data's held-out recordings" if test_u else "the data's first recordings (none is held out)")

    @staticmethod
    def _score(reference: np.ndarray, clip: np.ndarray, into: dict[str, list[float]]) -> None:
        from muselab.audio.dsp import mel_cepstral_distortion
        from muselab.data.speech import SPEECH_SAMPLE_RATE

        into["mcd"].append(mel_cepstral_distortion(reference, clip, SPEECH_SAMPLE_RATE, use_dtw=True))
        cents = f0_rmse_cents(reference, clip, SPEECH_SAMPLE_RATE)
        if cents is not None:
            into["cents"].append(cents)

    def _pictures(self, example: dict[str, Any], assets: dict[str, Any], cfg: TTSRecipeConfig, run: RunDir,
                  data: str | None, neural: bool) -> None:
        """RUN/spectrograms.png (flite, the vocoder on flite's mel, muselab) and RUN/alignment.png (the
        predicted durations over muselab's mel; flite's phone times, and the learned ones when the model
        learned its durations, over flite's mel)."""
        from muselab.audio.dsp import resample
        from muselab.audio.plots import plot_alignment, plot_spectrograms
        from muselab.data.speech import SPEECH_SAMPLE_RATE

        true_mel = mel_spectrogram(resample(example["flite"], SPEECH_SAMPLE_RATE, SAMPLE_RATE)).numpy()
        ours_mel = mel_spectrogram(torch.from_numpy(example["ours"])).numpy()
        vocoder = "the vocoder" if neural else "Griffin-Lim"
        name = "flite" if example["flite_phones"] else "the recording"
        plot_spectrograms([(f"{name} (reference)", true_mel),
                           (f"{vocoder} on its mel", mel_spectrogram(torch.from_numpy(example["resynth"])).numpy()),
                           ("muselab", ours_mel)], run / "spectrograms.png", SAMPLE_RATE, MEL.hop,
                          title=f"held-out sentence 1 ({example['voice']})")
        inventory: PhonemeInventory = assets["inventory"]
        symbols = symbols_of(Frontend(stress=inventory.stress).phonemize(example["sentence"]))
        frames = [round(end / SECONDS_PER_FRAME) - round(start / SECONDS_PER_FRAME)
                  for _, start, end in example["phonemes"]]
        panels = [("muselab: predicted durations over its own mel", ours_mel, [p for p, _, _ in example["phonemes"]],
                   [("predicted", np.array(frames))])]
        sets = ([("flite's phone times", align_durations(symbols, example["flite_phones"], true_mel.shape[1]))]
                if example["flite_phones"] else [])
        if assets.get("alignment") == "mas" and data is not None:
            learned = self._learned_durations(data, example["sentence"], example["voice"], true_mel, inventory, cfg)
            if learned is not None:
                sets.append(("learned (monotonic alignment search)", learned))
        if sets:
            panels.append(("the recording: " + " and ".join(label for label, _ in sets), true_mel, symbols, sets))
        plot_alignment(panels, run / "alignment.png", SAMPLE_RATE, MEL.hop, title=example["sentence"])

    @staticmethod
    def _learned_durations(data: str, sentence: str, voice: str, mel: np.ndarray, inventory: PhonemeInventory,
                           cfg: TTSRecipeConfig) -> np.ndarray | None:
        """The durations monotonic alignment search learned for the recording of a sentence (from the cache
        training made; None when the training data did not hold it)."""
        train, test, _ = load_speech_features(data, cfg, inventory, "mas")
        for features in test + train:
            if features.speaker == voice and features.mel.shape == mel.shape:
                ids = inventory.encode(symbols_of(Frontend(stress=inventory.stress).phonemize(sentence)))
                if features.ids.tolist() == ids:
                    return features.durations
        return None

    def _samples(self, examples: list[dict[str, Any]], n_samples: int, run: RunDir) -> list[EvalAudio]:
        from muselab.audio.io import save_audio
        from muselab.data.speech import SPEECH_SAMPLE_RATE

        if not n_samples:
            return []
        folder = run / "samples"
        folder.mkdir(exist_ok=True)
        for i, example in enumerate(examples[:n_samples]):  # the recordings are not muselab's: no manifest
            prefix = "flite" if example["flite_phones"] else "reference"
            save_audio(folder / f"{prefix}_{i:03d}.wav", example["flite"], SPEECH_SAMPLE_RATE)
        chosen = examples[:n_samples]
        return [EvalAudio("tts.wav", [e["ours"] for e in chosen], SAMPLE_RATE,
                          {"source": "held-out sentences", "seed": 0}),
                EvalAudio("resynth.wav", [e["resynth"] for e in chosen], SAMPLE_RATE,
                          {"source": "recordings of the held-out sentences, their mel vocoded", "seed": 0})]


# -- metrics -------------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def f0_rmse_cents(reference: np.ndarray, synthesised: np.ndarray, sr: int, hop: int = 256) -> float | None:
    """RMSE in cents between the two f0 curves (pYIN) over frames both call voiced, the frames paired by
    DTW on mel-cepstra; None when no frame pair is voiced in both."""
    import librosa

    from muselab.audio.dsp import f0_pyin, mel_cepstrum

    # pYIN's frames are 2048 samples: shorter clips are padded with silence
    reference, synthesised = (np.pad(x, (0, max(0, 4096 - len(x)))) for x in (reference, synthesised))
    ref_f0, _ = f0_pyin(reference, sr, hop, 60.0, 500.0, resolution=0.25)
    syn_f0, _ = f0_pyin(synthesised, sr, hop, 60.0, 500.0, resolution=0.25)
    ref_c = mel_cepstrum(reference, sr, hop=hop)[:, 1:]
    syn_c = mel_cepstrum(synthesised, sr, hop=hop)[:, 1:]
    n_ref, n_syn = min(len(ref_f0), len(ref_c)), min(len(syn_f0), len(syn_c))
    _, path = librosa.sequence.dtw(X=ref_c[:n_ref].T, Y=syn_c[:n_syn].T, metric="euclidean")
    a, b = ref_f0[path[:, 0]], syn_f0[path[:, 1]]
    both = (a > 0) & (b > 0)
    if not both.any():
        return None
    return float(np.sqrt(np.mean((1200.0 * np.log2(b[both] / a[both])) ** 2)))


def spoken_words(sentence: str) -> list[str]:
    """The words a recogniser should hear for `sentence`: the front end's normalised text (numbers spelled
    out, abbreviations expanded), pauses left out."""
    return [w for w in Frontend().phonemize(sentence).normalized.split() if w not in PAUSES]


def _error_rate(counts: Iterable[list[int]]) -> float:
    """Word errors over reference words, summed over [errors, words] pairs."""
    pairs = list(counts)
    return sum(errors for errors, _ in pairs) / max(1, sum(words for _, words in pairs))


class Recognizer:
    """pocketsphinx's offline US English recogniser (its bundled model), for intelligibility."""

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise ConfigError("intelligibility needs pocketsphinx: pip install pocketsphinx (or set "
                              "eval.recognizer=false)") from None
        self.decoder = Decoder(samprate=16000, logfn="/dev/null")

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        from muselab.audio.dsp import resample

        pcm = resample(audio, sr, 16000).numpy() if sr != 16000 else np.asarray(audio, dtype=np.float32)
        samples = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(samples.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.lower() if hyp is not None else ""
