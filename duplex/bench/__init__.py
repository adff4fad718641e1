"""Benchmarks: the LM step (``lm``), the whole engine step (``latency``), a codec's reconstruction on a corpus
(``codec_quality``), a server under load (``serve``) and under hostile traffic (``fuzz``), and turn-taking
(``turntaking``). Each formats its own report for a person (``format_table``); tests never compare speeds."""
