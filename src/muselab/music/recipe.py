"""The `music-lm` recipe: a decoder-only Transformer (`muselab.transformer`, the one text-lm uses) on
four-voice scores encoded step by step (`muselab.music.encoding`), trained on Bach's chorales or the
user's MIDI/MusicXML files, writing MIDI, piano rolls and (through a SoundFont) sound.

Training windows are transposed to a random one of the 12 keys (the key tokens move with the notes), so
the model writes in any key it is asked for. Generation samples through the shared chain (temperature,
top-k, top-p) behind a template processor that fixes the layout, the key, the bar lines and any pinned
notes: a primer's, or the melody being harmonised (the soprano is given, alto, tenor and bass sampled
under it step by step). Read top to bottom: config, data, inputs, the recipe (generation, evaluation).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ConfigError, ControlError, DataError
from muselab.core.registry import (
    Capabilities,
    Evaluation,
    GenerationContext,
    MemorizationGuard,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import MusicResult
from muselab.core.rundir import RunDir
from muselab.core.sizing import TransformerRows
from muselab.core.trainer import mean_loss
from muselab.data.notes import read_notes
from muselab.data.scores import (
    BACH_DESCRIPTION,
    BUILTIN_BACH,
    MIDI_SUFFIXES,
    PITCH_NAMES,
    VOICE_NAMES,
    XML_SUFFIXES,
    Score,
    estimate_key,
    load_scores,
    parse_key,
    read_score,
)
from muselab.data.soundfont import render_midi
from muselab.music import encoding as enc
from muselab.music.constraints import ScoreTemplateProcessor
from muselab.music.controls import VOICES_KEPT, MusicGenerationControls
from muselab.music.instrument import Instrument, load_instrument, play
from muselab.music.metrics import (
    DURATION_BINS,
    CopyIndex,
    duration_histogram,
    piece_report,
    random_like,
    reference_histograms,
    total_variation,
    voice_leading_rates,
)
from muselab.music.midi import piano_roll, score_to_midi
from muselab.sampling import LogitsProcessorList, TemperatureWarper, TopKWarper, TopPWarper, generate_tokens
from muselab.transformer import GPT, GPTConfig

logger = logging.getLogger(__name__)

ENCODING_FILE = "music_encoding.json"
ENCODING_VERSION = 1
COPY_FILE = "copy_lines.json"  # every training voice as (interval, length) moves
COPY_ATTEMPTS = 3  # redraws of a copying piece before `reject` gives up
RENDER_RATE = 22050


# ---------------------------------------------------------------------------------------------------
# Config


class MusicDataConfig(Section):
    steps_per_quarter: int = Field(4, ge=1, le=12, description="grid steps per quarter note (4 = 16th notes)")
    test_share: float = Field(0.1, gt=0, lt=0.5, description="share of the tunes held out (stable hash of the soprano's opening)")
    transpose: bool = Field(True, description="transpose each training window to a random one of the 12 keys")
    max_pieces: int = Field(0, ge=0, description="use only the first N pieces (0 = all)")
    skip_bad_files: bool = Field(False, description="leave unreadable MIDI/MusicXML files out (and count them) "
                                                    "instead of stopping")


class MusicEvalConfig(Section):
    pieces: int = Field(10, ge=1, description="pieces generated, in the keys of held-out pieces")
    bars: int = Field(8, ge=1, description="bars per generated piece")
    harmonize: int = Field(10, ge=0, description="held-out soprano lines harmonised (0 = none)")
    temperature: float = Field(0.9, ge=0, description="sampling temperature of evaluation pieces")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus of evaluation pieces")
    avoid_parallels: bool = Field(True, description="evaluation pieces avoid parallel fifths and octaves")
    seed: int = Field(0, description="seed of evaluation pieces and of the random baseline")


# The default preset's sizing rule (README: "Defaults that fit the data"), rows by training tokens: builtin:bach
# (282,572 training tokens) sits in the middle row, the preset as tuned. A few dozen pieces take a smaller model
# with more dropout (14 chorales, 13,790 tokens, 4 minutes: best validation loss 0.696 against the preset's
# 0.710); far more music than Bach, with an hour or more (or no budget), a larger model with a longer context.
MUSIC_ROWS = TransformerRows(
    sizes=[
        ("s", 2, 2, 64, 128, 16, 3e-3),
        ("m", 4, 4, 128, 128, 16, 3e-3),
        ("l", 6, 8, 256, 256, 32, 1e-3),
    ],
    data_limits=[50_000, 5_000_000],
    budget_limits=[2, 60],
    dropout=[0.2, 0.1, 0.1],
    weight_decay=0.1,
)


class MusicLMConfig(Section):
    data: MusicDataConfig = MusicDataConfig()
    # A 128-token context (about two bars of four voices) trains three times as many steps in a CPU budget as
    # 384 and scores better on every music measure (benchmarks/results/music_context128.json vs music.json).
    model: GPTConfig = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.1)
    train: TrainConfig = TrainConfig(
        max_steps=3000, batch_size=16, lr=3e-3, warmup_steps=100, min_lr_ratio=0.05, precision="auto",
        eval_every=250, eval_batches=20, checkpoint_every=250, weight_decay=0.1, beta2=0.99,
    )
    eval: MusicEvalConfig = MusicEvalConfig()


# ---------------------------------------------------------------------------------------------------
# Data


class ScoreStream:
    """Pieces' tokens end to end, as the Trainer's batch source: random windows (each transposed to a random
    key when `transpose`) to train, tiled windows in the written keys to validate."""

    def __init__(self, ids: torch.Tensor, block_size: int, transpose: bool) -> None:
        self.ids = ids
        self.block = min(block_size, len(ids) - 1)
        self.tables = torch.stack([enc.transpose_table(s) for s in range(-5, 7)]) if transpose else None

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - self.block, (batch_size,), generator=generator)
        windows = self.ids[starts[:, None] + torch.arange(self.block + 1)[None, :]]
        if self.tables is not None:
            shifts = torch.randint(0, len(self.tables), (batch_size,), generator=generator)
            windows = self.tables[shifts[:, None], windows]
        return windows[:, :-1], windows[:, 1:]

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_windows = (len(self.ids) - 1) // self.block
        starts = torch.arange(n_windows) * self.block
        if limit and limit * batch_size < n_windows:
            starts = starts[torch.linspace(0, n_windows - 1, limit * batch_size).round().long()]
        offsets = torch.arange(self.block + 1)
        for chunk in starts.split(batch_size):
            windows = self.ids[chunk[:, None] + offsets[None, :]]
            yield windows[:, :-1], windows[:, 1:]


def _stream_ids(scores: Sequence[Score], steps_per_quarter: int) -> torch.Tensor:
    return torch.tensor([t for s in scores for t in enc.encode(s, steps_per_quarter)], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------
# Inputs: a primer or a melody, as notes or a file


def _read_input(value: str, option: str, beats_per_bar: int) -> Score:
    """A primer or melody: a MIDI/MusicXML file, or notes as text (the soprano, from the first downbeat)."""
    text = value.strip()
    if text.lower().endswith(MIDI_SUFFIXES + XML_SUFFIXES):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ControlError(f"{option}: no file '{path}'; give a MIDI/MusicXML file or notes such as \"C4 E4 G4:2\"")
        try:
            return read_score(path)
        except DataError as err:
            raise ControlError(f"{option}: {err}") from None
    start, notes = 0.0, []
    for pitch, beats in read_notes(text, option):
        if pitch is not None:
            notes.append((pitch, start, beats))
        start += beats
    score = Score("input", [notes, [], [], []], float(beats_per_bar), 0.0)
    score.tonic, score.mode = estimate_key(notes)
    return score


def _shift_to(tonic: int, target: int) -> int:
    """The transposition in -6..5 semitones that takes `tonic` to `target`."""
    return (target - tonic + 6) % 12 - 6


@dataclass
class Plan:
    """What to sample: the template's pinned grid, its length, key and meter, and which voices were given."""

    fixed: list[list[int | None]]
    n_steps: int
    tonic: int
    mode: str
    bar_steps: int
    first_bar: int
    pinned: tuple[int, ...]


