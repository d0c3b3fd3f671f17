"""Decisions: a label model over the voters, routing rules, the LLM budget and the audit (pure numpy)."""
