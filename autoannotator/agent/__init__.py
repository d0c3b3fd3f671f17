"""The meta-controller's LLM side: the planner (which drives graphs/controller.py) and the label-set proposal."""
