"""The generation pipeline: every request, from the CLI, the API or the server, takes this one path."""

from muselab.pipeline.generate import OnRefused, RefusedError, generate, moderate_texts

__all__ = ["OnRefused", "RefusedError", "generate", "moderate_texts"]
