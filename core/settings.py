"""One settings object for every component, read from ``HANDIN_*`` variables.

Nested sections are plain models addressed with a double underscore,
e.g. ``HANDIN_STORAGE__BACKEND=s3`` or ``HANDIN_SMTP__HOST=mail``.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.event_loop import EventLoopName

DEV_SECRET = "dev-only-secret-change-me"
# Secrets production refuses: too short, too uniform, or a value from a tutorial.
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT_CHARACTERS = 8
KNOWN_DEFAULT_SECRETS = frozenset({DEV_SECRET, "changeme", "change-me", "secret", "password", "handin"})
VAR_DIR = Path("var")

Component = Literal["all", "api", "router", "worker", "receipt-worker", "autoscaler"]
# What production requires of each process kind (HANDIN_COMPONENT): only what it signs or checks with.
# The api signs sessions, CSRF tokens, tickets and receipts and checks the provider's webhook; the router
# checks tickets and browser origins; workers sign the admin webhook, the receipt worker also receipts;
# the autoscaler reads only the database and Redis, so it runs as production with those alone.
RECEIPT_KEYS = "HANDIN_RECEIPTS__SIGNING_KEYS"
ALL_PRODUCTION_NEEDS = frozenset(
    {
        "HANDIN_SECRET_KEY",
        "HANDIN_ADMIN__SECRET",
        "HANDIN_SIMILARITY__WEBHOOK_SECRET",
        "HANDIN_PUBLIC_URL",
        RECEIPT_KEYS,
    }
)
PRODUCTION_NEEDS: dict[str, frozenset[str]] = {
    "all": ALL_PRODUCTION_NEEDS,
    "api": frozenset({"HANDIN_SECRET_KEY", "HANDIN_SIMILARITY__WEBHOOK_SECRET", "HANDIN_PUBLIC_URL", RECEIPT_KEYS}),
    "router": frozenset({"HANDIN_SECRET_KEY", "HANDIN_PUBLIC_URL"}),
    "worker": frozenset({"HANDIN_ADMIN__SECRET"}),
    "receipt-worker": frozenset({"HANDIN_ADMIN__SECRET", RECEIPT_KEYS}),
    "autoscaler": frozenset(),
}


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
    """The central admin system's webhook; without a URL the step is skipped.

    ``inbound_secret`` signs the messages it sends us (POST /api/admin/messages); unset, that
    endpoint answers 503."""

    url: str | None = None
    secret: str = DEV_SECRET
    timeout_seconds: float = 10.0
    inbound_secret: str = ""
    # An inbound message whose timestamp is further than this from our clock is refused (replays).
    inbound_window_seconds: float = Field(default=300.0, gt=0)


class ReceiptKeySettings(BaseModel):
    """One receipt signing key: ``private_key`` (base64url of the 32-byte Ed25519 seed, or PKCS#8 PEM)
    for the key in use, or only ``public_key`` (base64url, 32 bytes) for a retired one whose secret half
    is destroyed. A retired key has ``valid_until``: receipts it signed before then stay valid."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    private_key: SecretStr | None = None
    public_key: str | None = None
    valid_from: datetime
    valid_until: datetime | None = None

    @model_validator(mode="after")
    def _one_half(self) -> ReceiptKeySettings:
        if self.private_key is None and self.public_key is None:
            raise ValueError(f"receipt key {self.id!r} has neither private_key nor public_key")
        return self


class ReceiptSettings(BaseModel):
    """Signed receipts (docs/receipts-and-thumbnails.md, "Verifiable receipts").

    ``signing_keys`` (JSON, a secret: ``HANDIN_RECEIPTS__SIGNING_KEYS``) or ``signing_key_file`` (the
    same JSON in a file) hold the current key and the retired ones; production requires one of them.
    Development without either generates a key once and keeps it in ``dev_key_file``."""

    # Who signs, as the verify page names it; unset = the public URL's host.
    installation: str | None = None
    signing_keys: list[ReceiptKeySettings] = Field(default_factory=list)
    signing_key_file: Path | None = None
    dev_key_file: Path = VAR_DIR / "receipt-signing-keys.json"

    @property
    def configured(self) -> bool:
        return bool(self.signing_keys) or self.signing_key_file is not None


class SimilaritySettings(BaseModel):
    provider: Literal["builtin", "external"] = "builtin"
    k: int = 25
    # Any shared passage of t = k + window - 1 = 80 normalised characters (about a sentence) is
    # found; ~3.5 % of positions become fingerprints, the index rows each check writes and probes.
    window: int = 56
    # A fingerprint held by more submissions of the assignment than this is boilerplate (the
    # question, a template, a much-quoted source): it counts for no match and not in the score,
    # and the look-up reads no more holders of it, so its cost does not grow with the assignment.
    boilerplate_holders: int = Field(default=20, ge=1)
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
    # arq must see past locked in-progress jobs once pools scale out: above the largest pool
    # cap x max_jobs (similarity 200 x 10).
    queue_read_limit: int = 2500
    # How long a stopping worker lets running jobs finish. Unset: the longest time
    # limit among its task's jobs (workers/base.py), e.g. scan 75 s, similarity 315 s.
    job_completion_wait_seconds: float | None = None
    reconcile_interval_seconds: float = 30.0
    # The reconciler leaves alone what changed this recently: a step committed as
    # queued whose job is being enqueued right now must not be enqueued twice.
    reconcile_grace_seconds: float = 10.0
    # arq's own job timeout sits this far above the runner's, which must fire first.
    # It also bounds how long a killed worker's job stays locked (this + timeout + 10 s).
    job_timeout_margin_seconds: float = 15.0
    # Each worker process serves /healthz and /metrics here (0 disables).
    http_port: int = 9100
    # /healthz answers 503 once the event loop has not turned, or Redis not answered, for this long.
    health_stale_seconds: float = Field(default=30.0, gt=0)
    # "uvloop" (the loop and its sockets in C: ~10 % less CPU per job, docs/performance.md) or
    # "asyncio" (the standard library's loop).
    event_loop: EventLoopName = "uvloop"


class PoolScaling(BaseModel):
    """Bounds and goal for one worker pool, e.g. ``HANDIN_AUTOSCALER__POOLS__SCAN__MAX_REPLICAS=40``.

    The cap is what a deadline may cost at most (max_replicas x the pod's requests); a cap
    below the deadline's need makes jobs queue instead (docs/autoscaling.md, "Pool caps").
    """

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=40, ge=0)
    # How long a job may wait in the queue before the pool should have grown.
    target_wait_seconds: float = Field(default=30.0, gt=0)
    # Jobs/s one replica finishes; unset = learned from the workers' reports (the profile's default until then).
    drain_rate_per_replica: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> PoolScaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class PoolScalingSettings(BaseModel):
    """Caps sized for 30,000 students with 60% in the final hour (docs/autoscaling.md, "Pool caps")."""

    scan: PoolScaling = PoolScaling(max_replicas=20)
    store: PoolScaling = PoolScaling(max_replicas=20)
    similarity: PoolScaling = PoolScaling(max_replicas=200)
    admin: PoolScaling = PoolScaling(max_replicas=20)
    receipt: PoolScaling = PoolScaling(max_replicas=20)
    thumbnail: PoolScaling = PoolScaling(max_replicas=100)


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
    # Share of submissions arriving late (between the deadline and the cut-off), and their time constant.
    late_share: float = Field(default=0.03, ge=0, lt=1)
    late_seconds: float = Field(default=900.0, gt=0)
    # Jobs a cpu-bound worker replica runs usefully at once (its cores); io pools use HANDIN_WORKER__MAX_JOBS.
    cpu_slots: int = Field(default=1, ge=1)
    # Leader election: a Lease (kubernetes) or a Redis lock (local).
    lease_name: str = "handin-autoscaler"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    identity: str | None = None  # unset = hostname and pid
    # Every Kubernetes call gives up after this. A leader stops acting once its last renewal
    # is lease_duration - this old, so its last PATCH ends before a standby may take over.
    kubernetes_timeout_seconds: float = Field(default=5.0, gt=0)
    # Pools it scales; unset = every pipeline task. The chart lists those with scaling: autoscaler.
    tasks: list[str] | None = None
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
    # Most cached authorisation answers kept (least recently used go first).
    authz_cache_entries: int = Field(default=100_000, ge=1)
    # Every open session's subscriptions are re-checked against the database this often, so a
    # right removed straight in the database (an admin-system sync) is gone within this + the cache.
    authz_recheck_seconds: float = Field(default=30.0, gt=0)
    # An authorisation look-up (the database) taking longer is answered with an ERROR and logged.
    authz_timeout_seconds: float = Field(default=5.0, gt=0)
    # Per user on one replica: open WAMP sessions; per session: subscriptions.
    max_sessions_per_user: int = Field(default=20, ge=1)
    max_subscriptions_per_session: int = Field(default=200, ge=1)
    # Browser origins allowed to open a WebSocket; empty = the origin of HANDIN_PUBLIC_URL.
    allowed_origins: list[str] = Field(default_factory=list)
    shutdown_grace_seconds: float = 5.0
    # Connections accepted and not yet welcomed (accept to WELCOME); past it the router stops
    # accepting and later arrivals wait in the kernel's listen queue, so a reconnect storm is taken
    # at the rate the router serves, in arrival order, at no cost per waiting browser.
    max_handshakes_in_flight: int = Field(default=1000, ge=1)
    # ABORT details.retry_after when the ticket check's backend (Redis, the database) is unavailable.
    busy_retry_after_seconds: int = Field(default=2, ge=1)
    # "uvloop" (sockets handled in C) or "asyncio" (the standard library's loop).
    event_loop: EventLoopName = "uvloop"


