"""muselab: train generative models on your own material and generate from them."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("muselab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__", "train", "load", "generate", "evaluate"]


def __getattr__(name: str):
    # The API pulls in torch; keep `import muselab` cheap and free of side effects.
    if name in {"train", "load", "generate", "evaluate"}:
        from muselab import api

        return getattr(api, name)
    raise AttributeError(f"module 'muselab' has no attribute {name!r}")
