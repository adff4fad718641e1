"""Training: the run folder every trainer uses, and the adapters that feed the corpus to the model trainers."""
