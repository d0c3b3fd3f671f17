"""How the annotation graph's steps execute: ``steps`` holds the one implementation of each step
(score a batch with the ensemble, verify the hard rows, accept, fine-tune), which the graph's nodes
and the LLM-facing loop tools both call.

Where the ensemble step runs is the engine's choice: in this process (``local``) or on a Ray cluster
(``ray``). The annotation graph stays the orchestrator either way (edges, checkpoints, resume); an engine
only turns a chunk of texts into the ensemble's votes, so both engines give the same votes for the same
models."""

from autoannotator.engine.base import Engine, LocalEngine


def make_engine(kind: str, models, specs, task, settings, *, source=None, address=None) -> Engine:
    """The engine ``--engine`` names; ``ray`` imports Ray only when asked for."""
    if kind == "local":
        return LocalEngine(models, len(task.label_names), settings.min_votes)
    if kind == "ray":
        from autoannotator.engine.ray_engine import RayEngine

        return RayEngine(models, specs, task, settings, min_votes=settings.min_votes, address=address, source=source)
    raise ValueError(f"unknown engine {kind!r}")


__all__ = ["Engine", "LocalEngine", "make_engine"]
