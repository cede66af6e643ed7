"""The daemon's TOML configuration: read with tomllib, validated here.

Every error names the file, the key and the reason (``ConfigError``).
Relative paths are resolved against the config file's directory.  Secrets
(MQTT password, API tokens, webhook tokens) are read from files named in the
config, never written into it, and never printed.  See deploy/haochaping.toml.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from haochaping.protocol import messages

DEFAULT_LISTEN = "127.0.0.1:8470"

# CONFIG settings a terminal gets after HELLO: name in the TOML -> key.
TERMINAL_SETTINGS = {
    "no_case_policy": messages.C_NO_CASE_POLICY,
    "min_interval_s": messages.C_MIN_INTERVAL_S,
    "reason_timeout_s": messages.C_REASON_TIMEOUT_S,
    "thanks_ms": messages.C_THANKS_MS,
    "debounce_ms": messages.C_DEBOUNCE_MS,
    "status_interval_s": messages.C_STATUS_INTERVAL_S,
    "link_fault_s": messages.C_LINK_FAULT_S,
}


class ConfigError(Exception):
    def __init__(self, path: str | os.PathLike[str], key: str, reason: str) -> None:
        super().__init__("{}: {}: {}".format(path, key or "(file)", reason))
        self.path, self.key, self.reason = str(path), key, reason


@dataclass
class TransportConfig:
    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold a password


@dataclass
class HookConfig:
    kind: str  # 'webhook' | 'mqtt'
    target: str  # URL or topic
    contact: bool = False
    token: str | None = field(default=None, repr=False)


@dataclass
class BrokerConfig:
    """The hall broker's files hcp keeps (``[broker]``; daemon/broker.py):
    each MQTT terminal's login and ACL block, written by ``hcp terminal``."""

    password_file: str
    acl_file: str
    prefix: str | None = None
    daemon_user: str | None = None
    group: str | None = None
    pid_file: str | None = None
    reload_command: str | None = None
    terminal_url: str | None = None  # mqtt://HOST:PORT the terminals reach the broker at


@dataclass
class Config:
    path: Path
    db_path: Path
    contact_key: Path
    max_db_mb: int | None = None
    listen: str = DEFAULT_LISTEN
    api_tokens: dict[str, str] = field(default_factory=dict, repr=False)  # token -> client name
    status_tokens: dict[str, str] = field(default_factory=dict, repr=False)  # read-only: /status
    transports: list[TransportConfig] = field(default_factory=list)
    hooks: list[HookConfig] = field(default_factory=list)
    broker: BrokerConfig | None = None
    terminal_settings: list[tuple[int, int]] = field(default_factory=list)
    arm_timeout_s: int = 120
    commit_max: int = 5000  # ratings per group commit at most
    log_level: str = "info"


_TOP = {"store", "api", "transports", "alerts", "terminal", "daemon", "broker"}


def _get(
    d: dict[str, Any],
    key: str,
    typ: type | tuple[type, ...],
    path: Path,
    where: str,
    default: Any = ...,
) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(path, where + key, "is required")
        return default
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(path, where + key, f"must be {name}")
    return v


