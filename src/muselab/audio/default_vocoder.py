"""The vocoder muselab ships, and loading any `audio-vocoder` run as a plain network.

A small vocoder trained on builtin:mixed lives in the package, in `muselab/audio/pretrained/vocoder/`:
a run directory like any other (`config.json`, `model.safetensors`, `MODEL_CARD.md` with the command
that made it, `eval.json`). It turns mels into sound wherever no vocoder run is named: audio-tts
generation, `muselab generate --recipe audio-vocoder --mel FILE` (or `muselab generate builtin:audio-vocoder`).
`$MUSELAB_DEFAULT_VOCODER` names another run directory to use instead (or `none` to use Griffin-Lim).
When no vocoder ships (a source checkout before the shipping command was run), Griffin-Lim is the
fallback, with a note. Weights are safetensors and read with nothing but this library.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from muselab.audio.vocoder import Vocoder
from muselab.core.errors import CheckpointError, ControlError

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained" / "vocoder"
DEFAULT_VOCODER_ENV = "MUSELAB_DEFAULT_VOCODER"
SHIPPED_MAX_BYTES = 10 * 1024 * 1024  # the shipped weights stay small enough to live in the package


def default_vocoder_dir() -> Path | None:
    """The run directory of the default vocoder: `$MUSELAB_DEFAULT_VOCODER`, else the shipped one, else
    None (Griffin-Lim)."""
    named = os.environ.get(DEFAULT_VOCODER_ENV, "").strip()
    if named.lower() in ("none", "griffin-lim", "off"):
        return None
    if named:
        return Path(named).expanduser()
    return SHIPPED_DIR if (SHIPPED_DIR / "model.safetensors").is_file() else None


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: float, what: str) -> Vocoder:
    from muselab.audio.vocoder_recipe import VocoderRecipeConfig
    from muselab.core import rundir as files
    from muselab.core.checkpoint import load_into, load_tensors
    from muselab.core.rundir import RunDir

    folder = Path(path)
    if not (folder / files.CONFIG).is_file():
        raise ControlError(f"{what} '{path}' is not a run directory; pass a trained audio-vocoder run")
    saved = RunDir(folder).read_config()
    if saved.get("recipe") != "audio-vocoder":
        raise ControlError(f"{what} '{path}' is a {saved.get('recipe')} run; pass an audio-vocoder run")
    mel = saved.get("data", {}).get("mel")
    from muselab.audio.vocoder_recipe import MEL_DESCRIPTION

    if mel is not None and mel != MEL_DESCRIPTION:
        raise CheckpointError(f"{what} '{path}' was trained on other mels ({mel}); this muselab's vocoders read "
                              f"{MEL_DESCRIPTION}: train it again")
    try:
        cfg = VocoderRecipeConfig.model_validate(saved["config"])
    except ValueError as err:
        raise CheckpointError(f"{what} '{path}' has a config this muselab version cannot read ({err})") from None
    model = Vocoder(cfg.model)
    load_into(model, load_tensors(folder / files.MODEL), folder / files.MODEL)
    return model.eval()


def load_vocoder(path: str | Path, what: str = "--vocoder") -> Vocoder:
    """An audio-vocoder run's network, read from its safetensors weights (cached per path and file
    time, so a run trained again is read again). `what` names the option in error messages."""
    folder = Path(path).resolve()
    weights = folder / "model.safetensors"
    return _load(str(folder), weights.stat().st_mtime if weights.is_file() else 0.0, what)


def load_default_vocoder() -> Vocoder | None:
    """The default vocoder's network, or None when there is none (use Griffin-Lim)."""
    folder = default_vocoder_dir()
    if folder is None:
        return None
    what = f"${DEFAULT_VOCODER_ENV}" if os.environ.get(DEFAULT_VOCODER_ENV, "").strip() else "the shipped vocoder"
    return load_vocoder(folder, what)


def default_vocoder_name() -> str:
    """How a manifest names the default vocoder: the shipped one, the run named by the environment, or
    Griffin-Lim."""
    folder = default_vocoder_dir()
    if folder is None:
        return "griffin_lim"
    return "builtin:audio-vocoder" if folder == SHIPPED_DIR else str(folder)
