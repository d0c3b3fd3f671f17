"""How the annotation graph's steps execute: ``steps`` holds the one implementation of each step
(score a batch with the ensemble, verify the hard rows, accept, fine-tune), which the graph's nodes
and the LLM-facing loop tools both call."""
