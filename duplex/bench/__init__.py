"""Benchmarks: the LM step (``lm``), the whole engine step (``latency``), a server under load (``serve``) and under
hostile traffic (``fuzz``). They print numbers; tests never compare speeds."""
