"""LangGraph state machines: the annotation loop (and, later, the controller and chat)."""
