"""Frozen SLMs served by deployment code running in the sandbox: k proxies, one round trip per batch.

The deployment program (the vetted template ``prompts/deploy_worker.py.jinja`` rendered by
``tools/codegen.py``, or an LLM's customisation of it) is generated code, so it runs only as a
``Sandbox.start_worker`` process. ``SandboxedEnsemble`` exposes one proxy ``SLM`` per deployed
model; the first proxy asked about a batch fetches every model's answer in one ``predict`` call
and the others reuse it, so transport costs one round trip per batch, not k.

Only FROZEN models are deployed this way. Trainable students stay in-process: they are our own
vetted code (not generated) and fine-tuning needs their weights in this process.

Neither sandbox can see the repository (Docker mounts only the interpreter and the venv;
bubblewrap hides the caller's working directory), so ``stage_work_dir`` copies the adapters the
program imports (``RUNTIME_FILES``) and every local model folder into the sandbox's work dir.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from autoannotator.sandbox import Sandbox, SandboxError, SandboxLimits, Worker
from autoannotator.sandbox.base import drops_to_nobody
from autoannotator.slm.base import SLM, LabelMapping, Prediction

FROZEN_BUILTINS = ("vader", "textblob", "afinn", "profanity")
TRAINABLE_BUILTINS = ("student", "tfidf")  # they train, so they stay in-process (slm.catalog.BUILTINS)
# What the deployment program may import from autoannotator: the adapters and what they import.
RUNTIME_FILES = ("__init__.py", "errors.py", "slm/__init__.py", "slm/base.py", "slm/labels.py",
                 "slm/lexicon.py", "slm/hf.py", "slm/torch_infer.py", "slm/catalog.py", "slm/adapters.py",
                 "plugins.py")
SAMPLES_FILE = "smoke_samples.json"
MODELS_DIR = "models"  # models/<index>: a staged copy of model <index>'s folder


class Preprocess(BaseModel):
    """Text clean-up before a model sees the text (the paper's tweet models were trained on it)."""

    lowercase: bool = False
    normalize_urls: bool = Field(False, description="replace URLs by 'http'")
    normalize_mentions: bool = Field(False, description="replace @names by '@user'")


class ModelDeployment(BaseModel):
    name: str = Field("", description="the key of its votes; defaults to the spec")
    spec: str = Field(description="'vader', 'textblob', 'afinn', 'profanity' or 'hf:<hub id or folder>[#NATIVE=task,...]'")
    mapping: dict[str, str | None] | None = Field(None, description="native label -> task label (null: no opinion)")
    batch_size: int = Field(64, ge=1, le=4096)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    max_length: int = Field(256, ge=8, le=8192)
    max_text_chars: int = Field(20_000, ge=100, description="longer texts are clipped (as settings.max_text_chars)")
    preprocess: Preprocess = Preprocess()

    @field_validator("spec")
    @classmethod
    def _frozen_only(cls, v: str) -> str:
        v = v.strip()
        if v in TRAINABLE_BUILTINS:
            raise ValueError(f"the trainable {v} stays in-process (fine-tuning needs it); deploy frozen models only")
        if v not in FROZEN_BUILTINS and not (v.startswith("hf:") and len(v) > 3):
            raise ValueError(f"unknown model {v!r}: use {', '.join(FROZEN_BUILTINS)} or hf:<hub id or folder>")
        return v

    @model_validator(mode="after")
    def _default_name(self) -> ModelDeployment:
        self.name = self.name.strip() or self.spec
        return self


class DeploymentSpec(BaseModel):
    task_labels: list[str] = Field(min_length=2)
    models: list[ModelDeployment] = Field(min_length=1, max_length=16)

    @model_validator(mode="after")
    def _check(self) -> DeploymentSpec:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for m in self.models:
            bad = {t for t in (m.mapping or {}).values() if t is not None and t not in self.task_labels}
            if bad:
                raise ValueError(f"{m.name}: mapping targets labels outside the task: {sorted(bad)}")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


# --- the sandbox's work dir ------------------------------------------------------------------

def host_model_dir(spec: str) -> Path | None:
    """The folder an ``hf:`` spec loads from here: the folder itself, or its snapshot in the HF cache."""
    from autoannotator.slm.catalog import parse_hf_spec

    source, _ = parse_hf_spec(spec)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder.resolve()
    try:
        from huggingface_hub import snapshot_download

        from autoannotator.slm.hf import hub_cache_dir

        return Path(snapshot_download(source, local_files_only=True, cache_dir=hub_cache_dir()))
    except Exception:  # not cached: the program will say it cannot load it (the sandbox is offline)
        return None


def _put(src: Path, dst: Path) -> None:
    """Hard-link where the sandboxed code cannot write through the link, else copy.

    As root the code runs as uid 65534, which cannot write a root-owned file that is not
    world-writable; as anyone else it runs as us and could rewrite the original, so copy."""
    real = Path(os.path.realpath(src))  # HF cache snapshots are symlinks into blobs/
    mode = real.stat().st_mode
    if drops_to_nobody() and real.stat().st_uid == 0 and mode & 0o004 and not mode & 0o002:
        try:
            os.link(real, dst)
            return
        except OSError:
            pass  # another file system
    shutil.copyfile(real, dst)
    os.chmod(dst, 0o644)


def _put_tree(src: Path, dst: Path) -> None:
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .cache: never needed to load
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o755)
        for f in files:
            _put(Path(root) / f, target / f)


