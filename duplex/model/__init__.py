"""The Moshi language model: its config, layers, depth transformer, checkpoint loading and training view
(``lm``), sampling, streaming generation and the text tokenizer."""
