"""Files at the codec's edges: checkpoints, audio files, codes files, and atomic writes."""
