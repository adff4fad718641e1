"""The turn-taking benchmark, Full-Duplex-Bench compatible: sample folders (``fdb``), FDB v1's scoring rules and
v1.5's VAD timing (``metrics``, ``vad``), and scoring a folder of results (``score``)."""
