"""Any Hugging Face ``AutoModelForSequenceClassification`` as a voting SLM (the paper's kind of SLM).

Loading goes through the normal Hugging Face cache so a model fetched once keeps working
offline: with ``HF_HUB_OFFLINE`` set (or when the hub cannot be reached) it loads with
``local_files_only``. The cache location is read from the environment at load time, so
``HF_HOME`` / ``HF_HUB_CACHE`` set after import still apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from autoannotator.slm.base import SLM
from autoannotator.slm.labels import build_mapping
from autoannotator.slm.torch_infer import batched_proba, inference_dtype, quiet_transformers, resolve_device

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Offline per the environment now, or per huggingface_hub's import-time reading of it."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of transformers
        return False


def hub_cache_dir() -> str | None:
    """The hub cache as the environment says now; None lets the library use its default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def load_pretrained(loader, source: str, **kwargs):
    """``loader.from_pretrained`` by local folder or hub id; from the cache alone when offline or unreachable."""
    if Path(source).expanduser().is_dir():
        return loader.from_pretrained(str(Path(source).expanduser()), **kwargs)
    kwargs.setdefault("cache_dir", hub_cache_dir())
    if hub_offline():
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    try:
        return loader.from_pretrained(source, **kwargs)
    except Exception as online_exc:  # unreachable hub, timeout, missing repo: the cache may still have it
        log.info("hub unavailable for %s (%s); trying the local cache", source, online_exc)
        try:
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except Exception:
            raise online_exc from None


def native_labels_of(config) -> list[str]:
    """``id2label`` in id order; keys may be ints or (after a JSON round trip) strings."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label[i] for i in sorted(id2label)]


class HFClassifier(SLM):
    """A frozen sequence classifier voting through an explicit native -> task label mapping."""

    def __init__(self, model: torch.nn.Module, tokenizer, task_labels: Sequence[str], *, name: str,
                 mapping: Mapping[str, str | None] | None = None, device: str = "auto",
                 batch_size: int = 64, max_length: int = 256, max_text_chars: int = 20_000):
        super().__init__(name, build_mapping(native_labels_of(model.config), task_labels, mapping))
        dev = resolve_device(device)
        self.model = model.to(device=dev, dtype=inference_dtype(dev)).eval()
        if getattr(tokenizer, "pad_token", "") is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-style classifiers ship no pad token
            self.model.config.pad_token_id = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_text_chars = max_text_chars

    @classmethod
    def from_pretrained(cls, source: str, task_labels: Sequence[str], *, name: str | None = None,
                        revision: str | None = None, **kwargs) -> "HFClassifier":
        """Load by hub id (through the cache) or by local folder path."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        extra = {"revision": revision} if revision else {}
        with quiet_transformers():
            tokenizer = load_pretrained(AutoTokenizer, source, **extra)
            model = load_pretrained(AutoModelForSequenceClassification, source, **extra)
        return cls(model, tokenizer, task_labels, name=name or f"hf:{source}", **kwargs)

    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        return batched_proba(self.model, self.tokenizer, texts, n_labels=len(self.native_labels),
                             batch_size=self.batch_size, max_length=self.max_length,
                             max_chars=self.max_text_chars)

    def describe(self) -> dict:
        return {**super().describe(), "device": str(next(self.model.parameters()).device)}