def stage_work_dir(work_dir: Path, spec: DeploymentSpec, samples: Sequence[str] | None = None) -> Path:
    """Fill a work dir with what the deployment program reads: adapters, model folders, samples."""
    import autoannotator

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    pkg = Path(autoannotator.__file__).parent
    for rel in RUNTIME_FILES:
        dst = work / "autoannotator" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(dst.parent, 0o755)
        shutil.copyfile(pkg / rel, dst)
        os.chmod(dst, 0o644)
    for index, m in enumerate(spec.models):
        folder = host_model_dir(m.spec) if m.spec.startswith("hf:") else None
        if folder is not None:
            shutil.rmtree(work / MODELS_DIR / str(index), ignore_errors=True)  # never a stale model
            _put_tree(folder, work / MODELS_DIR / str(index))
    if (work / MODELS_DIR).is_dir():
        os.chmod(work / MODELS_DIR, 0o755)
    if samples is not None:
        (work / SAMPLES_FILE).write_text(json.dumps(list(samples)))
        os.chmod(work / SAMPLES_FILE, 0o644)
    return work


# --- the ensemble ----------------------------------------------------------------------------

# A Docker worker outlives this process unless stopped: close whatever is still open at exit.
_OPEN: weakref.WeakSet[SandboxedEnsemble] = weakref.WeakSet()
atexit.register(lambda: [e.close() for e in list(_OPEN)])


class _ModelInfo(BaseModel):
    name: str
    native_labels: list[str]
    mapping: dict[str, str | None]


class _Info(BaseModel):
    task_labels: list[str]
    models: list[_ModelInfo]


