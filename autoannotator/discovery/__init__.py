"""Finding small models: Hub search (online, or the recorded/offline catalog), model cards, the scorers
that ship inside PyPI wheels and local model folders. Plain functions; the LLM-facing tools wrap them."""
