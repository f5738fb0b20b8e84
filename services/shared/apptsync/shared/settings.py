"""Every setting of every apptsync process, read from an environment mapping (the only module that does).

Each group has its own prefix, e.g. `APPTSYNC_DATABASE_URL`. `Group.from_environment(environ)` reads a
group from the mapping it is given (the CLI passes `os.environ`; nothing else reads the process's
environment); `Group(field=...)` takes explicit values only, the defaults for the rest.
`all_settings_fields()` lists every variable with its default, for the README's configuration table
(a unit test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from apptsync.shared.errors import InvalidArgumentError


class _MappingEnvironment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


class SettingsGroup(BaseSettings):
    """A group of settings sharing one prefix: explicit values, else `from_environment`'s mapping."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: the environment comes in through from_environment, never implicitly.
        return (init_settings,)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Self:
        """The group as `environ` (e.g. `os.environ`, or a test's dict) sets it; defaults for the rest.
        Raises pydantic's ValidationError for a malformed value (InvalidArgumentError where a
        validator says so)."""
        return cls(**_MappingEnvironment(cls, environ)())


class DatabaseSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_DATABASE_", extra="ignore")

    url: SecretStr = Field(
        SecretStr("postgresql://apptsync@127.0.0.1:5432/apptsync"),
        description="PostgreSQL DSN the services connect with.",
    )
    pool_min_size: int = Field(1, ge=0, description="Connections each process keeps open.")
    pool_max_size: int = Field(8, ge=1, description="Upper bound of each process's connection pool.")
    command_timeout_seconds: float = Field(30.0, gt=0, description="Per-statement timeout.")
    url_file: str = Field(
        "", description="File holding the DSN (overrides URL; e.g. a mounted Secret: no password in the environment)."
    )
    migration_url: SecretStr = Field(
        SecretStr(""),
        description="DSN `apptsync migrate` connects with: the role owning the tables (services connect as a "
        "member of apptsync_service, which does not); empty = URL.",
    )

    @model_validator(mode="after")
    def _read_url_file(self) -> DatabaseSettings:
        """Replaces `url` by the content of `url_file` when one is named. Raises OSError when it cannot be read."""
        if self.url_file:
            self.url = SecretStr(Path(self.url_file).read_text("utf-8").strip())
        return self

    def for_migrations(self) -> DatabaseSettings:
        """These settings with `migration_url` (when set) as the DSN: what `apptsync migrate` uses."""
        if not self.migration_url.get_secret_value():
            return self
        return self.model_copy(update={"url": self.migration_url})


class KafkaSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers.")
    pages_topic: str = Field("apptsync.pages", description="Topic of AppointmentPage messages (key: job id).")
    page_results_topic: str = Field("apptsync.page-results", description="Topic of PageResult messages.")
    dead_letter_topic: str = Field("apptsync.dead-letters", description="Pages or records the writer cannot store.")
    job_events_topic: str = Field("apptsync.job-events", description="JobFinished events for downstream consumers.")
    change_events_topic: str = Field(
        "apptsync.appointment-changes",
        description="AppointmentChange events for downstream consumers (key: tenant/source/external id).",
    )
    topic_partitions: int = Field(4, ge=1, description="Partitions of topics apptsync creates itself.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replication factor of topics apptsync creates itself (3 on a production cluster)."
    )
    enable_idempotence: bool = Field(
        False, description="Idempotent producer; on for Apache Kafka, off for the Tansu test broker."
    )
    compression_type: Literal["none", "zstd", "lz4", "gzip"] = Field(
        "zstd", description="Producer compression of pages and results (internal topics)."
    )
    downstream_compression_type: Literal["none", "gzip"] = Field(
        "gzip",
        description="Producer compression of the topics downstream services read (job events, change events): "
        "gzip or none, codecs every Kafka client has built in (kafkajs reads no zstd without a plugin).",
    )
    # 6 s is the shortest session a stock Apache Kafka broker accepts (group.min.session.timeout.ms):
    # a writer killed without leaving its group holds its partitions that long before a restarted
    # one (without a static group instance id) can take them over.
    session_timeout_ms: int = Field(6_000, ge=500, description="Consumer-group session timeout.")
    heartbeat_interval_ms: int = Field(
        1_000, ge=100, description="Consumer-group heartbeat interval (at most a third of the session timeout)."
    )
    request_timeout_ms: int = Field(30_000, ge=1000, description="Broker request timeout.")
    fetch_max_wait_ms: int = Field(
        50, ge=0, le=5_000, description="Longest a consumer's fetch waits at the broker for data (latency vs requests)."
    )
    writer_group_id: str = Field("apptsync-writer", description="Consumer group of the writers.")
    writer_group_instance_id: str = Field(
        "",
        description=(
            "Static group membership of this writer: a writer restarted with the same id takes its "
            "partitions back at once instead of after the killed member's session timeout. Unique "
            "per running writer (e.g. its pod name); empty: dynamic membership."
        ),
    )


class CredentialSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_CREDENTIALS_", extra="ignore")

    keyring: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated `key_id:base64(32 bytes)` AES-GCM keys, newest first; "
        "the first encrypts, all decrypt.",
    )
    keyring_file: str = Field("", description="File holding the keyring (overrides KEYRING; e.g. a mounted Secret).")


class GatewaySettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_GATEWAY_", extra="ignore")

    listen_address: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds.")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted.")
    auth_tokens_file: str = Field(
        "", description="JSON file of bearer tokens (sha256) and the tenants each may act for; see README."
    )
    allow_unauthenticated: bool = Field(
        False, description="Accept calls without a token (local development only); otherwise a tokens file is required."
    )
    tls_cert_file: str = Field("", description="PEM server certificate; empty serves plaintext.")
    tls_key_file: str = Field("", description="PEM private key of the server certificate.")
    tls_client_ca_file: str = Field(
        "", description="PEM CA bundle; when set, clients must present a certificate (mTLS)."
    )
    health_address: str = Field(
        "127.0.0.1:0",
        description="host:port of a plaintext server answering only gRPC health (for probes that cannot "
        "speak TLS, e.g. the kubelet's); port 0 disables.",
    )
    default_window_days: int = Field(365, ge=1, description="Window length when StartImport gives none.")
    max_window_days: int = Field(3 * 366, ge=1, description="Longest window StartImport accepts.")
    default_page_size: int = Field(100, ge=1, description="Records per provider page.")
    default_max_pages: int = Field(100_000, ge=1, description="Page cap of a job.")
    default_max_in_flight_pages: int = Field(8, ge=1, description="Pages a job may have without a result.")
    default_stop_after_pages: int = Field(1, ge=1, description="Consecutive no-news pages that stop a job.")
    default_deadline_seconds: float = Field(3600.0, gt=0, description="Wall-clock budget of a job.")
    credential_probe_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How long PutConnection waits for each provider request that verifies the credentials "
        "before it answers UNAVAILABLE.",
    )
    metrics_host: str = Field("127.0.0.1", description="Interface the Prometheus /metrics endpoint binds.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables.")


class WebhookSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_WEBHOOK_", extra="ignore")

    public_base_url: str = Field(
        "",
        description="https URL under which the internet reaches the webhook receiver (its Ingress), e.g. "
        "https://hooks.example.com; PutConnection subscribes each connection to provider notifications at "
        "<this>/webhooks/<source>/<token>. Empty: no subscriptions, polling only.",
    )
    listen_address: str = Field("127.0.0.1:8720", description="host:port the webhook receiver's HTTP server binds.")
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, le=1024 * 1024, description="Largest notification body accepted (larger: 413, unread)."
    )
    calendly_tolerance_seconds: float = Field(
        180.0, gt=0, le=3600, description="A Calendly notification signed longer ago than this is a replay (403)."
    )
    google_channel_seconds: int = Field(
        7 * 24 * 3600, ge=3600, description="Lifetime asked for a Google Calendar push channel (Google may shorten it)."
    )
    renew_before_seconds: int = Field(
        24 * 3600, ge=60, description="Google channels expiring within this are replaced by `renew-subscriptions`."
    )
    metrics_host: str = Field("127.0.0.1", description="Interface the Prometheus /metrics endpoint binds.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables.")


class FetcherSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_FETCHER_", extra="ignore")

    worker_id: str = Field("", description="Lease owner name; empty means hostname-pid.")
    max_concurrent_jobs: int = Field(
        4,
        ge=1,
        description="Jobs one fetcher process runs doing work at once; a job waiting for a provider (its rate window, "
        "budgets or answer; a Retry-After or backoff of a second or more) lends its slot to another job meanwhile.",
    )
    max_open_jobs: int = Field(
        32,
        ge=1,
        description="Jobs one fetcher process holds claimed at once, doing work or waiting for a provider's rate "
        "window (at least MAX_CONCURRENT_JOBS); bounds the memory of waiting jobs (one provider page each).",
    )
    max_running_jobs_per_tenant: int = Field(
        4,
        ge=1,
        description="Jobs of one tenant running at once across every fetcher; claims skip a tenant at this "
        "cap and prefer the tenant with the fewest running jobs. Give every fetcher the same value.",
    )
    lease_seconds: float = Field(30.0, gt=0, description="A claimed job is resumed elsewhere after this.")
    poll_interval_seconds: float = Field(2.0, gt=0, description="Fallback poll for queued jobs.")
    http_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one provider HTTP request.")
    result_timeout_seconds: float = Field(
        120.0, gt=0, description="How long a job waits for a page's result before failing."
    )
    freshness_horizon_days: int = Field(
        14,
        ge=0,
        le=366,
        description="Days ahead (from a day ago) every Acuity or Calendly job walks first and completely, "
        "whatever its stop policy: an early-stopping sync never misses a new booking, reschedule or "
        "cancellation there. 0 = no near term (newest first).",
    )
    shared_budget_providers: str = Field(
        "acuity",
        description="Providers (comma-separated) whose request rate and concurrency budget every fetcher "
        "with the same SHARED_BUDGET_KEY draws from together, kept in PostgreSQL; empty = per process only.",
    )
    shared_budget_key: str = Field(
        "default",
        min_length=1,
        description="Name of the egress IP the fetcher's provider requests leave from: fetchers with the same "
        "key share one budget per provider (Acuity limits requests per source IP).",
    )
    health_address: str = Field("127.0.0.1:0", description="host:port of the gRPC health server; port 0 disables.")
    metrics_host: str = Field("127.0.0.1", description="Interface the Prometheus /metrics endpoint binds.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables.")


class OutboundSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_OUTBOUND_", extra="ignore")

    allowed_origins: str = Field(
        "",
        description="Comma-separated origins (scheme://host:port) the gateway accepts in a connection's base_url "
        "or token_url and the fetcher calls, besides the providers' own https hosts: only a provider simulator's "
        "(dev stack, tests). Empty in production.",
    )


class WriterSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_WRITER_", extra="ignore")

    max_batch_pages: int = Field(8, ge=1, description="Consecutive pages applied in one transaction.")
    health_address: str = Field("127.0.0.1:0", description="host:port of the gRPC health server; port 0 disables.")
    change_relay_batch_size: int = Field(
        500, ge=1, le=10_000, description="Change events the relay publishes per transaction (one outbox shard)."
    )
    change_relay_poll_interval_seconds: float = Field(
        0.5,
        gt=0,
        description="How often the change relay looks for changes committed by other processes (this writer's "
        "own commits wake it at once).",
    )
    change_relay_drain_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long the change relay goes on publishing pending changes."
    )
    metrics_host: str = Field("127.0.0.1", description="Interface the Prometheus /metrics endpoint binds.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 disables.")


class SimulatorSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_SIMULATOR_", extra="ignore")

    listen_address: str = Field("127.0.0.1:8710", description="host:port the provider simulator binds.")
    seed: int = Field(42, description="Seed of the simulator's deterministic data set.")
    appointments_per_tenant: int = Field(250, ge=0, description="Seeded appointments per simulated account.")
    accounts_per_provider: int = Field(
        3,
        ge=1,
        le=9,
        description="Seeded accounts per simulated provider (Acuity user ids 1001, 1002, ...; see apptsync.simulator).",
    )
    anchor_date: date | None = Field(
        None, description="Day (YYYY-MM-DD) the seeded appointments are spread around (+-180 days); empty = today, UTC."
    )
    seeded_providers: str = Field(
        "acuity,calendly,google",
        description="Providers whose accounts are seeded (comma-separated); the others' accounts start empty "
        "(e.g. a one-provider benchmark of 1,000,000 appointments).",
    )
    acuity_spread_days: int = Field(
        180, ge=0, le=3650, description="Seeded Acuity appointments start within +-N days of the anchor date."
    )
    acuity_paid_share: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Share of the seeded Acuity appointments (the legacy account aside) paid at booking; each "
        "makes the fetcher ask for its payment list (the legacy tenant's share was ~0.05).",
    )
    legacy_acuity_account: bool = Field(
        True,
        description="Also seed the legacy-shaped Acuity account 1100 (650 clients, 2,000 appointments within "
        "+-85 days of now, 99 of them ahead, 17 paying contacts, $5,856.00 of revenue; see apptsync.simulator).",
    )


class RetentionSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_RETENTION_", extra="ignore")

    raw_payload_days: int = Field(
        30,
        ge=1,
        description="`apptsync prune` empties (to {}) the raw provider payload of appointments not changed for "
        "this many days; the row's columns and content hash stay.",
    )
    ledger_days: int = Field(
        30,
        ge=8,
        description="`apptsync prune` deletes the page ledger, dead-letter records and import jobs finished this "
        "many days ago (keeping each connection's latest finished and latest succeeded job); at least the "
        "pages topic's retention (7 days) plus one, so no page of a pruned job is still delivered.",
    )
    batch_rows: int = Field(1000, ge=1, le=100_000, description="Rows one prune transaction reads or deletes at most.")
    max_seconds: float = Field(
        1800.0, gt=0, description="Time budget of one `apptsync prune` run; the next run continues where it stopped."
    )


class CliSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="APPTSYNC_CLI_", extra="ignore")

    gateway_address: str = Field("127.0.0.1:50051", description="Gateway the client commands call.")
    token: SecretStr = Field(SecretStr(""), description="Bearer token the client commands send (empty: none).")
    token_file: str = Field("", description="File holding the bearer token (overrides TOKEN; e.g. a mounted Secret).")
    tls_ca_file: str = Field(
        "",
        description="PEM CA bundle the gateway's certificate must chain to; set, the client commands speak TLS. "
        "All three TLS settings empty: plaintext.",
    )
    tls_cert_file: str = Field(
        "", description="PEM client certificate (chain) for mutual TLS; needs TLS_KEY_FILE and TLS_CA_FILE."
    )
    tls_key_file: str = Field("", description="PEM private key of the client certificate (mutual TLS).")
    log_level: str = Field("INFO", description="Log level of every apptsync process.")

    @model_validator(mode="after")
    def _read_token_file(self) -> CliSettings:
        """Replaces `token` by the content of `token_file` when one is named. Raises InvalidArgumentError
        naming the setting when the file cannot be read (the CLI reports it as a mistake, not a crash)."""
        if self.token_file:
            try:
                text = Path(self.token_file).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise InvalidArgumentError(
                    "APPTSYNC_CLI_TOKEN_FILE", f"cannot read {self.token_file}: {reason}"
                ) from exc
            self.token = SecretStr(text.strip())
        return self


SETTINGS_GROUPS: tuple[type[BaseSettings], ...] = (
    DatabaseSettings,
    KafkaSettings,
    CredentialSettings,
    GatewaySettings,
    WebhookSettings,
    FetcherSettings,
    OutboundSettings,
    WriterSettings,
    SimulatorSettings,
    RetentionSettings,
    CliSettings,
)


def all_settings_fields() -> Iterator[tuple[str, str, str]]:
    """Yields (ENVIRONMENT_VARIABLE, default as text, description) for every setting."""
    for group in SETTINGS_GROUPS:
        prefix = str(group.model_config.get("env_prefix", ""))
        for name, info in group.model_fields.items():
            default = info.default
            if isinstance(default, SecretStr):
                default = default.get_secret_value()
            yield (prefix + name).upper(), str(default), info.description or ""
