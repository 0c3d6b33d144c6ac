"""Real sampled instruments: MIDI rendered with a General MIDI SoundFont by FluidSynth, offline.

Nothing is downloaded: the SoundFont comes from the system (Debian's `fluid-soundfont-gm` installs
FluidR3_GM.sf2, 142 MB of sampled instruments; `timgm6mb-soundfont` the smaller TimGM6mb.sf2) and the
`fluidsynth` command renders faster than real time (`fluidsynth -ni -F out.wav -r SR`). Which SoundFont
is used: the `soundfont` argument (a path, or a file name looked up in the system folders), else
`$MUSELAB_SOUNDFONT`, else the first of FluidR3_GM.sf2, TimGM6mb.sf2, default-GM.sf2 found in
/usr/share/sounds/sf2, /usr/share/soundfonts or /usr/local/share/soundfonts.

    render_midi("song.mid", sr=22050)                       # a MIDI file (path or bytes) -> mono float32
    render_notes([(24, 60, 100, 0.0, 1.0)], sr=22050)        # (program, pitch, velocity, start s, duration s)
    render_notes([MidiNote(64, 0.5, 0.25)], program=40)      # a violin

Programs are General MIDI's 0-127 (`GM_FAMILIES` names their sixteen families of eight); program
`DRUMS` (128) plays on the percussion channel, where the pitch chooses the drum. Audio is mono (the
two channels averaged), float32, at the rate asked for; reverb and chorus are off unless asked for.
Missing software is a one-line `DataError` saying which Debian package to install.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from muselab.core.errors import DataError

SOUNDFONT_ENV = "MUSELAB_SOUNDFONT"
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/usr/local/share/soundfonts")
# (file name, the Debian package that installs it), best first
SOUNDFONTS = (("FluidR3_GM.sf2", "fluid-soundfont-gm"), ("TimGM6mb.sf2", "timgm6mb-soundfont"),
              ("default-GM.sf2", "fluid-soundfont-gm"))
FLUIDSYNTH_INSTALL = "install it with `apt-get install fluidsynth` (Debian, Ubuntu) or your system's package manager"
SOUNDFONT_INSTALL = (f"install one with `apt-get install fluid-soundfont-gm` (or the smaller timgm6mb-soundfont), "
                     f"or name a .sf2 file in ${SOUNDFONT_ENV}")
DRUMS = 128  # the program number that means "the General MIDI percussion channel"
DRUM_CHANNEL = 9
MELODIC_CHANNELS = tuple(c for c in range(16) if c != DRUM_CHANNEL)
TICKS_PER_BEAT = 960
TEMPO_US = 500_000  # 120 beats per minute: one tick is 1 / 1920 s
GM_FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects")


def gm_family(program: int) -> str:
    """General MIDI's family of a program (0-127), or "drums" for `DRUMS`."""
    if program == DRUMS:
        return "drums"
    if not 0 <= program < 128:
        raise ValueError(f"a General MIDI program is 0-127 (or {DRUMS} for drums), not {program}")
    return GM_FAMILIES[program // 8]


@dataclass(frozen=True)
class MidiNote:
    """One note: MIDI pitch, start and duration in seconds, velocity 1-127, General MIDI program."""

    pitch: int
    start: float
    duration: float
    velocity: int = 100
    program: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.pitch <= 127 and 1 <= self.velocity <= 127 and 0 <= self.program <= DRUMS):
            raise ValueError(f"note out of range: {self} (pitch 0-127, velocity 1-127, program 0-{DRUMS})")
        if not (self.start >= 0 and self.duration > 0):
            raise ValueError(f"note needs start >= 0 and duration > 0: {self}")


NoteLike = MidiNote | Sequence[float]


# -- finding the software ------------------------------------------------------------------------------
def fluidsynth_path() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise DataError(f"rendering MIDI needs the synthesizer fluidsynth, which is not installed; {FLUIDSYNTH_INSTALL}")
    return exe


def find_soundfont(soundfont: str | os.PathLike[str] | None = None) -> Path:
    """The SoundFont to render with (see the module's doc for the order it is looked for in)."""
    wanted = soundfont if soundfont is not None else os.environ.get(SOUNDFONT_ENV) or None
    if wanted is not None:
        path = Path(wanted).expanduser()
        if path.is_file():
            return path
        for folder in SOUNDFONT_DIRS:
            if (Path(folder) / path.name).is_file():
                return Path(folder) / path.name
        where = f"${SOUNDFONT_ENV}" if soundfont is None else "the SoundFont asked for"
        raise DataError(f"{where}, '{wanted}', is not a file (nor in {', '.join(SOUNDFONT_DIRS)}); name an "
                        f"existing .sf2 file, or {SOUNDFONT_INSTALL.split(', or')[0]}")
    for name, _ in SOUNDFONTS:
        for folder in SOUNDFONT_DIRS:
            if (Path(folder) / name).is_file():
                return (Path(folder) / name).resolve()
    raise DataError(f"no General MIDI SoundFont found (looked for {', '.join(n for n, _ in SOUNDFONTS[:2])} in "
                    f"{', '.join(SOUNDFONT_DIRS)}); {SOUNDFONT_INSTALL}")


@cache
def soundfont_id(path: Path) -> str:
    """Name and size of a SoundFont: enough to tell which one made some audio (for data fingerprints)."""
    return f"{path.name}:{path.stat().st_size}"


