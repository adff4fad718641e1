"""Evaluating a codec: reconstruction quality (``quality``) and streaming speed (``bench``)."""
