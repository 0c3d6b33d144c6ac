"""Music: four-voice scores as tokens, the music-lm recipe, MIDI, piano rolls and music metrics."""
