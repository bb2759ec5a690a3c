"""One settings object for every component, read from ``HANDIN_*`` variables.

Nested sections are plain models addressed with a double underscore,
e.g. ``HANDIN_STORAGE__BACKEND=s3`` or ``HANDIN_SMTP__HOST=mail``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"
VAR_DIR = Path("var")


class StorageSettings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    # Uploads land here first; only the store step moves them to `root`.
    incoming_dir: Path = VAR_DIR / "incoming"
    root: Path = VAR_DIR / "store"
    quarantine_dir: Path = VAR_DIR / "quarantine"
    # Rendered previews; unset means a "thumbnails" folder next to `root`.
    thumbnails_dir: Path | None = None
    s3_bucket: str = "handin"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None


class ScannerSettings(BaseModel):
    """clamd address; with neither host nor socket the scan step is skipped."""

    clamd_host: str | None = None
    clamd_port: int = 3310
    clamd_socket: str | None = None
    timeout_seconds: float = 30.0

    @property
    def configured(self) -> bool:
        return bool(self.clamd_host or self.clamd_socket)


class SmtpSettings(BaseModel):
    """Without a host, receipts are written to `outbox_dir` as .eml files."""

    host: str | None = None
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    sender: str = "handin <no-reply@handin.local>"
    outbox_dir: Path = VAR_DIR / "outbox"
    timeout_seconds: float = 10.0


class AdminSettings(BaseModel):
    """The central admin system's webhook; without a URL the step is skipped."""

    url: str | None = None
    secret: str = DEV_SECRET
    timeout_seconds: float = 10.0


class SimilaritySettings(BaseModel):
    provider: Literal["builtin", "external"] = "builtin"
    k: int = 25
    window: int = 20
    external_url: str | None = None
    external_api_key: str = ""
    webhook_secret: str = DEV_SECRET
    poll_interval_seconds: float = 60.0
    max_polls: int = 60


class RetryPolicy(BaseModel):
    """How a task retries transient failures: fixed or exponential with a cap."""

    max_tries: int = 5
    kind: Literal["fixed", "exponential"] = "exponential"
    delay_seconds: float = 2.0
    max_delay_seconds: float = 300.0
    timeout_seconds: float = 120.0

    def delay(self, attempt: int) -> float:
        if self.kind == "fixed":
            return self.delay_seconds
        return min(self.max_delay_seconds, self.delay_seconds * 2 ** max(0, attempt - 1))


class RetrySettings(BaseModel):
    """One policy per task, e.g. ``HANDIN_RETRIES__ADMIN__MAX_TRIES=3``."""

    scan: RetryPolicy = RetryPolicy(timeout_seconds=60)
    store: RetryPolicy = RetryPolicy(timeout_seconds=120)
    similarity: RetryPolicy = RetryPolicy(timeout_seconds=300)
    admin: RetryPolicy = RetryPolicy(max_tries=8, timeout_seconds=30)
    receipt: RetryPolicy = RetryPolicy(max_tries=8, timeout_seconds=30)
    thumbnail: RetryPolicy = RetryPolicy(max_tries=3, timeout_seconds=60)
    reconcile: RetryPolicy = RetryPolicy(max_tries=1, timeout_seconds=120)


class WorkerSettingsSection(BaseModel):
    max_jobs: int = 10
    poll_delay_seconds: float = 0.05
    # arq must see past locked in-progress jobs once pools scale out.
    queue_read_limit: int = 1000
    job_completion_wait_seconds: float = 25.0
    reconcile_interval_seconds: float = 30.0
    # Each worker process serves /healthz and /metrics here (0 disables).
    http_port: int = 9100


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HANDIN_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    secret_key: str = DEV_SECRET
    database_url: str = f"sqlite+aiosqlite:///{VAR_DIR}/handin.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    public_url: str = "http://127.0.0.1:8000"
    router_url: str = "ws://127.0.0.1:8080/ws"
    session_max_age_seconds: int = 12 * 3600
    ws_ticket_ttl_seconds: int = 60
    max_upload_bytes: int = 50 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = True

    storage: StorageSettings = Field(default_factory=StorageSettings)
    scanner: ScannerSettings = Field(default_factory=ScannerSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    similarity: SimilaritySettings = Field(default_factory=SimilaritySettings)
    retries: RetrySettings = Field(default_factory=RetrySettings)
    worker: WorkerSettingsSection = Field(default_factory=WorkerSettingsSection)

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.environment == "production":
            defaults = [
                name
                for name, value in (
                    ("HANDIN_SECRET_KEY", self.secret_key),
                    ("HANDIN_ADMIN__SECRET", self.admin.secret),
                    ("HANDIN_SIMILARITY__WEBHOOK_SECRET", self.similarity.webhook_secret),
                )
                if value == DEV_SECRET
            ]
            if defaults:
                raise ValueError(f"set real secrets in production: {', '.join(defaults)}")
        return self

    def retry_policy(self, task: str) -> RetryPolicy:
        policy = getattr(self.retries, task, None)
        return policy if isinstance(policy, RetryPolicy) else RetryPolicy()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
