"""Network front ends: Kyutai's WebSocket ``protocol``, the voice ``server`` (with its browser page in ``web/``),
the Python ``client`` and the in-process microphone demo (``mic``)."""
