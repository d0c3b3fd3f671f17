"""Who verifies the hard samples: the `Verifier` protocol and `make_verifier` (base), the LLM (llm),
a person in the terminal (human) and the seeded stand-in for benchmarks (simulated)."""
