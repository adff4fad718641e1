"""duplex: a full-duplex real-time speech dialogue engine compatible with Kyutai's Moshi and Mimi."""

__version__ = "0.1.0"
