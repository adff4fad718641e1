"""Training data: the synthetic two-speaker conversation corpus (``duplex data synth``)."""
