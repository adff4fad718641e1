"""Running conversations in real time in this process: the batched frame-locked ``engine``, the frame ``clock``,
per-stage ``profiling`` and the shipped ``defaults``."""
