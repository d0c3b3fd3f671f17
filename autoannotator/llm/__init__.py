"""The LLM side of the plumbing: the one factory (`factory.llm_session`), the embedded llama.cpp server
and the shared event loop every async LLM call runs on."""
