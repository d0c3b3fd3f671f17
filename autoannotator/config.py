"""The one place for configuration.

Sources, lowest precedence first: environment (``AUTOANNOTATOR_*``), the config file
(TOML), then CLI flags. The config file is ``--config FILE``, else ``$AUTOANNOTATOR_CONFIG``,
else ``./autoannotator.toml``, else ``~/.config/autoannotator/config.toml``.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from autoannotator.errors import UserError

_config_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config_path", default=None)


class PriceTable(BaseModel):
    """USD per million tokens. Default: GPT-3.5-turbo (0125), the LLM the paper prices."""

    model: str = "gpt-3.5-turbo-0125"
    input_per_1m: float = 0.50
    output_per_1m: float = 1.50

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in * self.input_per_1m / 1e6 + tokens_out * self.output_per_1m / 1e6


class FinetuneSettings(BaseModel):
    """The paper's recipe (lr 2e-5, batch 16, 3 epochs, weight decay 0.01) plus a faster-learning new head."""

    lr: float = 2e-5
    head_lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 3
    weight_decay: float = 0.01
    max_length: int = 128
    holdout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    min_holdout: int = 10
    # A trainable model votes only once its held-out balanced accuracy beats chance (1 / labels) by this much.
    rejoin_margin: float = Field(0.05, ge=0.0, le=1.0)
    # ... and by this many standard errors of that accuracy (0.5 / sqrt(slice size)), when that is more.
    rejoin_standard_errors: float = Field(2.0, ge=0.0)

    # What a round trains on (finetune.plan_round). Every labelled row, not only the LLM-verified pool:
    # a verified row weighs 1, a row the SLMs settled weighs settled_weight x its confidence (the run's
    # posterior when it records one, else the share of the voters that agreed); below the floor it is left out.
    train_on_settled: bool = True
    settled_weight: float = Field(1.0, ge=0.0, le=1.0)
    settled_min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    # A share of the settled rows, by a hash of the row id, never trained on: the vote gate's slice
    # when the verified slice cannot judge (before any LLM call, or one label only).
    settled_holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Incremental rounds: continue from the current weights on round_size_factor x beta rows, for
    # incremental_epochs passes: replay_share of them replayed from earlier rows, the rest new since
    # the last round (verified rows first; replay fills in when there are fewer). A round's cost then
    # depends on beta, not on how many rows the run has labelled. incremental=False retrains on
    # everything, `epochs` times (the paper's recipe, plus the settled rows).
    incremental: bool = True
    incremental_epochs: int = Field(1, ge=1)
    round_size_factor: float = Field(2.0, gt=0.0)
    replay_share: float = Field(0.25, ge=0.0, lt=1.0)
    # Warm start: before the first LLM call, train on the confident agreements among the first
    # warm_start_rows rows, so the student can vote from the first batch.
    warm_start: bool = True
    warm_start_rows: int = Field(512, ge=0)
    warm_start_min_confidence: float = Field(1.0, ge=0.0, le=1.0)
    # The warm start is one small round, so it gets the full recipe's passes: one pass over ~250
    # rows is 16 steps, too few for the new head (on yelp it collapsed onto the common label).
    warm_start_epochs: int = Field(3, ge=1)
    # Scale each label's rows in a round so every label carries the same total weight (each factor
    # capped at balance_cap): the settled rows are skewed (the lexicons agree far more often on
    # positive sentences), and a skewed round pulls the head onto the common label, while the vote
    # gate scores balanced accuracy.
    balance_labels: bool = True
    balance_cap: float = Field(5.0, ge=1.0)
    # Rows are labelled in a seeded shuffled order (the output keeps the input's order): a file sorted
    # by label would otherwise feed the first rounds one label only. False: the file's order.
    shuffle_rows: bool = True
    # Forgetting: the first forgetting_rows labelled rows (processing order) are scored before and after
    # each round; weights that lose more than forgetting_margin accuracy there are refused.
    forgetting_rows: int = Field(200, ge=0)
    forgetting_margin: float = Field(0.05, ge=0.0, le=1.0)
    # Overlap: a beta-branch round trains in a background thread while the loop labels the next batches
    # with the current weights; its accepted weights are swapped in at a batch boundary: the first one
    # after the round ends (overlap_batches None: labels then depend on the machine's speed), or exactly
    # overlap_batches batches after it began, waiting for it there if need be (reproducible labels).
    # The warm start stays in line: the first batches need its weights. False: the loop waits for each round.
    overlap: bool = False
    overlap_batches: int | None = Field(None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUTOANNOTATOR_", env_nested_delimiter="__", populate_by_name=True, extra="ignore"
    )

    # LLM: an OpenAI-compatible endpoint, or the embedded SmolLM2 server when none is configured.
    llm_base_url: str | None = None
    llm_model: str | None = None
    # The key for the configured endpoint, sent to whatever host llm_base_url names.
    llm_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("llm_api_key", "AUTOANNOTATOR_LLM_API_KEY")
    )
    # OpenAI's own key: sent only to api.openai.com (autoannotator/llm/keys.py), never to another host.
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("openai_api_key", "OPENAI_API_KEY"))
    llm_timeout_s: float = 60.0
    llm_max_concurrency: int = Field(4, ge=1, le=256)
    llm_max_retries: int = Field(4, ge=0, le=20)
    # Backoff between attempts: base x 2^attempt, jittered, at most max; a server's Retry-After wins
    # (capped at llm_retry_after_cap_s: a server asking for an hour is treated as down, not obeyed).
    llm_backoff_base_s: float = Field(1.0, ge=0.0, le=60.0)
    llm_backoff_max_s: float = Field(30.0, ge=0.0, le=600.0)
    llm_retry_after_cap_s: float = Field(60.0, ge=0.0, le=3600.0)
    llm_max_text_chars: int = Field(4000, ge=100)
    embedded_model_path: Path | None = None
    embedded_threads: int | None = None
    embedded_startup_timeout_s: float = 120.0

    # The annotation loop (paper: k = 3, beta = 2000; epsilon so small that any disagreement is hard).
    k: int = Field(3, ge=1, le=16)
    epsilon: float = Field(1e-6, ge=0.0, le=1.0)
    min_votes: int = Field(2, ge=1)
    beta: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1, le=100_000)
    # Deciding (autoannotator/decide/): "paper" = U(x) >= epsilon and the LLM's answer is the label;
    # "calibrated" = ask when the LLM is expected to raise the row's chance of being right by at least
    # calibrated_margin, labels follow the per-vote-pattern posterior (see decide/online.py).
    routing: Literal["paper", "calibrated"] = "calibrated"
    calibrated_margin: float = Field(0.02, ge=0.0, le=1.0)
    # Each SLM vote is refined by its model's confidence quantile bin (cut points from the run's own
    # confidences) before the pattern posterior: a confident vote and a guess are told apart; 1 = off.
    confidence_bins: int = Field(2, ge=1, le=8)
    # The calibrated rule's posterior: "logistic" = one logistic model over every SLM's vote and confidence,
    # learnt from the LLM's answers (decide/logistic.py); "patterns" = one posterior per vote pattern
    # (refined by confidence_bins). Logistic ranked rows better in every replay (docs/benchmarks.md).
    posterior_model: Literal["patterns", "logistic"] = "logistic"
    # The LLM's accuracy the calibrated rule assumes: with SLMs that may err together it cannot be
    # learnt from the votes; an LLM that agrees with confident SLMs less than this implies is judged
    # unreliable and then ignored (see decide/online.py).
    llm_accuracy: float = Field(0.9, gt=0.0, le=1.0)
    llm_budget: float | None = Field(None, ge=0.0, le=1.0)  # max share of rows sent to the LLM
    # With neither llm_budget nor max_llm_cost set, the calibrated rule asks at most the share of rows the
    # paper's rule would (those with U >= epsilon), spent on the rows its posterior is least sure of; without
    # the cap it asks every row the LLM is expected to improve by calibrated_margin, which beside weak SLMs is
    # nearly all of them. --llm-budget 1 lifts it.
    cap_at_paper_share: bool = True
    # After the last batch (calibrated routing), the final fine-tuned models vote again on the rows settled
    # before their weights came in, and those rows' labels follow the final posterior: the early rows were
    # labelled by a student that had seen a few hundred answers, the last by one that has seen them all.
    final_revote: bool = True
    # Share of the default paper cap kept back while the batches are labelled and spent after the re-vote on the
    # settled rows the final posterior is least sure of (calibrated routing; not under --llm-budget/--max-llm-cost).
    final_reserve: float = Field(0.25, ge=0.0, lt=1.0)
    max_llm_cost: float | None = Field(None, ge=0.0)  # USD, at the price table's prices
    # Calibrated routing asks only as many rows as bring the posterior's expected accuracy of the labels to this
    # (a share in (0, 1], or "llm": the assumed llm_accuracy), within any cap above; None = no target: every row
    # the cap allows that the LLM is expected to improve.
    target_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["llm"] | None = None
    # Settled rows also sent to the LLM to estimate label quality without gold: None = min(100, 2 %), 0 = off.
    audit: int | None = Field(None, ge=0)
    # Few-shot verification prompts: per hard row, this many rows labelled in earlier batches (nearest by
    # MiniLM embedding, balanced across labels; verify/examples.py); 0 = the zero-shot prompt. Settled rows
    # qualify as examples at a posterior confidence of at least few_shot_min_confidence.
    few_shot: int = Field(0, ge=0, le=32)
    few_shot_min_confidence: float = Field(0.9, ge=0.0, le=1.0)
    models: list[str] = Field(default_factory=list)
    model_dirs: list[Path] = Field(default_factory=list)
    # Tool plugins by file: "path/to/file.py" or "path/to/file.py:factory" (see tools/registry.py).
    tool_paths: list[str] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where the generated deployment code (the frozen SLMs) runs: docker, local (bubblewrap), auto
    # (docker when an engine answers, else bubblewrap, else in-process from the vetted template: never
    # LLM-written code unisolated), none (in-process, no generated code), or unsafe-local (generated
    # code as a plain subprocess, NOT isolated: only when asked for by name).
    sandbox: Literal["auto", "docker", "local", "none", "unsafe-local"] = "auto"
    # Where the ensemble step runs: this process, or Ray (an actor pool per frozen model). ray_address:
    # None starts a local Ray instance, "auto" joins the cluster this machine belongs to, else host:port.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    max_text_chars: int = Field(20_000, ge=100)
    seed: int = 0
    finetune: FinetuneSettings = FinetuneSettings()

    # Reuse the plan of an earlier run with the same task, label set, candidates and data (runs_dir/.plan-cache).
    reuse_plans: bool = True

    prices: PriceTable = PriceTable()
    runs_dir: Path = Path("runs")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        path = _config_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        sources.append(env_settings)
        return tuple(sources)

    @property
    def uses_embedded_llm(self) -> bool:
        return not self.llm_base_url and not (self.llm_model and (self.llm_api_key or self.openai_api_key))


def find_config_file(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"config file not found: {explicit}")
        return explicit
    env = os.environ.get("AUTOANNOTATOR_CONFIG")
    if env:
        if not Path(env).is_file():
            raise UserError(f"AUTOANNOTATOR_CONFIG points at a missing file: {env}")
        return Path(env)
    for candidate in (Path("autoannotator.toml"), Path.home() / ".config" / "autoannotator" / "config.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(overrides: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build Settings from env < config file < ``overrides`` (CLI flags; None values are ignored)."""
    clean = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _config_path.set(find_config_file(config_file))
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"invalid setting {where}: {first['msg']}") from None
    except Exception as exc:  # a malformed TOML file
        raise UserError(f"cannot read configuration: {exc}") from None
    finally:
        _config_path.reset(token)