class SandboxedSLM(SLM):
    """A proxy for one model served by the sandboxed worker; predictions come from the shared batch."""

    def __init__(self, ensemble: SandboxedEnsemble, name: str, mapping: LabelMapping) -> None:
        super().__init__(name, mapping)
        self._ensemble = ensemble

    def native_proba(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("a sandboxed model answers in task-label space only: call predict()")

    def predict(self, texts: Sequence[str]) -> Prediction:
        return self._ensemble.predict_all(texts)[self.name]

    def describe(self) -> dict:
        return {**super().describe(), "sandboxed": self._ensemble.backend}


class SandboxedEnsemble:
    """The deployed frozen models, served from one sandboxed worker. Use ``start``; ``close`` stops it."""

    def __init__(self, worker: Worker, spec: DeploymentSpec, info: _Info, *, call_timeout_s: float,
                 owned_dir: Path | None = None) -> None:
        self.worker, self.spec, self.call_timeout_s = worker, spec, call_timeout_s
        self.task_labels = list(spec.task_labels)
        self._owned_dir = owned_dir
        self._lock = threading.Lock()  # one request at a time on the socket; one round trip per batch
        self._last: tuple[tuple[str, ...], dict[str, Prediction]] | None = None
        by_name = {m.name: m for m in info.models}
        self.models: list[SandboxedSLM] = [
            SandboxedSLM(self, name, LabelMapping(native_labels=by_name[name].native_labels,
                                                  task_labels=self.task_labels, mapping=by_name[name].mapping))
            for name in spec.names]

    @classmethod
    def start(cls, code: Path, spec: DeploymentSpec, sandbox: Sandbox, work_dir: Path | None = None,
              limits: SandboxLimits | None = None, *, call_timeout_s: float = 600.0) -> SandboxedEnsemble:
        """Stage a fresh work dir, start ``code`` as a worker, check it serves exactly ``spec``'s models.

        ``work_dir`` None: a short temporary one (the worker's socket path must fit in 107 bytes),
        removed by ``close``."""
        owned = None if work_dir is not None else Path(tempfile.mkdtemp(prefix="aa-ens-"))
        work = stage_work_dir(work_dir or owned, spec)
        limits = limits or SandboxLimits(memory_mb=4096, cpus=float(os.cpu_count() or 1), timeout_s=300)
        worker = sandbox.start_worker(Path(code), work, limits)
        try:
            try:
                info = _Info.model_validate(worker.call({"op": "info"}, timeout_s=60))
            except ValidationError as exc:
                raise SandboxError(f"deployed code answered 'info' malformed: {exc.errors()[0]['msg']}") from None
            served = [m.name for m in info.models]
            if sorted(served) != sorted(spec.names) or info.task_labels != spec.task_labels:
                raise SandboxError(f"deployed code serves {served} for {info.task_labels}, "
                                   f"expected {spec.names} for {spec.task_labels}")
            ensemble = cls(worker, spec, info, call_timeout_s=call_timeout_s, owned_dir=owned)
            _OPEN.add(ensemble)
            return ensemble
        except Exception as exc:
            worker.close()
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            if isinstance(exc, ValueError):  # a mapping LabelMapping rejects
                raise SandboxError(f"deployed code reported an invalid label mapping: {str(exc).splitlines()[0]}") from None
            raise

    @property
    def backend(self) -> str:
        return self.worker.backend

    def predict_all(self, texts: Sequence[str]) -> dict[str, Prediction]:
        """Every model's prediction on ``texts``: one worker call, reused for a repeat of the same batch."""
        key = tuple(t if isinstance(t, str) else "" for t in texts)  # as in process: a non-string is blank
        with self._lock:
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            n_task = len(self.task_labels)
            if not key:
                out = {n: Prediction(np.zeros(0, np.int64), np.zeros((0, n_task), np.float32)) for n in self.spec.names}
            else:
                reply = self.worker.call({"op": "predict", "texts": list(key)}, timeout_s=self.call_timeout_s)
                out = {n: self._parse(reply, n, len(key), n_task) for n in self.spec.names}
            self._last = (key, out)
            return out

    @staticmethod
    def _parse(reply: dict[str, Any], name: str, n: int, n_task: int) -> Prediction:
        """Untrusted output: check shapes, ranges and finiteness before anything downstream sees it."""
        try:
            got = reply["models"][name]
            votes = np.asarray(got["votes"], dtype=np.int64)
            proba = np.asarray(got["proba"], dtype=np.float32).reshape(n, n_task)
            if votes.shape != (n,) or not ((votes >= -1) & (votes < n_task)).all():
                raise ValueError("votes out of range or of the wrong length")
            if not np.isfinite(proba).all():
                raise ValueError("non-finite probabilities")
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError(f"deployed code returned malformed predictions for {name}: {exc}"[:300]) from None
        return Prediction(votes, proba)

    def close(self) -> None:
        self.worker.close()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> SandboxedEnsemble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
