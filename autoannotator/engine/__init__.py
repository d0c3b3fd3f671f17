"""How the annotation graph's steps execute: ``steps`` holds the one implementation of each step
(score a batch with the ensemble, verify the hard rows, accept, fine-tune), which the graph's nodes
and the LLM-facing loop tools both call.

Where the ensemble step runs is the engine's choice: in this process (``local``) or on a Ray cluster
(``ray``). The annotation graph stays the orchestrator either way (edges, checkpoints, resume); an engine
only turns a chunk of texts into the ensemble's votes, so both engines give the same votes for the same
models."""

from autoannotator.engine.base import Engine, LocalEngine

__all__ = ["Engine", "LocalEngine"]
