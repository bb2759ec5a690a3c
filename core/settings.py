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
        return min(self.max_delay_seconds, self.delay_seconds * 2.0 ** max(0, attempt - 1))


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
    # The reconciler leaves alone what changed this recently: a step committed as
    # queued whose job is being enqueued right now must not be enqueued twice.
    reconcile_grace_seconds: float = 10.0
    # arq's own job timeout sits this far above the runner's, which must fire first.
    # It also bounds how long a killed worker's job stays locked (this + timeout + 10 s).
    job_timeout_margin_seconds: float = 15.0
    # Each worker process serves /healthz and /metrics here (0 disables).
    http_port: int = 9100


class PoolScaling(BaseModel):
    """Bounds and goal for one worker pool, e.g. ``HANDIN_AUTOSCALER__POOLS__SCAN__MAX_REPLICAS=40``."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=20, ge=0)
    # How long a job may wait in the queue before the pool should have grown.
    target_wait_seconds: float = Field(default=30.0, gt=0)
    # Jobs/s one replica finishes; unset = the profile's default until measured.
    drain_rate_per_replica: float | None = None


class PoolScalingSettings(BaseModel):
    scan: PoolScaling = PoolScaling()
    store: PoolScaling = PoolScaling()
    similarity: PoolScaling = PoolScaling()
    admin: PoolScaling = PoolScaling()
    receipt: PoolScaling = PoolScaling()
    thumbnail: PoolScaling = PoolScaling()


class AutoscalerSettings(BaseModel):
    """The autoscaler (docs/autoscaling.md); e.g. ``HANDIN_AUTOSCALER__BACKEND=kubernetes``."""

    backend: Literal["kubernetes", "local"] = "local"
    # Kubernetes: Deployments are named f"{deployment_prefix}{task}", e.g. "handin-worker-scan".
    namespace: str = "default"
    deployment_prefix: str = "handin-worker-"
    interval_seconds: float = Field(default=5.0, gt=0)
    # Pods take this long from scale-up to taking jobs; capacity is requested `lead_seconds` ahead.
    pod_start_seconds: float = Field(default=60.0, ge=0)
    lead_seconds: float | None = None  # unset = pod start + one interval
    horizon_hours: float = Field(default=48.0, gt=0)
    scale_down_window_seconds: float = Field(default=60.0, ge=0)
    max_scale_up_step: int = Field(default=100, ge=1)
    max_scale_down_step: int = Field(default=100, ge=1)
    # Spare capacity above an arrival rate: headroom x load + burst_factor x sqrt(load) replicas.
    headroom: float = Field(default=0.10, ge=0)
    burst_factor: float = Field(default=1.0, ge=0)
    # Jobs/s one replica drains by profile, until a pool's own rate is measured.
    default_drain_rate_io: float = Field(default=20.0, gt=0)
    default_drain_rate_cpu: float = Field(default=1.0, gt=0)
    # The expected arrival curve before a deadline.
    final_day_share: float = Field(default=0.86, gt=0, le=1)
    final_hour_share: float = Field(default=0.40, gt=0, le=1)
    surge_seconds: float = Field(default=600.0, gt=0)
    # Share of enrolled students expected to submit at all.
    submit_share: float = Field(default=0.95, gt=0, le=1)
    # Leader election: a Lease (kubernetes) or a Redis lock (local).
    lease_name: str = "handin-autoscaler"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    identity: str | None = None  # unset = hostname and pid
    # /healthz and /metrics of the autoscaler process (0 disables).
    http_port: int = 9101
    pools: PoolScalingSettings = Field(default_factory=PoolScalingSettings)

    @property
    def lead(self) -> float:
        return self.lead_seconds if self.lead_seconds is not None else self.pod_start_seconds + self.interval_seconds

    def pool(self, task: str) -> PoolScaling:
        scaling = getattr(self.pools, task, None)
        return scaling if isinstance(scaling, PoolScaling) else PoolScaling()


class RouterSettings(BaseModel):
    """The WAMP router's limits, e.g. ``HANDIN_ROUTER__SEND_BUFFER_LIMIT_BYTES``."""

    max_message_bytes: int = 64 * 1024
    ping_interval_seconds: float = 20.0
    ping_timeout_seconds: float = 20.0
    # HELLO through WELCOME must finish within this, or the socket is closed.
    handshake_timeout_seconds: float = 10.0
    # A subscriber whose unsent backlog passes this is disconnected (slow consumer).
    send_buffer_limit_bytes: int = 1024 * 1024
    authz_cache_seconds: float = 10.0
    shutdown_grace_seconds: float = 5.0


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
    router: RouterSettings = Field(default_factory=RouterSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)

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
