"""Settings read once from SANDBOX_* variables and validated at start-up."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.domain.egress import EgressPolicy, IPAddress, parse_host_map
from sandbox.domain.lifecycle.sandboxes import LifecyclePolicy
from sandbox.domain.model import Limits
from sandbox.domain.packages import PackagePolicy
from sandbox.domain.pool_profiles import PoolProfile, parse_modules, parse_pool

# gVisor's platforms in runsc 20240729 (kvm needs /dev/kvm, which these machines lack).
PLATFORMS = ("systrap", "ptrace", "kvm")


class SettingsError(ValueError):
    pass


MIN_TOKEN_CHARS = 16
CHECKPOINT_COMPRESSIONS = ("none", "flate-best-speed")
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def default_instance_id() -> str:
    """The host's name (as logs show it) and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:50].strip(".-_")
    return f"{host or 'instance'}-{secrets.token_hex(4)}"


def default_memory_budget_mb() -> int:
    """75% of the host's memory (MemTotal), leaving the rest to the server and the system."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.75) // (1024 * 1024)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Every default of the service is written here and nowhere else: the limits a request
    gets (`default_limits`) and the lifecycle policy (`lifecycle_policy`) are derived."""

    host: str = "127.0.0.1"
    port: int = 8080
    # SANDBOX_API_TOKENS: comma-separated bearer tokens. Only their SHA-256 digests are kept
    # (in api_token_digests), so the tokens appear in no repr, log line or memory dump.
    api_tokens: InitVar[str] = ""
    api_token_digests: tuple[bytes, ...] = field(default=(), repr=False,
                                                 metadata={"from_env": False})
    # Without tokens, only a loopback host is served, unless something in front (Cloud Run
    # IAM, an authenticating proxy) checks every request: then set this.
    allow_unauthenticated: bool = False
    # Host names the server answers to besides its loopback names and SANDBOX_HOST (so that a
    # web page cannot reach it under a name of its own, by DNS rebinding): comma-separated,
    # without ports; `*` answers to any name (behind Cloud Run, whose host is the service URL).
    allowed_hosts: str = ""
    # Web origins (scheme://host[:port]) whose pages may call the API; empty: none.
    cors_origins: str = ""
    # Passed to uvicorn as limit_concurrency: connections beyond it are answered 503.
    max_connections: int = 256
    runtime: str = "runsc"
    state_dir: Path = Path("/var/lib/gvisor-sandbox/state")
    rootfs_dir: Path = Path("/var/lib/gvisor-sandbox/rootfs")
    # Where checkpoint images go; a bucket mounted as a folder on Cloud Run. Default:
    # STATE_DIR/checkpoints.
    checkpoint_dir: Path | None = None
    # Where template images go. Default: STATE_DIR/templates.
    template_dir: Path | None = None
    runsc_path: str = "runsc"
    runsc_platform: str = "systrap"
    # How runsc writes checkpoint images: `none` (fastest here) or `flate-best-speed`
    # (smaller images, for a slow disk or a bucket).
    checkpoint_compression: str = "none"
    # The platform of long-lived sessions, which mostly wait: measured here, an idle sandbox
    # costs 2.1% of a core on systrap and 0.06% on ptrace, and a fork (a zygote's exec) is
    # faster on ptrace; scripts (one-shot, detached, warm pools) keep runsc_platform.
    session_platform: str = "ptrace"
    # Empty: one parent per state folder, gvisor-sandbox-<random>, named at its first start in
    # STATE_DIR/cgroup-parent (so a restart finds its own leftovers there).
    cgroup_parent: str = ""
    # Refuse to start (runsc runtime) where cgroups cannot be used: there the CPU quota is
    # not held at all and memory only by polling (see the limits in /readyz).
    require_cgroups: bool = False
    log_format: str = "json"
    log_level: str = "info"
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    default_memory_mb: int = 512
    max_memory_mb: int = 4096
    cpus: float = 1.0
    pids_limit: int = 256
    open_files_limit: int = 1024
    file_size_mb: int = 256
    tmp_mb: int = 256
    output_limit_bytes: int = 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    request_read_timeout_s: float = 30.0
    max_running_sandboxes: int = 32
    # The most copies one `POST /sandboxes/{id}/fork` makes (each also counts as a running
    # sandbox and holds its memory limit).
    max_fork: int = 16
    # Synchronous and streamed /execute runs at once; over it a request waits up to
    # capacity_wait_s for a place, then gets a 429 (as does one that finds no memory).
    max_concurrent_executions: int = 8
    # Execs and file calls in running sandboxes at once (they run on memory their sandbox
    # holds already); over it a call waits up to capacity_wait_s, then gets a 429.
    max_concurrent_calls: int = 32
    capacity_wait_s: float = 10.0
    # The sum of the memory limits of all running sandboxes, ephemeral and managed.
    max_total_memory_mb: int = field(default_factory=default_memory_budget_mb)
    default_idle_timeout_s: float = 900.0
    max_idle_timeout_s: float = 7 * 24 * 3600.0
    retention_s: float = 24 * 3600.0
    suspended_retention_s: float = 7 * 24 * 3600.0
    max_file_bytes: int = 64 * 1024 * 1024
    reap_interval_s: float = 5.0
    suspend_on_shutdown: bool = True
    shutdown_grace_s: float = 30.0
    # Sandboxes checkpointed at once on shutdown.
    shutdown_concurrency: int = 4
    # A running sandbox's lease lives this long unless renewed (every third of it); an
    # instance that cannot renew it for two thirds of it ends the sandbox itself. After an
    # instance died, its sandboxes are recorded lost within about this long.
    lease_ttl_s: float = 30.0
    # A call for a sandbox running on another instance waits this long for the handoff.
    handoff_timeout_s: float = 30.0
    # Packages per request (wheels only). The pip index: empty means pip's own configuration.
    pip_index_url: str = ""
    # Comma-separated folders or URLs of wheels, passed to pip as --find-links.
    pip_find_links: str = ""
    pip_no_index: bool = False
    # One build (resolving and installing) may take this long.
    pip_timeout_s: float = 300.0
    # A build may write at most this much (the layer, pip's downloads and temporary files).
    max_layer_mb: int = 1024
    package_cache_mb: int = 10240
    # Builds beyond the two that run at once may wait up to this many; more are a 429.
    max_queued_builds: int = 4
    # Each running build holds this much of SANDBOX_MAX_TOTAL_MEMORY_MB, and pip is held to
    # it (RLIMIT_DATA).
    pip_memory_mb: int = 512
    # At most this many requirements per request; 0 turns per-request packages off.
    max_packages: int = 20
    # Comma-separated package names; an empty allow list allows every name not denied.
    packages_allow: str = ""
    packages_deny: str = ""
    # postgresql://user:password@host/db (libpq's URL; `?host=/cloudsql/...` for a socket):
    # then every instance keeps records, leases, handoff requests and detached output in this
    # one database. Empty: SQLite in the state folder, for one instance. Never shown (it may
    # hold a password).
    database_url: str = field(default="", repr=False)
    # This instance's name in leases. Empty: the one kept in STATE_DIR/instance-id, made at
    # the first start (host name and a random suffix), so that a server restarted on the
    # same state folder is the same owner and takes its sandboxes back at once.
    instance_id: str = ""
    # Code contexts (persistent interpreters) one sandbox may have at once.
    max_contexts: int = 8
    # The results (MIME bundles: figures, tables) one cell may answer with, in all; past it
    # representations are left out and the answer says `truncated`.
    cell_result_bytes: int = 2 * 1024 * 1024
    # Warm pools (see sandbox/domain/pool_profiles.py for the grammar); empty: none.
    pool: str = "python:2,bash:1"
    # Modules a warm Python sandbox has imported before its request arrives.
    pool_preimport: str = "numpy,pandas"
    # Warm sandboxes started at once while the pools refill.
    pool_refill_concurrency: int = 1
    # Egress through the service's proxy (domain/egress.py). The operator's allow-list, a
    # superset of every sandbox's; empty: no sandbox ever gets a way out.
    egress_allow: str = ""
    # `name=address,...`: names the proxy sends to these addresses on purpose, internal ones
    # included (the only way an allowed name reaches loopback or a private network).
    egress_hosts: str = ""
    # Per sandbox: connections open at once, new ones a second (and a burst of as many),
    # bytes each way from its start or restore, and per connection: idle and total time.
    egress_max_connections: int = 32
    egress_connections_per_s: float = 20.0
    egress_max_bytes: int = 1024 * 1024 * 1024
    egress_idle_timeout_s: float = 120.0
    egress_connection_timeout_s: float = 900.0

    def __post_init__(self, api_tokens: str) -> None:
        problems = self._auth_problems(api_tokens)
        if self.runtime not in ("runsc", "fake"):
            problems.append("SANDBOX_RUNTIME must be runsc or fake")
        if self.checkpoint_compression not in CHECKPOINT_COMPRESSIONS:
            problems.append("SANDBOX_CHECKPOINT_COMPRESSION must be one of "
                            + ", ".join(CHECKPOINT_COMPRESSIONS))
        for name in ("runsc_platform", "session_platform"):
            if getattr(self, name) not in PLATFORMS:
                problems.append(f"SANDBOX_{name.upper()} must be one of {', '.join(PLATFORMS)}")
        if self.log_format not in ("json", "console"):
            problems.append("SANDBOX_LOG_FORMAT must be json or console")
        if not 0 < self.port < 65536:
            problems.append("SANDBOX_PORT must be between 1 and 65535")
        if not 0 < self.default_timeout_s <= self.max_timeout_s:
            problems.append("need 0 < SANDBOX_DEFAULT_TIMEOUT_S <= SANDBOX_MAX_TIMEOUT_S")
        if not 16 <= self.default_memory_mb <= self.max_memory_mb:
            problems.append("need 16 <= SANDBOX_DEFAULT_MEMORY_MB <= SANDBOX_MAX_MEMORY_MB")
        for name in ("pids_limit", "open_files_limit", "file_size_mb", "tmp_mb",
                     "output_limit_bytes", "max_body_bytes", "max_running_sandboxes",
                     "default_idle_timeout_s", "max_idle_timeout_s", "retention_s",
                     "suspended_retention_s", "max_file_bytes", "reap_interval_s",
                     "shutdown_grace_s", "max_connections", "max_concurrent_executions",
                     "shutdown_concurrency", "lease_ttl_s", "handoff_timeout_s",
                     "max_concurrent_calls", "max_total_memory_mb", "max_contexts",
                     "cell_result_bytes", "max_fork"):
            if getattr(self, name) <= 0:
                problems.append(f"SANDBOX_{name.upper()} must be positive")
        if self.cpus <= 0 or self.request_read_timeout_s <= 0:
            problems.append("SANDBOX_CPUS and SANDBOX_REQUEST_READ_TIMEOUT_S must be positive")
        if self.default_idle_timeout_s > self.max_idle_timeout_s:
            problems.append("need SANDBOX_DEFAULT_IDLE_TIMEOUT_S <= SANDBOX_MAX_IDLE_TIMEOUT_S")
        if self.capacity_wait_s < 0:
            problems.append("SANDBOX_CAPACITY_WAIT_S must not be negative")
        if self.default_memory_mb > self.max_total_memory_mb:
            problems.append("need SANDBOX_DEFAULT_MEMORY_MB <= SANDBOX_MAX_TOTAL_MEMORY_MB")
        problems.extend(self._package_problems())
        problems.extend(self._browser_problems())
        problems.extend(self._shared_state_problems())
        problems.extend(self._pool_problems())
        problems.extend(self._egress_problems())
        if problems:
            raise SettingsError("; ".join(problems))

    def _auth_problems(self, api_tokens: str) -> list[str]:
        problems = []
        tokens = [token.strip() for token in api_tokens.split(",") if token.strip()]
        if api_tokens.strip() and not tokens:
            problems.append("SANDBOX_API_TOKENS is set but names no token")
        if any(len(token) < MIN_TOKEN_CHARS for token in tokens):
            # Which one is never said: the message may end up in a log.
            problems.append(f"each of SANDBOX_API_TOKENS must be at least {MIN_TOKEN_CHARS} "
                            "characters long")
        digests = {hashlib.sha256(token.encode()).digest() for token in tokens}
        # Added to those given (dataclasses.replace passes the digests, not the tokens).
        object.__setattr__(self, "api_token_digests",
                           tuple(sorted(digests | set(self.api_token_digests))))
        if self.auth_mode == "unauthenticated-allowed" and not self.allow_unauthenticated:
            problems.append(
                f"SANDBOX_HOST={self.host} is not a loopback address and SANDBOX_API_TOKENS "
                "is not set: anyone who reaches the port could run code. Set "
                "SANDBOX_API_TOKENS, or SANDBOX_ALLOW_UNAUTHENTICATED=true when something in "
                "front (such as Cloud Run IAM) authenticates every request"
            )
        return problems

    @property
    def auth_mode(self) -> str:
        """`tokens`, `unauthenticated-loopback` or `unauthenticated-allowed`."""
        if self.api_token_digests:
            return "tokens"
        return "unauthenticated-loopback" if is_loopback(self.host) else "unauthenticated-allowed"

    def host_names(self) -> frozenset[str] | None:
        """The names a request's Host may give: loopback names, the host the server listens
        on and SANDBOX_ALLOWED_HOSTS; None when any name will do."""
        given = _entries(self.allowed_hosts)
        if ANY_HOST in given:
            return None
        names = {"localhost", *(entry.strip("[]") for entry in given)}
        if not _is_unspecified(self.host.strip("[]")):
            names.add(self.host.lower().strip("[]"))
        return frozenset(names)

    def origins(self) -> frozenset[str]:
        return frozenset(entry.rstrip("/") for entry in _entries(self.cors_origins))

    def _browser_problems(self) -> list[str]:
        problems = []
        hosts = _entries(self.allowed_hosts)
        if ANY_HOST in hosts and len(hosts) > 1:
            problems.append("SANDBOX_ALLOWED_HOSTS is either * alone or a list of host names")
        for entry in hosts:
            if entry != ANY_HOST and not _is_host_name(entry):
                problems.append(f"SANDBOX_ALLOWED_HOSTS holds {entry[:60]!r}, not a host name "
                                "(give names or addresses, without scheme, port or path)")
        for origin in self.origins():
            if not _is_origin(origin):
                problems.append(f"SANDBOX_CORS_ORIGINS holds {origin[:60]!r}, not an origin "
                                "(scheme://host[:port], as a browser sends it)")
        return problems

    def _shared_state_problems(self) -> list[str]:
        problems = []
        if self.database_url and not self.database_url.startswith(DATABASE_SCHEMES):
            # The value is not repeated: it may hold a password.
            problems.append("SANDBOX_DATABASE_URL must be a postgresql:// URL (or empty for "
                            "SQLite in the state folder)")
        if self.instance_id and not INSTANCE_ID.fullmatch(self.instance_id):
            problems.append("SANDBOX_INSTANCE_ID must be 1 to 64 letters, digits, '.', '_' "
                            "or '-', starting with a letter or digit")
        return problems

    @property
    def store_backend(self) -> str:
        """`postgres` when SANDBOX_DATABASE_URL is set, else `sqlite`."""
        return "postgres" if self.database_url else "sqlite"

    def _package_problems(self) -> list[str]:
        problems = []
        for name in ("pip_timeout_s", "max_layer_mb", "package_cache_mb", "pip_memory_mb"):
            if getattr(self, name) <= 0:
                problems.append(f"SANDBOX_{name.upper()} must be positive")
        for name in ("max_packages", "max_queued_builds"):
            if getattr(self, name) < 0:
                problems.append(f"SANDBOX_{name.upper()} must not be negative")
        if self.pip_memory_mb > self.max_total_memory_mb:
            problems.append("need SANDBOX_PIP_MEMORY_MB <= SANDBOX_MAX_TOTAL_MEMORY_MB")
        if self.max_layer_mb > self.package_cache_mb:
            problems.append("need SANDBOX_MAX_LAYER_MB <= SANDBOX_PACKAGE_CACHE_MB")
        for name, values in (("pip_index_url", [self.pip_index_url]),
                             ("pip_find_links", self.find_links())):
            if any(value.startswith("-") or any(char.isspace() for char in value)
                   for value in values):
                problems.append(f"SANDBOX_{name.upper()} must be URLs or paths")
        try:
            self.package_policy()
        except ValueError as error:
            problems.append(f"SANDBOX_PACKAGES_ALLOW/SANDBOX_PACKAGES_DENY: {error}")
        return problems

    def _pool_problems(self) -> list[str]:
        problems = []
        try:
            profiles = self.pool_profiles()
        except ValueError as error:
            return [f"SANDBOX_POOL: {error}"]
        for profile in profiles:
            if profile.template_id is not None:
                continue  # a template's copies have the template's memory limit
            memory = profile.memory_mb or self.default_memory_mb
            if memory > min(self.max_memory_mb, self.max_total_memory_mb):
                problems.append(f"SANDBOX_POOL: {profile.name} asks for more memory than "
                                "SANDBOX_MAX_MEMORY_MB or SANDBOX_MAX_TOTAL_MEMORY_MB")
        try:
            self.pool_modules()
        except ValueError as error:
            problems.append(f"SANDBOX_POOL_PREIMPORT: {error}")
        if self.pool_refill_concurrency <= 0:
            problems.append("SANDBOX_POOL_REFILL_CONCURRENCY must be positive")
        return problems

    def pool_profiles(self) -> tuple[PoolProfile, ...]:
        return parse_pool(self.pool, self.package_policy())

    def pool_modules(self) -> tuple[str, ...]:
        return parse_modules(self.pool_preimport)
    def _egress_problems(self) -> list[str]:
        problems = []
        for name in ("egress_max_connections", "egress_connections_per_s", "egress_max_bytes",
                     "egress_idle_timeout_s", "egress_connection_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"SANDBOX_{name.upper()} must be positive")
        try:
            hosts = self.egress_host_map()
        except ValueError as error:
            return [*problems, f"SANDBOX_EGRESS_HOSTS: {error}"]
        try:
            policy = self.egress_policy()
        except ValueError as error:
            return [*problems, f"SANDBOX_EGRESS_ALLOW: {error}"]
        unmapped = [str(rule) for rule in policy.rules
                    if rule.is_address and rule.host not in hosts]
        if unmapped:
            problems.append(f"SANDBOX_EGRESS_ALLOW names addresses ({', '.join(unmapped)}): "
                            "the proxy connects to an address only where SANDBOX_EGRESS_HOSTS "
                            "names it")
        return problems

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.from_text(self.egress_allow)

    def egress_host_map(self) -> dict[str, IPAddress]:
        return parse_host_map(self.egress_hosts)

    def find_links(self) -> list[str]:
        return [link.strip() for link in self.pip_find_links.split(",") if link.strip()]

    def package_policy(self) -> PackagePolicy:
        return PackagePolicy.from_lists(self.max_packages, self.packages_allow, self.packages_deny)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in fields(cls):
            raw = environ.get(f"SANDBOX_{setting.name.upper()}")
            if raw is not None and setting.metadata.get("from_env", True):
                values[setting.name] = _parse(setting, raw)
        tokens = environ.get("SANDBOX_API_TOKENS")
        if tokens is not None:
            values["api_tokens"] = tokens
        return cls(**values)

    def owner_id(self) -> str:
        """This instance's name as an owner of leases (see `instance_id`)."""
        if self.instance_id:
            return self.instance_id
        kept = self.state_dir / "instance-id"
        try:
            found = kept.read_text().strip()
        except FileNotFoundError:
            found = ""
        if INSTANCE_ID.fullmatch(found):
            return found
        made = default_instance_id()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        written = kept.with_name(f".instance-id.{secrets.token_hex(4)}")
        # Private like every file of the state folder, whatever the umask.
        descriptor = os.open(written, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(made + "\n")
        written.rename(kept)
        return made

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.state_dir / "checkpoints"

    @property
    def templates(self) -> Path:
        return self.template_dir or self.state_dir / "templates"

    def lifecycle_policy(self) -> LifecyclePolicy:
        return LifecyclePolicy(
            max_running=self.max_running_sandboxes,
            retention_s=self.retention_s,
            suspended_retention_s=self.suspended_retention_s,
            max_file_bytes=self.max_file_bytes,
            suspend_on_shutdown=self.suspend_on_shutdown,
            shutdown_grace_s=self.shutdown_grace_s,
            shutdown_concurrency=self.shutdown_concurrency,
            lease_ttl_s=self.lease_ttl_s,
            handoff_timeout_s=self.handoff_timeout_s,
            max_contexts=self.max_contexts,
            cell_result_bytes=self.cell_result_bytes,
            max_fork=self.max_fork,
        )

    def default_limits(self) -> Limits:
        return Limits(
            timeout_s=self.default_timeout_s,
            memory_mb=self.default_memory_mb,
            cpus=self.cpus,
            pids=self.pids_limit,
            open_files=self.open_files_limit,
            file_size_mb=self.file_size_mb,
            tmp_mb=self.tmp_mb,
            output_bytes=self.output_limit_bytes,
        )


ANY_HOST = "*"
_HOST_NAME = re.compile(r"\A[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\Z")


def _entries(listed: str) -> list[str]:
    return [entry.strip().lower() for entry in listed.split(",") if entry.strip()]


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_host_name(entry: str) -> bool:
    try:
        ipaddress.ip_address(entry.strip("[]"))
        return True
    except ValueError:
        return bool(_HOST_NAME.match(entry))


def _is_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 -- raises ValueError for a port that is no number
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.path
            and not parts.query and not parts.fragment and "@" not in parts.netloc)


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    name = f"SANDBOX_{field.name.upper()}"
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind.startswith("Path"):
            return Path(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
