"""Small classifiers (SLMs): one interface, adapters for Hugging Face models, packaged scorers and a trainable student."""

from autoannotator.slm.base import SLM, LabelMapping, Prediction

__all__ = ["SLM", "LabelMapping", "Prediction"]