def make_plan(controls: MusicGenerationControls, steps_per_quarter: int) -> Plan:
    if controls.primer.strip() and controls.melody.strip():
        raise ControlError("give --primer or --melody, not both: a melody is harmonised from start to end")
    bar_steps = controls.beats_per_bar * steps_per_quarter
    wanted = parse_key(controls.key) if controls.key else None
    given = controls.melody.strip() or controls.primer.strip()
    if not given:
        tonic, mode = wanted or (0, "major")
        n_steps = controls.bars * bar_steps
        return Plan([[None] * enc.N_VOICES for _ in range(n_steps)], n_steps, tonic, mode, bar_steps, 0, ())
    option = "--melody" if controls.melody.strip() else "--primer"
    score = _read_input(given, option, controls.beats_per_bar)
    if option == "--melody":  # the top part is the melody; the rest is the model's to write
        score.voices = [score.voices[0] or next(v for v in score.voices if v), [], [], []]
    if controls.input_key:
        score.tonic, score.mode = parse_key(controls.input_key)
    tonic, mode = wanted or (score.tonic, score.mode)
    score = score.transposed(_shift_to(score.tonic, tonic))
    grid = enc.to_grid(score, steps_per_quarter)
    pinned = tuple(v for v in range(enc.N_VOICES) if score.voices[v])
    given_steps = len(grid.steps)
    n_steps = given_steps if option == "--melody" else max(controls.bars * bar_steps, given_steps)
    fixed: list[list[int | None]] = [[None] * enc.N_VOICES for _ in range(n_steps)]
    for t in range(given_steps):
        for v in pinned:
            fixed[t][v] = grid.steps[t][v]
    first_bar = round(score.first_bar * steps_per_quarter) % bar_steps
    return Plan(fixed, n_steps, tonic, mode, bar_steps, first_bar, pinned)