# -- MIDI ----------------------------------------------------------------------------------------------
def _as_note(note: NoteLike, program: int | None) -> MidiNote:
    if isinstance(note, MidiNote):
        return note if program is None else MidiNote(note.pitch, note.start, note.duration, note.velocity, program)
    values = tuple(note)
    if len(values) == 5:  # (program, pitch, velocity, start, duration)
        prog, pitch, velocity, start, duration = values
        prog = prog if program is None else program
    elif len(values) == 4:  # (pitch, velocity, start, duration), with `program`
        pitch, velocity, start, duration = values
        prog = 0 if program is None else program
    else:
        raise ValueError(f"a note is MidiNote, (program, pitch, velocity, start, duration) or (pitch, velocity, "
                         f"start, duration); got {note!r}")
    return MidiNote(int(pitch), float(start), float(duration), int(velocity), int(prog))


def notes_to_midi(notes: Iterable[NoteLike], program: int | None = None, end: float | None = None) -> bytes:
    """A type-0 standard MIDI file (bytes) playing `notes`: one channel per program (percussion on
    channel 10), at most 15 melodic programs. `end` (seconds) extends the file past its last note."""
    import mido

    parsed = [_as_note(n, program) for n in notes]
    if not parsed:
        raise ValueError("no notes to render")
    programs = sorted({n.program for n in parsed if n.program != DRUMS})
    if len(programs) > len(MELODIC_CHANNELS):
        raise ValueError(f"{len(programs)} programs in one MIDI file; at most {len(MELODIC_CHANNELS)} fit (render "
                         "them in parts)")
    channel = {p: c for p, c in zip(programs, MELODIC_CHANNELS, strict=False)} | {DRUMS: DRUM_CHANNEL}

    def ticks(seconds: float) -> int:
        return round(seconds * TICKS_PER_BEAT * 1e6 / TEMPO_US)

    # (tick, order, message): note-offs before note-ons at the same tick, so a repeated pitch sounds again
    events = [(0, 0, mido.Message("program_change", channel=channel[p], program=p)) for p in programs]
    for n in parsed:
        events.append((ticks(n.start), 2, mido.Message("note_on", channel=channel[n.program], note=n.pitch,
                                                      velocity=n.velocity)))
        events.append((max(ticks(n.start + n.duration), ticks(n.start) + 1), 1,
                       mido.Message("note_off", channel=channel[n.program], note=n.pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=TEMPO_US, time=0)])
    now = 0
    for tick, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, ticks(end) - now) if end is not None else 0))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT, tracks=[track])
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


# -- rendering -----------------------------------------------------------------------------------------
def render_midi(midi: str | os.PathLike[str] | bytes, sr: int = 22050, *, soundfont: str | os.PathLike[str] | None = None,
                gain: float = 0.5, reverb: bool = False, chorus: bool = False, seconds: float | None = None
                ) -> np.ndarray:
    """A MIDI file (a path or its bytes) rendered by FluidSynth: mono float32 [T] at `sr`. FluidSynth
    plays past the last note until every voice has died away; `seconds` cuts or pads to that length.
    `gain` is FluidSynth's master gain (its default is 0.2; loud polyphony can clip above 0.5)."""
    if not 8000 <= sr <= 96000:
        raise ValueError(f"sample rate {sr} is outside FluidSynth's 8,000-96,000 Hz")
    exe, font = fluidsynth_path(), find_soundfont(soundfont)
    with tempfile.TemporaryDirectory(prefix="muselab-midi-") as tmp:
        if isinstance(midi, bytes):
            source = Path(tmp) / "in.mid"
            source.write_bytes(midi)
        else:
            source = Path(midi)
            if not source.is_file():
                raise DataError(f"MIDI file '{source}' does not exist; check the path")
            with source.open("rb") as file:
                if file.read(4) != b"MThd":
                    raise DataError(f"'{source}' is not a standard MIDI file (no MThd header); export it as .mid")
        out = Path(tmp) / "out.wav"
        command = [exe, "-ni", "-q", "-F", str(out), "-T", "wav", "-O", "float", "-r", str(sr), "-g", f"{gain:g}",
                   "-R", "1" if reverb else "0", "-C", "1" if chorus else "0", str(font), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        if done.returncode != 0 or not out.is_file():
            reason = " ".join((done.stderr or done.stdout).split())[:200]
            raise DataError(f"fluidsynth could not render '{source.name}' with {font.name} ({reason}); check the "
                            f"MIDI file and the fluidsynth installation ({FLUIDSYNTH_INSTALL})")
        import soundfile as sf

        audio, rate = sf.read(out, dtype="float32", always_2d=True)
    if rate != sr:  # FluidSynth honours -r; this only guards against a build that does not
        from math import gcd

        from scipy.signal import resample_poly

        audio = resample_poly(audio, sr // gcd(sr, rate), rate // gcd(sr, rate), axis=0)
    wav = np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32)
    if seconds is not None:
        length = round(seconds * sr)
        wav = np.pad(wav[:length], (0, max(0, length - len(wav))))
    return wav


def render_notes(notes: Iterable[NoteLike], program: int | None = None, sr: int = 22050, **options: object
                 ) -> np.ndarray:
    """Notes rendered with the SoundFont: `MidiNote`s, (program, pitch, velocity, start, duration)
    tuples, or (pitch, velocity, start, duration) tuples played by `program` (which, when given, also
    overrides every note's own). Options as `render_midi`."""
    return render_midi(notes_to_midi(notes, program), sr, **options)  # type: ignore[arg-type]
