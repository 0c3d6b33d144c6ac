"""Audio: signal processing, file input/output, and the audio models built on them."""
