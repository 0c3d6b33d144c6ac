"""Safety: moderation, memorization guard, provenance and invisible watermarks."""
