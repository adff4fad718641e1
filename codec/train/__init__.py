"""Training a Mimi-architecture codec: ``trainer`` (the differentiable forward, EMA codebooks, checkpoints,
``fit``), ``losses`` and the optional ``discriminator``. Inference never imports this package."""