@dataclass
class _Sampling:
    """What `generate_tokens` reads of the controls."""

    max_new_tokens: int
    temperature: float
    seed: int | None
    stop: tuple[str, ...] = ()


def _render(midi: bytes) -> np.ndarray | None:
    """The piece's sound through the system's General MIDI SoundFont, or None (with a warning saying what to
    install) when FluidSynth or a SoundFont is missing."""
    try:
        return render_midi(midi, sr=RENDER_RATE)
    except DataError as err:
        logger.warning(f"no sound written: {err}")
        return None


# ---------------------------------------------------------------------------------------------------
# The recipe


class MusicLMRecipe(Recipe):
    name = "music-lm"
    summary = "four-voice music Transformer (chorales) on MIDI/MusicXML: compose, continue, harmonise a melody"
    config_class = MusicLMConfig
    controls_class = MusicGenerationControls
    default_data = BUILTIN_BACH
    data_formats = ("a folder (or one file) of MIDI (.mid, .midi) or MusicXML (.xml, .musicxml, .mxl) files; up to "
                    "four parts each become soprano, alto, tenor and bass")
    builtin_data = {BUILTIN_BACH: BACH_DESCRIPTION}
    capabilities = Capabilities(main_control="primer", writes_files=True)
    presets = {
        "tiny": {
            "data": {"max_pieces": 12},
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0},
            "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                      "eval_batches": 4, "checkpoint_every": 10, "log_every": 5, "precision": "fp32"},
            "eval": {"pieces": 2, "bars": 2, "harmonize": 1},
        },
        "default": {},
        "base": {
            "model": {"n_layer": 6, "n_head": 8, "n_embd": 384, "block_size": 768, "dropout": 0.2},
            "train": {"max_steps": 10000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 300,
                      "eval_every": 500, "checkpoint_every": 1000},
        },
    }

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: MusicLMConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        scores = load_scores(data, cfg.data.test_share, cfg.data.skip_bad_files, cfg.data.max_pieces)
        spq = cfg.data.steps_per_quarter
        train_ids, test_ids = _stream_ids(scores.train, spq), _stream_ids(scores.test, spq)
        if len(train_ids) < 3 or len(test_ids) < 3:
            raise DataError(f"'{data}' is too short to train on; give more pieces")
        info = {"spec": data, "source": scores.source, "fingerprint": scores.fingerprint,
                "train_pieces": len(scores.train), "test_pieces": len(scores.test), "skipped_files": len(scores.skipped),
                "train_tokens": len(train_ids), "test_tokens": len(test_ids),
                "test_notes": int(enc.is_note(test_ids).sum())}
        block = cfg.model.block_size
        return PreparedData(ScoreStream(train_ids, block, cfg.data.transpose), ScoreStream(test_ids, block, False),
                            info, {"encoding": _encoding(cfg), "train": scores.train, "test": scores.test,
                                   "test_ids": test_ids})

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        return MUSIC_ROWS.size(stats["train_tokens"], budget_minutes,
                               {"train_tokens": stats["train_tokens"], "train_pieces": stats["train_pieces"]})

    def resize_data(self, prepared: PreparedData, cfg: MusicLMConfig) -> PreparedData:
        block = cfg.model.block_size
        return PreparedData(ScoreStream(prepared.train.ids, block, cfg.data.transpose),
                            ScoreStream(prepared.val.ids, block, False), prepared.info, prepared.assets)

    def build_model(self, cfg: MusicLMConfig, assets: dict[str, Any]) -> GPT:
        if cfg.model.n_embd % cfg.model.n_head:
            raise ConfigError(f"model.n_embd ({cfg.model.n_embd}) must be divisible by model.n_head "
                              f"({cfg.model.n_head})")
        return GPT(cfg.model.model_copy(update={"vocab_size": enc.VOCAB_SIZE}))

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        run.write_json(ENCODING_FILE, assets["encoding"])
        if "train" in assets:  # the training voices, for the memorization guard of `generate`
            run.write_json(COPY_FILE, {"lines": CopyIndex(assets["train"]).lines})

    def load_assets(self, cfg: MusicLMConfig, run: RunDir) -> dict[str, Any]:
        saved = run.read_json(ENCODING_FILE)
        if saved.get("version") != ENCODING_VERSION or saved.get("vocab_size") != enc.VOCAB_SIZE:
            raise ConfigError(f"'{run.path}' was trained with music encoding {saved}; this muselab reads version "
                              f"{ENCODING_VERSION} ({enc.VOCAB_SIZE} tokens): train it again")
        return {"encoding": saved, "copies": LazyCopies(run.path / COPY_FILE)}

    def check_transfer(self, cfg: MusicLMConfig, source_cfg: MusicLMConfig, prepared: PreparedData,
                       source: Path) -> None:
        if cfg.data.steps_per_quarter != source_cfg.data.steps_per_quarter:
            raise ConfigError(f"data.steps_per_quarter ({cfg.data.steps_per_quarter}) differs from that of "
                              f"'{source}' ({source_cfg.data.steps_per_quarter}); the grid must stay the same")

    # -- generation -------------------------------------------------------------------------------
    def compose(self, model: GPT, plans: Sequence[Plan], cfg: MusicLMConfig, seed: int | None, temperature: float,
                top_p: float = 1.0, top_k: int = 0, avoid_parallels: bool = True) -> list[Score]:
        """One piece per plan, sampled in one batch (the plans must share length and meter), in the plans' keys."""
        templates = [enc.make_template(p.n_steps, p.bar_steps, p.tonic, p.mode, p.fixed, p.first_bar) for p in plans]
        processors = LogitsProcessorList([ScoreTemplateProcessor(templates, avoid_parallels)])
        if temperature > 0:
            if temperature != 1.0:
                processors.append(TemperatureWarper(temperature))
            if top_k:
                processors.append(TopKWarper(top_k))
            if top_p < 1.0:
                processors.append(TopPWarper(top_p))
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed if seed is not None else 0)
        prompt = torch.full((len(plans), 1), enc.BOS, dtype=torch.long, device=device)
        rows = generate_tokens(model.cached_step(len(plans)), prompt,
                               _Sampling(len(templates[0]) - 1, temperature, seed), generator=generator,
                               processors=processors, eos_id=enc.EOS)
        spq = cfg.data.steps_per_quarter
        scores = []
        for i, (row, plan) in enumerate(zip(rows, plans, strict=True)):
            score = enc.decode([enc.BOS, *row], spq, f"music-lm-{i + 1}", plan.bar_steps / spq)
            score.first_bar = plan.first_bar / spq
            scores.append(score)
        return scores

    def compose_many(self, model: GPT, plans: Sequence[Plan], cfg: MusicLMConfig, seed: int, temperature: float,
                     top_p: float = 1.0, avoid_parallels: bool = True) -> list[Score]:
        """One piece per plan, in order, for plans of any lengths: plans of one meter and pickup are sampled in
        one batch, the shorter ones padded with free steps and cut back to their length afterwards."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault((plan.bar_steps, plan.first_bar), []).append(i)
        pieces: list[Score | None] = [None] * len(plans)
        spq = cfg.data.steps_per_quarter
        for g, members in enumerate(groups.values()):
            longest = max(plans[i].n_steps for i in members)
            padded = [Plan(plans[i].fixed + [[None] * enc.N_VOICES] * (longest - plans[i].n_steps), longest,
                           plans[i].tonic, plans[i].mode, plans[i].bar_steps, plans[i].first_bar, plans[i].pinned)
                      for i in members]
            made = self.compose(model, padded, cfg, seed + g, temperature, top_p, avoid_parallels=avoid_parallels)
            for i, score in zip(members, made, strict=True):
                end = plans[i].n_steps / spq
                score.voices = [[(p, s, min(d, end - s)) for p, s, d in v if s < end] for v in score.voices]
                pieces[i] = score
        return [p for p in pieces if p is not None]

    def _finish(self, score: Score, controls: MusicGenerationControls, plan: Plan, instrument: Instrument | None
                ) -> tuple[dict[str, Any], bytes, np.ndarray, np.ndarray | None]:
        """A sampled piece as the result holds it: its JSON, MIDI, piano roll and (when rendered) sound."""
        kept = VOICES_KEPT[controls.voices]
        score.tempo = controls.tempo
        score.voices = [v if i in kept else [] for i, v in enumerate(score.voices)]
        midi = score_to_midi(score, controls.program, kept)
        length = f"{plan.n_steps / plan.bar_steps:g} bars"
        roll = piano_roll(score, kept, title=f"{score.key_name}, {length}", pinned=plan.pinned)
        sound = self._sound(score, midi, controls, kept, instrument) if controls.render else None
        return ({**score.to_json(), "key_name": score.key_name, "pinned_voices": list(plan.pinned)}, midi, roll,
                sound)

    @staticmethod
    def _instrument(controls: MusicGenerationControls, context: GenerationContext) -> Instrument | None:
        """The audio-ddsp instrument that plays the pieces (`--ddsp`), or None for the SoundFont."""
        return load_instrument(controls.ddsp, context.load_run) if controls.render and controls.ddsp else None

    @staticmethod
    def _sound(score: Score, midi: bytes, controls: MusicGenerationControls, kept: tuple[int, ...],
               instrument: Instrument | None) -> np.ndarray | None:
        if instrument is None:
            return _render(midi)
        audio, moved = play(score, kept, instrument, seed=controls.seed or 0)
        if moved["octave_moves"] or moved["notes_folded"]:
            octaves = ", ".join(f"{voice} {shift // 12:+d}" for voice, shift in moved["octave_moves"].items())
            logger.info(f"played by the audio-ddsp instrument within its trained range: octaves moved "
                        f"{octaves or 'none'}; {moved['notes_folded']} single notes folded in")
        return audio

    def generate(self, model: GPT, cfg: MusicLMConfig, assets: dict[str, Any], controls: MusicGenerationControls,
                 context: GenerationContext) -> MusicResult:
        plan = make_plan(controls, cfg.data.steps_per_quarter)
        scores = self.compose(model, [plan] * controls.num_samples, cfg, controls.seed, controls.temperature,
                              controls.top_p, controls.top_k, controls.avoid_parallels)
        instrument = self._instrument(controls, context)
        result = MusicResult()
        sounds = []
        for score in scores:
            data, midi, roll, sound = self._finish(score, controls, plan, instrument)
            result.scores.append(data)
            result.midi.append(midi)
            result.rolls.append(roll)
            sounds.append(sound)
        if all(sound is not None for sound in sounds):
            rate = RENDER_RATE if instrument is None else instrument.sample_rate
            result.clips, result.sample_rate = sounds, rate
        return result

    def memorization_guard(self, model: GPT, cfg: MusicLMConfig, assets: dict[str, Any],
                           controls: MusicGenerationControls, context: GenerationContext) -> CopyGuard | str | None:
        if not controls.max_copy_notes or controls.memorization == "off":
            return None
        index = assets["copies"].get() if "copies" in assets else None
        if index is None:
            return f"this run has no {COPY_FILE} (runs trained before music-lm kept one), so copies are not checked"
        plan = make_plan(controls, cfg.data.steps_per_quarter)
        instrument = self._instrument(controls, context)

        def redraw(seed: int) -> tuple[dict[str, Any], bytes, np.ndarray, np.ndarray | None]:
            score = self.compose(model, [plan], cfg, seed, controls.temperature, controls.top_p, controls.top_k,
                                 controls.avoid_parallels)[0]
            return self._finish(score, controls, plan, instrument)

        return CopyGuard(index, controls, plan.pinned if controls.melody.strip() else (), redraw)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, model: GPT, cfg: MusicLMConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> Evaluation:
        prepared = self.prepare_data(cfg, data or BUILTIN_BACH, assets)
        train, test = prepared.assets["train"], prepared.assets["test"]
        device = next(model.parameters()).device
        spq, ev = cfg.data.steps_per_quarter, cfg.eval
        nll = mean_loss(model, prepared.val, cfg.train.batch_size, device, cfg.train.precision)
        ids = prepared.assets["test_ids"]
        voice_share = float((ids >= enc.VOICE_BASE).float().mean())
        per_note = max(1, prepared.info["test_notes"]) / len(ids)
        references = reference_histograms(test)
        held_durations = duration_histogram([n for s in test for n in s.notes()])
        copies = CopyIndex(train)
        rng = np.random.default_rng(ev.seed)

        # free pieces in the keys of the held-out pieces
        keys = [(test[i % len(test)].tonic, test[i % len(test)].mode) for i in range(ev.pieces)]
        plans = [make_plan(MusicGenerationControls(bars=ev.bars, key=_key_text(*key)), spq) for key in keys]
        pieces = self.compose(model, plans, cfg, ev.seed, ev.temperature, ev.top_p,
                              avoid_parallels=ev.avoid_parallels)
        generated = piece_report(pieces, keys, references, held_durations, copies, spq)
        baseline = piece_report([random_like(p, rng) for p in pieces], keys, references, held_durations, copies, spq)
        uniform_durations = np.full(len(DURATION_BINS), 1 / len(DURATION_BINS))
        baseline["duration_distance"] = total_variation(uniform_durations, held_durations)
        bach = piece_report(test, [(s.tonic, s.mode) for s in test], references, held_durations, copies, spq)
        metrics: dict[str, Any] = {
            "val_nll_per_token": nll,
            "val_nll_per_note": nll / per_note if nll is not None else None,
            "random_nll_per_token": voice_share * math.log(enc.VOICE_SIZE),
            "random_nll_per_note": voice_share * math.log(enc.VOICE_SIZE) / per_note,
            "generated": generated, "random_baseline": baseline, "held_out_bach": bach,
        }

        # harmonising held-out soprano lines
        harmonised = self.compose_many(model, [_melody_plan(c, spq) for c in test[: ev.harmonize]], cfg,
                                       ev.seed + 1000, ev.temperature, ev.top_p, ev.avoid_parallels)
        if harmonised:
            originals = test[: ev.harmonize]
            metrics["harmonized"] = {
                **voice_leading_rates(harmonised, spq),
                "in_key_share": piece_report(harmonised, [(s.tonic, s.mode) for s in originals], references,
                                             held_durations, None, spq)["in_key_share"],
                "bach_same_chorales": voice_leading_rates(originals, spq),
            }
        _eval_pictures(run, pieces[:1], harmonised[:1], references, keys[:1])
        return Evaluation(metrics)


def _encoding(cfg: MusicLMConfig) -> dict[str, Any]:
    return {"version": ENCODING_VERSION, "vocab_size": enc.VOCAB_SIZE,
            "steps_per_quarter": cfg.data.steps_per_quarter, "voices": list(VOICE_NAMES)}


def _key_text(tonic: int, mode: str) -> str:
    return f"{PITCH_NAMES[tonic]} {mode}"


def _melody_plan(chorale: Score, steps_per_quarter: int) -> Plan:
    """The plan harmonising a chorale's own soprano, in its own key and meter."""
    grid = enc.to_grid(chorale, steps_per_quarter)
    fixed: list[list[int | None]] = [[step[0], None, None, None] for step in grid.steps]
    bar_steps = max(1, round(chorale.bar_quarters * steps_per_quarter))
    first_bar = round(chorale.first_bar * steps_per_quarter) % bar_steps
    return Plan(fixed, len(fixed), chorale.tonic, chorale.mode, bar_steps, first_bar, (0,))


