"""muselab: train generative models on your own material and generate from them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("muselab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

# name -> the module that defines it; imported on first use, so `import muselab` stays cheap (no torch)
_LAZY = {
    "train": "muselab.api", "load": "muselab.api", "generate": "muselab.api", "evaluate": "muselab.api",
    "export": "muselab.api",
    "Run": "muselab.api",
    "Result": "muselab.core.results", "TextResult": "muselab.core.results",
    "SequenceResult": "muselab.core.results", "ImageResult": "muselab.core.results",
    "AudioResult": "muselab.core.results", "Refused": "muselab.core.results",
    "TextGenerationControls": "muselab.text.controls", "Seq2SeqControls": "muselab.text.seq2seq_recipe",
    "GANControls": "muselab.image.controls", "VAEControls": "muselab.image.controls",
    "DDSPControls": "muselab.audio.ddsp_recipe", "VocoderControls": "muselab.audio.vocoder_recipe",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'muselab' has no attribute {name!r}")
