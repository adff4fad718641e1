"""Small helpers shared across the codec and its users: measurement summaries (``stats``)."""
