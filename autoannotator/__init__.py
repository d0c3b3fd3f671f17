"""autoannotator: label text with a small-model ensemble, orchestrated by an LLM (arXiv 2506.16393)."""

__version__ = "0.1.0"
