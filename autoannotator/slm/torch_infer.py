"""Batched inference shared by every torch-backed SLM (hub classifiers and the trainable student).

Why it is shaped this way: throughput is dominated by padding and host/device syncs. Texts are
sorted by length so each chunk pads only to its own longest text; probabilities stay on the
device until the last chunk and come back with one copy, then are scattered to input order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide load-time progress bars and the expected 'newly initialized head' notice; a CLI prints its own."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' means CUDA when there is one; asking for CUDA on a machine without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return dev


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on GPU (bf16 where supported: no overflow in logits), fp32 on CPU where half is slow."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def clip_texts(texts: Sequence[str], max_chars: int) -> list[str]:
    """Cut absurdly long strings before the tokenizer sees them: a 1 MB text costs as little as a long one."""
    return [t[:max_chars] if isinstance(t, str) else "" for t in texts]


def batched_proba(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, n_labels: int,
                  batch_size: int = 64, max_length: int = 256, max_chars: int = 20_000,
                  autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """(n, n_labels) softmax probabilities in input order; blank texts get a row of NaN (no opinion).

    ``autocast_dtype`` is for models kept in fp32 for training (the student) but run in half
    precision on GPU; frozen models are simply cast once and pass None.
    """
    out = np.full((len(texts), n_labels), np.nan, dtype=np.float32)
    if len(texts) == 0:
        return out
    clipped = clip_texts(texts, max_chars)
    lengths = np.fromiter((len(t.strip()) for t in clipped), dtype=np.int64, count=len(clipped))
    keep = np.flatnonzero(lengths > 0)
    if keep.size == 0:
        return out
    # Character length is a good proxy for token length and costs no extra tokenizer pass.
    order = keep[np.argsort(lengths[keep], kind="stable")]
    ordered = [clipped[i] for i in order]
    device = next(model.parameters()).device
    probs = torch.empty((len(ordered), n_labels), dtype=torch.float32, device=device)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None and device.type == "cuda" else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(ordered), batch_size):
                chunk = ordered[start:start + batch_size]
                enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                enc = {k: v.to(device, non_blocking=True) for k, v in enc.items()}
                logits = model(**enc).logits
                probs[start:start + len(chunk)] = torch.softmax(logits.float(), dim=-1)
    finally:
        model.train(was_training)
    out[order] = probs.cpu().numpy()
    return out
