"""The LLM side of AutoAnnotator: the endpoint factory, the embedded server, the verifier."""
