"""Speech synthesis: the text front end (text -> phonemes) and its phoneme inventory."""

from muselab.audio.tts.frontend import G2P, Frontend, Phonemized, WordSpan, clean_text, split_sentences
from muselab.audio.tts.inventory import PhonemeInventory

__all__ = ["G2P", "Frontend", "PhonemeInventory", "Phonemized", "WordSpan", "clean_text", "split_sentences"]