def _unknown(d: dict[str, Any], allowed: set[str], path: Path, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(path, where + k, "unknown key")


def _secret(base: Path, file: str, path: Path, key: str) -> str:
    p = base / file
    try:
        mode = p.stat().st_mode & 0o777
    except OSError as e:
        raise ConfigError(path, key, f"cannot read {p} ({e.strerror})") from None
    if mode & 0o007:
        raise ConfigError(
            path, key, f"{p} is readable by others (mode {mode:o}): chmod 600 (or 640 to the service's group)"
        )
    try:
        text = p.read_text("utf-8").strip()
    except OSError as e:
        raise ConfigError(path, key, f"cannot read {p} ({e.strerror})") from None
    if not text:
        raise ConfigError(path, key, f"{p} is empty")
    return text


def _tokens(base: Path, api: dict[str, Any], key: str, path: Path) -> dict[str, str]:
    """A tokens file (``NAME TOKEN`` a line, ``#`` comments): token -> name."""
    text = _secret(base, _get(api, key, str, path, "api."), path, "api." + key)
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise ConfigError(path, "api." + key, f"line {n} must be 'NAME TOKEN' (token >= 16 chars)")
        out[parts[1]] = parts[0]
    return out


def load(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(path, "", f"cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "is not UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    base = path.parent
    _unknown(raw, _TOP, path, "")

    st = _get(raw, "store", dict, path, "")
    _unknown(st, {"path", "contact_key", "max_size_mb"}, path, "store.")
    db = base / _get(st, "path", str, path, "store.")
    ck = base / _get(st, "contact_key", str, path, "store.", "contact.key")
    max_mb = _get(st, "max_size_mb", int, path, "store.", None)
    if max_mb is not None and max_mb < 1:
        raise ConfigError(path, "store.max_size_mb", "must be at least 1")
    cfg = Config(path, db, ck, max_mb)

    api = _get(raw, "api", dict, path, "", {})
    _unknown(api, {"listen", "tokens_file", "status_tokens_file"}, path, "api.")
    cfg.listen = _get(api, "listen", str, path, "api.", DEFAULT_LISTEN)
    host, sep, port = cfg.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(path, "api.listen", "must be HOST:PORT")
    if "tokens_file" in api:
        cfg.api_tokens = _tokens(base, api, "tokens_file", path)
    if "status_tokens_file" in api:
        # read-only tokens: they open /status and /v1/status and nothing else
        cfg.status_tokens = _tokens(base, api, "status_tokens_file", path)
        if set(cfg.status_tokens) & set(cfg.api_tokens):
            raise ConfigError(path, "api.status_tokens_file",
                              "a token of it is in api.tokens_file too: give each its own")  # fmt: skip

    trs = _get(raw, "transports", list, path, "", [])
    for i, t in enumerate(trs):
        where = f"transports[{i}]."
        if not isinstance(t, dict):
            raise ConfigError(path, where[:-1], "must be a table")
        _unknown(t, {"url", "prefix", "client_id", "username", "password_file", "ca_file", "cert_file",
                     "key_file", "session_expiry_s", "keepalive_s", "baud"}, path, where)  # fmt: skip
        url = _get(t, "url", str, path, where)
        scheme = urlsplit(url).scheme
        if scheme not in ("serial", "mqtt", "mqtts"):
            raise ConfigError(path, where + "url", "scheme must be serial://, mqtt:// or mqtts://")
        if scheme == "serial" and not urlsplit(url).path:
            raise ConfigError(path, where + "url", "serial:// needs a port path or glob")
        opts: dict[str, Any] = {}
        for k in ("prefix", "client_id", "username"):
            if k in t:
                opts[k] = _get(t, k, str, path, where)
        for k in ("session_expiry_s", "keepalive_s", "baud"):
            if k in t:
                opts[k] = _get(t, k, int, path, where)
        for k in ("ca_file", "cert_file", "key_file"):
            if k in t:
                opts[k] = str(base / _get(t, k, str, path, where))
        if "password_file" in t:
            opts["password"] = _secret(
                base, _get(t, "password_file", str, path, where), path, where + "password_file"
            )
        if "prefix" in opts:
            try:
                from haochaping.protocol import mqtt as topics

                topics.up_filter(opts["prefix"])
            except ValueError as e:
                raise ConfigError(path, where + "prefix", str(e)) from None
        cfg.transports.append(TransportConfig(url, opts))

    al = _get(raw, "alerts", dict, path, "", {})
    _unknown(al, {"webhook", "mqtt"}, path, "alerts.")
    for kind, tkey in (("webhook", "url"), ("mqtt", "topic")):
        for i, h in enumerate(_get(al, kind, list, path, "alerts.", [])):
            where = f"alerts.{kind}[{i}]."
            if not isinstance(h, dict):
                raise ConfigError(path, where[:-1], "must be a table")
            _unknown(h, {tkey, "contact", "token_file"}, path, where)
            target = _get(h, tkey, str, path, where)
            if kind == "webhook" and urlsplit(target).scheme not in ("http", "https"):
                raise ConfigError(path, where + "url", "must be an http:// or https:// URL")
            tok = None
            if "token_file" in h:
                tok = _secret(
                    base, _get(h, "token_file", str, path, where), path, where + "token_file"
                )
            cfg.hooks.append(
                HookConfig(kind, target, _get(h, "contact", bool, path, where, False), tok)
            )

    term = _get(raw, "terminal", dict, path, "", {})
    _unknown(term, set(TERMINAL_SETTINGS) | {"arm_timeout_s"}, path, "terminal.")
    for name, key in TERMINAL_SETTINGS.items():
        if name in term:
            v = _get(term, name, int, path, "terminal.")
            if not 0 <= v <= 0xFFFFFFFF:
                raise ConfigError(path, "terminal." + name, "must be 0..4294967295")
            cfg.terminal_settings.append((key, v))
    cfg.arm_timeout_s = _get(term, "arm_timeout_s", int, path, "terminal.", 120)
    if not 1 <= cfg.arm_timeout_s <= 0xFFFF:
        raise ConfigError(path, "terminal.arm_timeout_s", "must be 1..65535")

    br = _get(raw, "broker", dict, path, "", None)
    if br is not None:
        keys = ("password_file", "acl_file", "prefix", "daemon_user", "group", "pid_file",
                "reload_command", "terminal_url")  # fmt: skip
        _unknown(br, set(keys), path, "broker.")
        vals = {k: _get(br, k, str, path, "broker.") for k in keys if k in br}
        for k in ("password_file", "acl_file"):
            if k not in vals:
                raise ConfigError(path, "broker." + k, "is required in [broker]")
        for k in ("password_file", "acl_file", "pid_file"):
            if k in vals:
                vals[k] = str(base / vals[k])
        tu = vals.get("terminal_url")
        if tu is not None and (urlsplit(tu).scheme not in ("mqtt", "mqtts") or not urlsplit(tu).hostname):
            raise ConfigError(path, "broker.terminal_url", "must be mqtt://HOST:PORT or mqtts://HOST:PORT")
        cfg.broker = BrokerConfig(**vals)

    dm = _get(raw, "daemon", dict, path, "", {})
    _unknown(dm, {"log_level", "commit_max"}, path, "daemon.")
    cfg.log_level = _get(dm, "log_level", str, path, "daemon.", "info")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(path, "daemon.log_level", "must be debug, info, warning or error")
    cfg.commit_max = _get(dm, "commit_max", int, path, "daemon.", 5000)
    if not 1 <= cfg.commit_max <= 100_000:
        raise ConfigError(path, "daemon.commit_max", "must be 1..100000")
    return cfg
