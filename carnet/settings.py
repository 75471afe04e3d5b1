"""Settings from CARNET_* environment variables.

CARNET_ENV is `production` when unset. Only `demo` and `test` unlock what exercises need
(the movable clock, minting a session for the red-team simulator, TOTP for seeded privileged
accounts); production refuses them.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError


class Environment(StrEnum):
    PRODUCTION = "production"
    DEMO = "demo"
    TEST = "test"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARNET_", extra="ignore")

    env: Environment = Environment.PRODUCTION
    var_dir: Path = Path("var")
    database_url: str = ""
    key_file: Path | None = None
    redis_url: str | None = None
    nats_url: str | None = None
    audit_checkpoint_file: Path | None = None
    audit_signing_key_file: Path | None = None
    # The RSA key that signs OpenID Connect id_tokens for SMART apps (created on first use).
    oidc_signing_key_file: Path | None = None
    audit_checkpoint_every: int = Field(default=1000, ge=1)
    # A signed checkpoint also follows any committed event within this many seconds.
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0)
    audit_nats_stream: str = Field(default="CARNET_AUDIT", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # The legal minimum retention of audit events; `carnet audit purge` refuses anything younger.
    audit_retention_years: int = Field(default=6, ge=1, le=100)
    origin: str = "http://localhost:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    # Requests one worker process runs at once (the rest wait in its event loop). Few threads keep
    # the GIL from starving a request that holds the audit chain's lock until its commit. At 64
    # clients on 2 cores and 2 workers, 4 served 15% more guarded reads than 8, with p99 ~300 ms
    # instead of ~500 ms (less CPU per read lost to GIL hand-offs); 2 and 3 did no better than 4.
    request_threads: int = Field(default=4, ge=1, le=200)
    # How often each server sweeps asynchronous exports (stuck jobs failed, unclaimed files
    # erased: carnet.phi.sweep); 0 turns the timer off (then run `carnet exports sweep` by cron).
    export_sweep_seconds: float = Field(default=600.0, ge=0)
    # /metrics answers only with `Authorization: Bearer <this>` outside demo and test.
    metrics_token: str | None = None
    # Where traces go: unset (none kept), `console`, or `otlp` (with its exporter installed).
    otel_exporter: str | None = None
    # `json` (one object per line, for the log pipeline) or `text` (a developer's terminal).
    log_format: str = Field(default="json", pattern=r"^(json|text)$")
    # On SIGTERM, how long in-flight requests may run before the server stops anyway.
    shutdown_grace_seconds: int = Field(default=30, gt=0)
    # A security officer's contact, shown to a contained account.
    security_contact: str = "the hospital security office"

    @property
    def exercise_mode(self) -> bool:
        """True in demo and test: the modes in which simulations and movable clocks are allowed."""
        return self.env in (Environment.DEMO, Environment.TEST)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.var_dir / 'carnet.db'}"

    @property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.var_dir / "keys.json"

    @property
    def resolved_checkpoint_file(self) -> Path:
        return self.audit_checkpoint_file or self.var_dir / "audit-checkpoints.jsonl"

    @property
    def resolved_signing_key_file(self) -> Path:
        return self.audit_signing_key_file or self.var_dir / "audit-signing-key.pem"

    @property
    def resolved_oidc_key_file(self) -> Path:
        return self.oidc_signing_key_file or self.var_dir / "oidc-signing-key.pem"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def install_movable_clock(settings: Settings) -> clock.MovableClock:
    """Install a movable clock; refused in production so time cannot be forged there."""
    if not settings.exercise_mode:
        raise ConfigurationError("a movable clock is only available when CARNET_ENV is demo or test")
    movable = clock.MovableClock()
    clock.install(movable)
    return movable