def _eval_pictures(run: RunDir, pieces: Sequence[Score], harmonised: Sequence[Score],
                   references: dict[str, np.ndarray], keys: Sequence[tuple[int, str]]) -> None:
    from muselab.music.plots import plot_pitch_classes, write_picture

    for name, scores, pinned in (("eval_piece.png", pieces, ()), ("eval_harmonized.png", harmonised, (0,))):
        if scores:
            write_picture(run / name, piano_roll(scores[0], title=scores[0].key_name, pinned=pinned))
    if pieces:
        plot_pitch_classes(pieces[0], keys[0], references, run / "eval_pitch_classes.png")


class LazyCopies:
    """The run's training voices for the copy guard, read on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: CopyIndex | None = None

    def get(self) -> CopyIndex | None:
        if self._index is None and self.path.is_file():
            lines = json.loads(self.path.read_text(encoding="utf-8"))["lines"]
            self._index = CopyIndex.from_lines([[(int(i), float(d)) for i, d in line] for line in lines])
        return self._index


class CopyGuard(MemorizationGuard):
    """A piece's longest run of one voice's notes also found in a training voice (in any key), against
    `max_copy_notes`; voices the user gave (a melody) are not measured. A redraw samples the piece again."""

    def __init__(self, index: CopyIndex, controls: MusicGenerationControls, given: Sequence[int],
                 redraw: Any) -> None:
        self.index, self.controls, self.given, self._redraw = index, controls, set(given), redraw
        self.mode, self.attempts = controls.memorization, COPY_ATTEMPTS

    def measure(self, result: MusicResult, indices: Sequence[int]) -> list[float]:
        values = []
        for i in indices:
            score = Score.from_json(result.scores[i])
            score.voices = [[] if v in self.given else notes for v, notes in enumerate(score.voices)]
            values.append(float(self.index.longest_copy(score)))
        return values

    def too_close(self, value: float) -> bool:
        return value > self.controls.max_copy_notes

    def redraw(self, result: MusicResult, indices: Sequence[int], attempt: int) -> None:
        for i in indices:
            seed = ((self.controls.seed or 0) * 1_000_003 + 7919 * (i + 1) + attempt) % 2**63
            data, midi, roll, sound = self._redraw(seed)
            result.scores[i], result.midi[i], result.rolls[i] = data, midi, roll
            if result.clips and sound is not None:
                result.clips[i] = sound

    def note(self, value: float, redraws: int) -> dict[str, Any]:
        return {"memorization": {"checked": True, "longest_copy_notes": int(value),
                                 "max_copy_notes": self.controls.max_copy_notes, "flagged": self.too_close(value),
                                 "resampled": redraws}}

    def describe(self, index: int, value: float) -> str:
        if self.mode == "reject":
            return (f"piece {index + 1} still repeats {int(value)} notes of a training piece after {self.attempts} "
                    "redraws; raise --max-copy-notes or use --memorization flag")
        return (f"piece {index + 1} repeats {int(value)} notes of a training piece in a row (over --max-copy-notes "
                f"{self.controls.max_copy_notes})")
