"""Text: tokenizers, the Transformer language model, decoding and metrics."""