class ChatSettings(BaseModel):
    """Class chat on ``course.<id>``, e.g. ``HANDIN_CHAT__MAX_MESSAGE_BYTES=2048``."""

    max_message_bytes: int = Field(default=4096, ge=1)
    # Messages per user per window, counted in Redis so the limit holds across router replicas.
    rate_limit_messages: int = Field(default=10, ge=1)
    rate_limit_window_seconds: float = Field(default=30.0, gt=0)
    # Chat messages older than this are pruned by the maintenance worker.
    retention_days: float = Field(default=30.0, gt=0)
    # One catch-up page of any topic carries at most this many bytes of events.
    catch_up_max_bytes: int = Field(default=256 * 1024, ge=1024)


def weak_secret(value: str) -> str | None:
    """Why a production secret is too weak to sign sessions and webhooks with, or None."""
    if value.strip().lower() in KNOWN_DEFAULT_SECRETS or DEV_SECRET in value:
        return "a known default"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{len(value)} characters, at least {MIN_SECRET_LENGTH} needed"
    if len(set(value)) < MIN_SECRET_DISTINCT_CHARACTERS:
        return f"only {len(set(value))} distinct characters; generate one with `openssl rand -base64 48`"
    return None


class SecuritySettings(BaseModel):
    """The api's defences against forged requests and cheap denial of service (docs/api.md)."""

    # Bodies of every route but the upload (whose limit is the assignment's, below max_upload_bytes).
    max_body_bytes: int = 64 * 1024
    # The similarity provider's signed report.
    max_webhook_body_bytes: int = 1024 * 1024
    # Login throttling: this many failures per account or per client address within the window
    # lock that account or address out for the lockout time (a right password is refused too).
    login_max_failures_per_account: int = Field(default=10, ge=1)
    login_max_failures_per_address: int = Field(default=50, ge=1)
    login_window_seconds: float = Field(default=900.0, gt=0)
    login_lockout_seconds: float = Field(default=900.0, gt=0)
    # /metrics and the API docs are served here, never on the public port (0 = nowhere).
    internal_port: int = 9102
    # Where the internal listener binds (the pod's address, reached by Prometheus, not the Ingress).
    internal_host: str = "0.0.0.0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HANDIN_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production"] = "development"
    # Which process reads these settings: production requires of it only what it uses
    # (PRODUCTION_NEEDS); "all" (a process of unknown kind, the migrations, `make run`) everything.
    component: Component = "all"
    secret_key: str = DEV_SECRET
    database_url: str = f"sqlite+aiosqlite:///{VAR_DIR}/handin.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    public_url: str = "http://127.0.0.1:8000"
    router_url: str = "ws://127.0.0.1:8080/ws"
    session_max_age_seconds: int = 12 * 3600
    ws_ticket_ttl_seconds: int = 60
    max_upload_bytes: int = 50 * 1024 * 1024
    # How long the api keeps an idle HTTP connection open. Longer than the proxies in front of it
    # keep theirs (ingress-nginx and cloud load balancers: 60 s), so a proxy never sends a request
    # on a connection the api is closing at that moment: a POST (an upload) lost that way is
    # answered 502 and is not retried by the proxy.
    http_keep_alive_seconds: int = Field(default=75, ge=1)
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
    chat: ChatSettings = Field(default_factory=ChatSettings)
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    receipts: ReceiptSettings = Field(default_factory=ReceiptSettings)

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        needs = PRODUCTION_NEEDS.get(self.component, ALL_PRODUCTION_NEEDS)
        secrets = [
            (name, value)
            for name, value in (
                ("HANDIN_SECRET_KEY", self.secret_key),
                ("HANDIN_ADMIN__SECRET", self.admin.secret),
                ("HANDIN_SIMILARITY__WEBHOOK_SECRET", self.similarity.webhook_secret),
            )
            if name in needs
        ]
        if RECEIPT_KEYS in needs and not self.receipts.configured:
            # Without it receipts would fail one by one at signing; refuse at start instead.
            raise ValueError(f"set {RECEIPT_KEYS} (or HANDIN_RECEIPTS__SIGNING_KEY_FILE) in production")
        if self.admin.inbound_secret and self.component in ("all", "api"):
            # Optional (messages from the admin system are off without it), but never weak when set.
            secrets.append(("HANDIN_ADMIN__INBOUND_SECRET", self.admin.inbound_secret))
        defaults = [name for name, value in secrets if value == DEV_SECRET]
        if defaults:
            raise ValueError(f"set real secrets in production: {', '.join(defaults)}")
        weak = [f"{name} ({reason})" for name, value in secrets if (reason := weak_secret(value))]
        if weak:
            raise ValueError(f"weak secrets in production: {'; '.join(weak)}")
        if "HANDIN_PUBLIC_URL" in needs and not self.public_url.startswith("https://"):
            raise ValueError(
                f"HANDIN_PUBLIC_URL must be https:// in production (so the session cookie is Secure), "
                f"not {self.public_url!r}"
            )
        return self

    def retry_policy(self, task: str) -> RetryPolicy:
        policy = getattr(self.retries, task, None)
        return policy if isinstance(policy, RetryPolicy) else RetryPolicy()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
