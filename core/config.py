"""The one configuration file, validated once at start-up.

Every model forbids unknown keys, so a typo fails fast with a message that names the file, the key path and
what was expected. String values may reference environment variables as `${NAME}` or `${NAME:-default}` so
secrets never have to live in the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.config_alerts import AlertsConfig
from core.config_autoscale import AutoscalePolicy
from core.pm2_ecosystem import EcosystemError, adopt
from core.validators import check_host, check_http_url, check_listen, check_nginx_safe_path, check_url_path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "fleet.yaml"
ENV_CONFIG = "FLEETDECK_CONFIG"

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


# values that reach a rendered nginx config or a URL: validated, never escaped (core/validators.py)
Host = Annotated[str, AfterValidator(check_host)]
Listen = Annotated[str, AfterValidator(check_listen)]
NginxPath = Annotated[str, AfterValidator(check_nginx_safe_path)]
UrlPath = Annotated[str, AfterValidator(check_url_path)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
DockerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PortRange(_Strict):
    start: Annotated[int, Field(ge=1024, le=65535)]
    end: Annotated[int, Field(ge=1024, le=65535)]

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self

    def ports(self) -> range:
        return range(self.start, self.end + 1)


class HealthPaths(_Strict):
    path: UrlPath = "/health"
    live: UrlPath = "/livez"
    ready: UrlPath = "/readyz"
    metrics: UrlPath | None = "/metrics"
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class ServiceConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")]
    backend: Literal["local", "docker", "swarm", "pm2"] = "local"
    # local and pm2 backends: a command template; {port}, {instance_id}, {service}, {python}, {root} are substituted
    # (in env values too).
    command: str | None = None
    # pm2 backend: fork (one PM2 app per replica, each on its own port: drainable) or cluster (one PM2 app whose
    # instances share one port and are balanced by PM2: scaled with `pm2 scale`, restarted with `pm2 reload`)
    pm2_exec_mode: Literal["fork", "cluster"] = "fork"
    # pm2 backend: an existing ecosystem file (relative to this file) whose app gives name, command, instances,
    # exec_mode, env and cwd for every key not stated here (core/pm2_ecosystem.py); pm2_app picks one of its apps
    pm2_ecosystem: str | None = None
    pm2_app: str | None = None
    pm2_cwd: str | None = None  # pm2 backend: the apps' working directory (default: fleetdeck's)
    # docker/swarm backends: the image, or the compose project/service that owns the replicas.
    image: str | None = None
    compose_project: DockerName | None = None
    compose_service: DockerName | None = None
    env: dict[str, str] = Field(default_factory=dict)
    host: Host = "127.0.0.1"
    ports: PortRange
    replicas: Annotated[int, Field(ge=0)] = 3
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 8
    # a drain or scale-down is refused when it would leave fewer healthy replicas than this
    min_healthy: Annotated[int, Field(ge=0)] = 1
    health: HealthPaths = HealthPaths()
    stop_grace_s: Annotated[float, Field(ge=0, le=600)] = 15.0
    boot_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    drain_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @model_validator(mode="after")
    def _consistent(self) -> ServiceConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) must be within [min_replicas, max_replicas]"
                f" = [{self.min_replicas}, {self.max_replicas}]"
            )
        if self.backend != "pm2" and (self.pm2_ecosystem or self.pm2_app or self.pm2_cwd):
            raise ValueError("pm2_ecosystem, pm2_app and pm2_cwd need backend: pm2")
        if self.backend in ("local", "pm2") and not self.command:
            raise ValueError(f"backend '{self.backend}' needs 'command' (a template with {{port}} and {{instance_id}})")
        if self.backend in ("local", "pm2") and len(self.ports.ports()) < self.max_replicas:
            raise ValueError(f"ports range holds fewer ports than max_replicas ({self.max_replicas})")
        return self


class RateLimits(_Strict):
    api_rps: Annotated[float, Field(gt=0)] = 10.0
    upload_rps: Annotated[float, Field(gt=0)] = 2.0
    burst: Annotated[int, Field(ge=0)] = 20
    enabled: bool = True


class LoadBalancerConfig(_Strict):
    kind: Literal["nginx"] = "nginx"
    # managed: fleetdeck renders nginx.conf and runs its own nginx master.
    # external: fleetdeck renders only the upstream include and runs reload_command.
    mode: Literal["managed", "external"] = "managed"
    service: str  # the service whose replicas form the upstream
    listen: Listen = "127.0.0.1:8080"
    nginx_binary: str = "/usr/sbin/nginx"
    include_path: NginxPath | None = None
    reload_command: str | None = None
    # external mode: validates the operator's nginx with the new include before reload_command runs (e.g.
    # "nginx -t", or "docker exec lb nginx -t"); a failure restores the previous include. Without it the
    # reload_command must validate by itself.
    test_command: str | None = None
    stub_status_url: HttpUrl | None = None
    access_log: str | None = None
    plus_api_url: HttpUrl | None = None
    # must stay below the app's keep-alive timeout (Node: 5 s) or POSTs get 502s
    upstream_keepalive_timeout_s: Annotated[float, Field(gt=0)] = 4.0
    upstream_keepalive: Annotated[int, Field(ge=0)] = 32
    max_fails: Annotated[int, Field(ge=0)] = 3
    fail_timeout_s: Annotated[int, Field(ge=1)] = 10
    worker_shutdown_timeout_s: Annotated[int, Field(ge=1)] = 30
    worker_processes: Annotated[int, Field(ge=1, le=64)] = 2
    rate_limits: RateLimits = RateLimits()

    @model_validator(mode="after")
    def _external_needs_paths(self) -> LoadBalancerConfig:
        if self.mode == "external":
            missing = [k for k in ("include_path", "reload_command") if not getattr(self, k)]
            if missing:
                raise ValueError(f"mode 'external' needs {', '.join(missing)}")
        return self


class RedisConfig(_Strict):
    name: str
    url: str
    queue_prefixes: list[str] = Field(default_factory=lambda: ["bull"])
    queues: list[str] = Field(default_factory=list)  # queue names always watched, besides the discovered ones


class PostgresConfig(_Strict):
    name: str
    dsn: str
    pgbouncer_dsn: str | None = None


class StoreConfig(_Strict):
    url: str = "sqlite:///data/fleetdeck.db"
    raw_retention_h: Annotated[float, Field(gt=0)] = 48
    minute_retention_d: Annotated[float, Field(gt=0)] = 14
    hour_retention_d: Annotated[float, Field(gt=0)] = 400


class CollectorIntervals(_Strict):
    instances_s: Annotated[float, Field(ge=1)] = 5
    nginx_s: Annotated[float, Field(ge=1)] = 5
    bullmq_s: Annotated[float, Field(ge=1)] = 5
    queue_discovery_s: Annotated[float, Field(ge=1)] = 60
    redis_s: Annotated[float, Field(ge=1)] = 10
    postgres_s: Annotated[float, Field(ge=1)] = 10
    timeout_s: Annotated[float, Field(gt=0)] = 4


class StaticTarget(_Strict):
    """A health endpoint fleetdeck does not run (e.g. an Express app on another port)."""

    name: str
    service: str = "static"
    url: HttpUrl  # base URL, e.g. http://127.0.0.1:3000
    health_path: UrlPath = "/health"
    metrics_path: UrlPath | None = "/metrics"


class UserConfig(_Strict):
    name: str
    role: Role
    # argon2 hash made by `./fleetdeck hash-password`; may come from the environment as ${VAR}
    password_hash: str | None = None


def _everyone_viewer() -> dict[str, Role]:
    return {"*": "viewer"}


class AuthConfig(_Strict):
    users: list[UserConfig] = Field(default_factory=list)
    # the role each OS user gets on the CLI; '*' is everybody else
    cli_roles: dict[str, Role] = Field(default_factory=_everyone_viewer)
    oidc: bool = False  # use st.login when Streamlit's [auth] secrets are configured
    # the role of an OIDC identity (verified email) that no auth.users entry names: none (no access) by default
    oidc_default_role: Literal["none", "viewer"] = "none"
    # what a visitor who has not logged in may see. Unset: viewer only while the dashboard binds a loopback
    # address, none otherwise (docs/security.md)
    anonymous: Literal["none", "viewer"] | None = None
    # failed dashboard logins: after `login_free_failures` failures a user or client waits 2^n seconds (capped at
    # login_max_delay_s) before the next attempt counts; login_lockout_failures failures lock it for lockout_s
    login_free_failures: Annotated[int, Field(ge=0, le=100)] = 3
    login_max_delay_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    login_lockout_failures: Annotated[int, Field(ge=1, le=1000)] = 10
    login_lockout_s: Annotated[float, Field(ge=0, le=86400)] = 900.0


class DashboardConfig(_Strict):
    host: Host = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8501
    embedded_collector: bool = True  # run the scheduler inside the dashboard process
    # sessions survive a reload through a signed HttpOnly cookie (dashboard/session_cookie.py): logged out after
    # this long without a page view, and after session_max_age_s whatever happens
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 8 * 3600
    session_max_age_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600
    session_secret: str | None = None  # HMAC key of the cookie; default: a random key in <state_dir>/session.key


class PrometheusConfig(_Strict):
    """The collector process's /metrics endpoint (docs/prometheus.md)."""

    enabled: bool = False
    # loopback by default: the samples name every instance and queue; expose them wider only on purpose
    listen: Annotated[str, Field(pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")] = "127.0.0.1:9464"
    # a series not refreshed for this long leaves the scrape (e.g. a replica that was scaled away)
    max_age_s: Annotated[float, Field(gt=0)] = 300.0


class FleetConfig(_Strict):
    # pid files, logs, nginx prefix; relative to the config file. Rendered into nginx.conf, hence NginxPath; the
    # absolute path it resolves to is checked too (the config file's directory is part of it)
    state_dir: NginxPath = "run"
    services: Annotated[list[ServiceConfig], Field(min_length=1)]
    load_balancer: LoadBalancerConfig | None = None
    redis: list[RedisConfig] = Field(default_factory=list)
    postgres: list[PostgresConfig] = Field(default_factory=list)
    store: StoreConfig = StoreConfig()
    collectors: CollectorIntervals = CollectorIntervals()
    static_targets: list[StaticTarget] = Field(default_factory=list)
    auth: AuthConfig = AuthConfig()
    dashboard: DashboardConfig = DashboardConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    alerts: AlertsConfig = AlertsConfig()  # rules, receivers, routes: core/config_alerts.py, docs/alerts.md
    autoscale: dict[str, AutoscalePolicy] = Field(default_factory=dict)  # per service: docs/autoscaling.md
    # set by load_config: the directory relative paths are resolved against
    base_dir: str = ""

    @model_validator(mode="after")
    def _cross_references(self) -> FleetConfig:
        names = [s.name for s in self.services]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"service names must be unique; repeated: {', '.join(duplicates)}")
        if self.load_balancer and self.load_balancer.mode == "managed":
            try:
                check_nginx_safe_path(str(self.state_path))
            except ValueError as error:
                raise ValueError(f"state_dir resolves to a path nginx.conf cannot hold: {error}") from None
        if self.load_balancer and self.load_balancer.service not in names:
            raise ValueError(
                f"load_balancer.service '{self.load_balancer.service}' is not one of the services: {', '.join(names)}"
            )
        unknown = sorted(set(self.autoscale) - set(names))
        if unknown:
            raise ValueError(f"autoscale: {', '.join(unknown)} not one of the services: {', '.join(names)}")
        self._check_autoscale_sources()
        return self

    def _check_autoscale_sources(self) -> None:
        """Each policy's metrics must have a source: the load balancer for rps/p95, a configured Redis for queues."""
        behind = self.load_balancer.service if self.load_balancer else None
        redis_names = {r.name for r in self.redis}
        for name, policy in self.autoscale.items():
            if (policy.rps_per_replica is not None or policy.p95_ms is not None) and behind != name:
                raise ValueError(f"autoscale.{name}: rps_per_replica and p95_ms come from the load balancer, "
                                 f"which routes to {behind or 'no service'}")
            for queue in policy.queue_backlog.queues if policy.queue_backlog else []:
                if queue.split("/", 1)[0] not in redis_names:
                    raise ValueError(f"autoscale.{name}.queue_backlog: '{queue}' is not '<redis name>/<prefix>:"
                                     f"<queue>' with a redis name of: {', '.join(sorted(redis_names)) or '(none)'}")

    def service(self, name: str) -> ServiceConfig:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(f"unknown service '{name}'; known: {', '.join(s.name for s in self.services)}")

    def resolve(self, path: str) -> Path:
        """A path from the file, made absolute against the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir or REPO_ROOT) / p

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against the config file."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve(url[len(prefix):]))
        return url


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _expand_env(value: object, where: str, source: str) -> object:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {where}: environment variable {name} is not set (referenced as ${{{name}}})")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    return value


def _format_errors(source: str, error: ValidationError, adopted: dict[int, tuple[str, set[str]]] | None = None
                   ) -> str:
    lines = [f"{source}: invalid configuration ({error.error_count()} problem(s)):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        loc = item["loc"]
        if adopted and len(loc) > 2 and loc[0] == "services" and isinstance(loc[1], int) and loc[1] in adopted:
            ecosystem, keys = adopted[loc[1]]
            if str(loc[2]) in keys:
                key += f" (from the ecosystem file {ecosystem})"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see docs/config.md)")
        elif item["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            given = item.get("input")
            shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>", base_dir: Path | None = None) -> FleetConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    expanded = _expand_env(data, "", source)
    assert isinstance(expanded, dict)
    expanded["base_dir"] = str(base_dir or REPO_ROOT)
    adopted = _adopt_ecosystems(expanded, source, base_dir or REPO_ROOT)
    try:
        return FleetConfig.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(_format_errors(source, error, adopted)) from None


def _adopt_ecosystems(data: dict[str, object], source: str, base_dir: Path) -> dict[int, tuple[str, set[str]]]:
    """Services with `pm2_ecosystem` get the keys they do not state from their PM2 ecosystem file; returns, per
    service index, the file and the keys it gave (validation errors on them name the file)."""
    adopted: dict[int, tuple[str, set[str]]] = {}
    services = data.get("services")
    if not isinstance(services, list):
        return adopted
    for index, service in enumerate(services):
        if isinstance(service, dict) and service.get("pm2_ecosystem") and service.get("backend") == "pm2":
            try:
                services[index] = adopt(service, base_dir)
            except EcosystemError as error:
                label = f" ({service['name']})" if isinstance(service.get("name"), str) else ""
                raise ConfigError(f"{source}: services[{index}]{label}.pm2_ecosystem: {error}") from None
            adopted[index] = (str(service["pm2_ecosystem"]), (set(services[index]) - set(service)) | {"env"})
    return adopted


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config beats FLEETDECK_CONFIG beats ./fleet.yaml."""
    chosen = explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    return Path(chosen).resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> FleetConfig:
    file = config_path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the configuration file: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return parse_config(data, str(file), file.parent)
