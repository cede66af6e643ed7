"""The hall broker's credentials: Mosquitto's password file and ACL file,
written by hcp, and the reload that makes a running broker read them.

What it writes (Mosquitto 2.0, checked against 2.0.11):

* Password file: one ``user:$7$<iterations>$<salt>$<hash>`` line per login,
  the PBKDF2-HMAC-SHA512 format ``mosquitto_passwd`` writes by default
  (12-byte salt, 101 iterations, 64-byte digest, standard base64).  The
  terminals' passwords are random (``generate_password``: 32 letters and
  digits, 190 bits), so the iteration count adds nothing against guessing
  and stays what Mosquitto itself uses (each CONNECT pays for it).
* ACL file: one block per login, no ``pattern`` lines (a pattern gives its
  rights to every login in the password file)::

      user hcp-daemon                    user 0000abcd
      topic read hcp/t/+/up              topic write hcp/t/0000abcd/up
      topic read hcp/t/+/state           topic write hcp/t/0000abcd/state
      topic write hcp/t/+/down           topic read hcp/t/0000abcd/down
      topic write hcp/alerts

  With an ``acl_file`` Mosquitto gives a login that has no block nothing:
  every PUBLISH is refused (PUBACK 0x87) and no message is delivered to it.
  Mosquitto's ACL file never refuses a SUBSCRIBE (the SUBACK grants it);
  it checks read rights on every message instead, so a terminal that
  subscribes to another's down topic is granted the subscription and
  receives nothing on it.

The rules:

* The password file is the source of truth for which terminals exist: a
  login named by 8 lower-case hex digits is a terminal.  Every write
  regenerates the ACL so that each terminal in the password file has its
  block, and no other terminal has one.  The daemon's block is always
  there.
* Lines hcp did not write are kept in place: comments, blank lines (runs
  of them collapse to one), other users' entries and blocks.  Lines inside
  a block hcp owns must be the ones hcp writes there (or comments); any
  other line, a ``pattern`` line, or a line Mosquitto would not read
  (Mosquitto refuses to load such a file, and after a reload then refuses
  every login) is a ``BrokerFileError`` naming the file and the line.
  Nothing is written when a file is malformed.
* Writes are atomic (a temp file in the same directory, fsync, rename,
  fsync of the directory) and serialised between processes by a lock on
  the password file's directory.  A new login's ACL block is written before
  its password entry; a removed login's password entry goes first.
* Both files are never readable by others, whatever the umask: 0640 when a
  ``group`` is named (``"mosquitto"`` on Debian: the broker drops root and
  reads the files again as that user on every reload) or when the existing
  file was group-readable, else 0600.  A rewrite keeps the existing file's
  owner and group when it can.
* A password is never logged, printed, put in an exception or written
  anywhere but as its hash.

``reload`` sends the broker SIGHUP (from its pid file) or runs a configured
command (``systemctl reload mosquitto``, which does the same).  Mosquitto
then re-reads both files and checks every connected client again: a client
whose login is gone or whose password changed is disconnected at once
(retire and rekey take effect on live connections), and every other client
keeps its connection with the new ACL.
"""

from __future__ import annotations

import base64
import fcntl
import grp
import hashlib
import os
import re
import secrets
import shlex
import signal
import string
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from haochaping.protocol import mqtt as topics

DEFAULT_DAEMON_USER = "hcp-daemon"
DEFAULT_PID_FILE = "/run/mosquitto/mosquitto.pid"  # Debian's mosquitto.conf
BROKER_PROCESS = "mosquitto"  # /proc/<pid>/comm of the broker a pid file names

# The $7$ format of Mosquitto 2.0 (mosquitto_passwd's defaults).
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_PREFIXES = ("$6$", "$7$")  # the two formats Mosquitto 2.0 reads

# Passwords: letters and digits only (safe in JSON, TOML, a shell, the
# firmware's config); 62**32 > 2**190.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32
MIN_PASSWORD_LENGTH = 16
MAX_PASSWORD_LENGTH = 256

FILE_MODE = 0o600
GROUP_FILE_MODE = 0o640
RELOAD_TIMEOUT_S = 30.0

PASSWORD_HEADER = (
    "# Mosquitto password file written by hcp (haochaping.daemon.broker): the",
    "# daemon's and each terminal's line are rewritten by hcp; other lines are",
    "# kept.  Hashes only ($7$, PBKDF2-SHA512), never a password.",
)
ACL_HEADER = (
    "# Mosquitto ACL file written by hcp (haochaping.daemon.broker): the blocks",
    "# of the daemon's user and of each terminal (its 8-hex-digit id) are",
    "# rewritten by hcp; other users' blocks and comments are kept.  No",
    "# 'pattern' lines: a pattern gives its rights to every login.",
)

_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TERMINAL_RE = re.compile(r"[0-9a-f]{8}")
_ACCESS = ("read", "write", "readwrite", "deny")


class BrokerFileError(Exception):
    """A password or ACL file is malformed, unreadable or cannot be written;
    or an argument is invalid.  The message names the file (and line); it
    never holds a password or a hash."""


class BrokerReloadError(Exception):
    """Neither the reload command nor SIGHUP to the pid file's broker worked."""


def generate_password() -> str:
    """A random MQTT password for one terminal (secrets module, 190 bits)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _check_password(password: str) -> bytes:
    if (
        not isinstance(password, str)
        or not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH
        or any(not ("!" <= ch <= "~") for ch in password)
    ):
        raise BrokerFileError(
            f"a password must be {MIN_PASSWORD_LENGTH}..{MAX_PASSWORD_LENGTH} printable "
            "ASCII characters without spaces (generate_password makes one)"
        )
    return password.encode("ascii")


def hash_password(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``, as
    Mosquitto 2.0 reads it.  ``salt`` only for tests (default: 12 random bytes)."""
    pw = _check_password(password)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if not salt or iterations < 1:
        raise BrokerFileError("a hash needs a salt and at least one iteration")
    digest = hashlib.pbkdf2_hmac("sha512", pw, salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def terminal_user(terminal_id: int) -> str:
    """A terminal's MQTT login (and, with use_username_as_clientid, its client id)."""
    if isinstance(terminal_id, bool) or not isinstance(terminal_id, int):
        raise BrokerFileError("a terminal id is an integer")
    if not 0 <= terminal_id <= 0xFFFFFFFF:
        raise BrokerFileError(f"terminal id {terminal_id} is not 32 bits")
    return str(topics.terminal_name(terminal_id))


def terminal_acl(terminal_id: int, prefix: str = topics.DEFAULT_PREFIX) -> list[str]:
    """A terminal's ACL block: write its own up and state, read its own down."""
    name = terminal_user(terminal_id)
    try:
        return [
            f"user {name}",
            f"topic write {topics.up_topic(terminal_id, prefix)}",
            f"topic write {topics.state_topic(terminal_id, prefix)}",
            f"topic read {topics.down_topic(terminal_id, prefix)}",
        ]
    except ValueError as e:
        raise BrokerFileError(str(e)) from None


def daemon_acl(user: str = DEFAULT_DAEMON_USER, prefix: str = topics.DEFAULT_PREFIX) -> list[str]:
    """The daemon's ACL block: read every up and state, write every down and the alerts."""
    _check_daemon_user(user)
    try:
        up = topics.up_filter(prefix)
    except ValueError as e:
        raise BrokerFileError(str(e)) from None
    return [
        f"user {user}",
        f"topic read {up}",
        f"topic read {prefix}/t/+/state",
        f"topic write {prefix}/t/+/down",
        f"topic write {prefix}/alerts",
    ]


def _check_daemon_user(user: str) -> None:
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise BrokerFileError(
            "the daemon's MQTT user must be 1..64 of A-Z a-z 0-9 . _ - (not starting with . _ -)"
        )
    if re.fullmatch(r"[0-9a-fA-F]{8}", user):
        raise BrokerFileError(
            "the daemon's MQTT user may not look like a terminal id (8 hex digits)"
        )


# --- parsing ---------------------------------------------------------------
#
# A parsed file is a list of items: ("line", text) kept as it is, or
# ("user", name, text) -- a password entry or the start of an ACL block.
# Items of users hcp owns are regenerated on write; the others are kept.

Item = tuple[str, ...]


def _read(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise BrokerFileError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BrokerFileError(f"{path}:{line}: not UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _strip_header(lines: list[str], header: tuple[str, ...]) -> tuple[int, list[str]]:
    if tuple(lines[: len(header)]) == header:
        return len(header), lines[len(header) :]
    return 0, lines


def _parse_passwords(path: Path, lines: list[str]) -> list[Item]:
    """Mosquitto 2.0 skips lines that start with '#' or hold no ':', trims the
    name, and takes the text up to the next ':' as the hash; a line it cannot
    decode it ignores (that login then fails).  Stricter here: anything but a
    comment, a blank line or ``name:$6$...``/``name:$7$...`` is an error, so a
    plain-text password is never left in the file unnoticed."""
    first, body = _strip_header(lines, PASSWORD_HEADER)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(body, first + 1):
        if not line.strip() or line.startswith("#"):
            items.append(("line", line))
            continue
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name:
            raise BrokerFileError(
                f"{path}:{n}: not a password entry (name:hash), a '#' comment or a blank line"
            )
        hashed = rest.split(":", 1)[0].strip()
        if not hashed.startswith(HASH_PREFIXES):
            raise BrokerFileError(
                f"{path}:{n}: the entry of {name!r} is not a hash Mosquitto 2.0 reads "
                "($6$ or $7$): a plain password? hash it (mosquitto_passwd -U) or set it again"
            )
        if name in seen:
            raise BrokerFileError(
                f"{path}:{n}: {name!r} again (first on line {seen[name]}; Mosquitto would use that one)"
            )
        seen[name] = n
        items.append(("user", name, line))
    return items


def _topic_ok(topic: str) -> bool:
    """Mosquitto's mosquitto_sub_topic_check: '+' and '#' alone in a level, '#' last."""
    if not topic or len(topic.encode()) > 65535 or "\x00" in topic:
        return False
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            return False
        if level == "#" and i != len(levels) - 1:
            return False
    return True


def _acl_topic(line: str) -> tuple[str, str]:
    """(access, topic) of a ``topic`` line as Mosquitto 2.0 splits it: on
    spaces, ``topic [access] TOPIC``, the topic being the rest of the line."""
    rest = line.lstrip(" ")[len("topic") :].lstrip(" ")
    access, _, topic = rest.partition(" ")
    topic = topic.strip()
    if not topic:
        return "readwrite", access
    return access, topic


Expected = Callable[[str], set[tuple[str, str]] | None]


def _parse_acl(path: Path, lines: list[str], expected: Expected) -> list[Item]:
    """Items of an ACL file.  ``expected(name)`` is the set of (access,
    topic) hcp writes in the block of ``name``, None for a user hcp does not
    own.  Mosquitto 2.0 reads: '#' in the first column (a comment), ``user
    NAME``, ``topic [read|write|readwrite|deny] TOPIC``, ``pattern ...``;
    anything else stops it loading the file."""
    items: list[Item] = []
    first, body = _strip_header(lines, ACL_HEADER)
    block: str | None = None  # whose block the line is in (None: before any user)
    mine: set[tuple[str, str]] | None = None
    for n, raw in enumerate(body, first + 1):
        line = raw.rstrip()
        where = f"{path}:{n}"
        if not line or line.startswith("#"):
            items.append(("line", raw))
            continue
        token = line.lstrip(" ").split(" ", 1)[0]
        if token == "user":
            name = line.lstrip(" ")[len("user") :].strip()
            if not name:
                raise BrokerFileError(f"{where}: 'user' without a name")
            block, mine = name, expected(name)
            items.append(("line", raw) if mine is None else ("user", name, raw))
        elif token == "topic":
            access, topic = _acl_topic(line)
            if access not in _ACCESS:
                raise BrokerFileError(
                    f"{where}: access {access!r} is not one of {', '.join(_ACCESS)}"
                )
            if not _topic_ok(topic):
                raise BrokerFileError(f"{where}: {topic!r} is not a valid topic filter")
            if mine is None:
                items.append(("line", raw))
            elif (access, topic) not in mine:
                raise BrokerFileError(
                    f"{where}: 'topic {access} {topic}' in the block of {block!r}, which hcp "
                    "writes, is not a line hcp writes there (another prefix?): move it to a "
                    "block of another user or delete it"
                )
        elif token == "pattern":
            raise BrokerFileError(
                f"{where}: a 'pattern' line gives its rights to every login; delete it "
                "(hcp writes each terminal a block of its own)"
            )
        elif line.lstrip().startswith("#"):
            raise BrokerFileError(
                f"{where}: a comment must start in the first column (Mosquitto refuses it)"
            )
        else:
            raise BrokerFileError(
                f"{where}: not an ACL line Mosquitto reads (user, topic or a '#' comment)"
            )
    return items


# --- writing ---------------------------------------------------------------


def _collapse(lines: list[str]) -> list[str]:
    out: list[str] = []
    for ln in lines:
        if not ln.strip() and (not out or not out[-1].strip()):
            continue
        out.append(ln)
    while out and not out[-1].strip():
        out.pop()
    return out


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str, gid: int | None) -> None:
    """Replace ``path`` by ``text``: mode 0640 with ``gid`` (or when the old
    file was group-readable), else 0600; the old file's owner and group kept
    where this process may give them."""
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BrokerFileError(f"{path}: cannot stat ({e.strerror})") from None
    group_readable = gid is not None or (st is not None and bool(st.st_mode & 0o040))
    mode = GROUP_FILE_MODE if group_readable else FILE_MODE
    want_uid = st.st_uid if st is not None else -1
    want_gid = gid if gid is not None else (st.st_gid if st is not None else -1)
    tmp = path.with_name(f".{path.name}.hcp-tmp")
    try:
        tmp.unlink()  # a leftover of a crashed writer (we hold the lock)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise BrokerFileError(f"{tmp}: cannot remove ({e.strerror})") from None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as e:
        raise BrokerFileError(f"{path}: cannot write in its directory ({e.strerror})") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask did; no one else until chown
            now = os.fstat(fd)
            uid = want_uid if want_uid not in (-1, now.st_uid) and os.geteuid() == 0 else -1
            g = want_gid if want_gid not in (-1, now.st_gid) else -1
            if uid != -1 or g != -1:
                try:
                    os.fchown(fd, uid, g)
                except PermissionError:
                    raise BrokerFileError(
                        f"{path}: cannot give the new file group {want_gid} (run as root or a member)"
                    ) from None
            os.fchmod(fd, mode)
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise BrokerFileError(f"{path}: cannot write ({e.strerror})") from None
        raise
    _fsync_dir(path.parent)


class _Lock:
    """An exclusive flock on a directory: one writer of the broker files at a time."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.fd = -1

    def __enter__(self) -> None:
        try:
            self.fd = os.open(self.d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise BrokerFileError(f"{self.d}: cannot open the directory ({e.strerror})") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *a: object) -> None:
        os.close(self.fd)  # releases the lock


class BrokerFiles:
    """Mosquitto's password file and ACL file for one hall, kept by hcp.

    ``prefix`` is the daemon's MQTT topic prefix, ``daemon_user`` its login;
    ``group`` (a name or gid) the group that may read both files (mode 0640),
    None to keep each file's own group (0600 for a new file); ``pid_file``
    and ``reload_command`` how ``reload()`` reaches the running broker.
    Every method reads both files afresh: several hcp processes may use them
    in turn.  The files change nothing until the broker is reloaded."""

    def __init__(self, password_file: str | os.PathLike[str], acl_file: str | os.PathLike[str],
                 prefix: str = topics.DEFAULT_PREFIX, daemon_user: str = DEFAULT_DAEMON_USER,
                 group: str | int | None = None, pid_file: str | os.PathLike[str] | None = None,
                 reload_command: str | Sequence[str] | None = None) -> None:  # fmt: skip
        self.password_file = Path(password_file)
        self.acl_file = Path(acl_file)
        self.prefix = prefix
        self.daemon_user = daemon_user
        self.pid_file = Path(pid_file) if pid_file is not None else None
        self.reload_command = reload_command
        daemon_acl(daemon_user, prefix)  # checks both
        self.gid: int | None
        if group is None or isinstance(group, int):
            self.gid = group
        else:
            try:
                self.gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise BrokerFileError(f"no group {group!r} on this system") from None

    # reading

    def _passwords(self) -> list[Item]:
        return _parse_passwords(self.password_file, _read(self.password_file))

    def _expected(self, name: str) -> set[tuple[str, str]] | None:
        if name == self.daemon_user or _TERMINAL_RE.fullmatch(name):
            return {_acl_topic(ln) for ln in self._block(name)[1:]}
        return None

    def _acl(self) -> list[Item]:
        return _parse_acl(self.acl_file, _read(self.acl_file), self._expected)

    def terminals(self) -> list[int]:
        """The ids of the terminals in the password file, in order."""
        return sorted(int(it[1], 16) for it in self._passwords()
                      if it[0] == "user" and _TERMINAL_RE.fullmatch(it[1]))  # fmt: skip

    def has_daemon(self) -> bool:
        """Whether the daemon's login is in the password file."""
        return any(it[0] == "user" and it[1] == self.daemon_user for it in self._passwords())

    def check(self) -> None:
        """Parse both files; raise BrokerFileError on the first bad line."""
        self._passwords()
        self._acl()

    # writing

    def set_terminal(self, terminal_id: int, password: str) -> None:
        """Add a terminal's login or give it a new password (provision, rekey).
        The broker uses it after ``reload``; a rekey then disconnects the
        terminal's live connection (made with the old password)."""
        name = terminal_user(terminal_id)
        self._change({name: hash_password(password)}, set(), adding=True)

    def remove_terminal(self, terminal_id: int) -> bool:
        """Retire a terminal: its password line and ACL block go.  False if it
        was not there (the ACL is still brought in line).  After ``reload`` the
        broker disconnects it and refuses its logins."""
        name = terminal_user(terminal_id)
        return self._change({}, {name}, adding=False)

    def set_daemon(self, password: str) -> None:
        """Add the daemon's login or change its password (then also change the
        daemon's own password_file, before the reload disconnects it)."""
        self._change({self.daemon_user: hash_password(password)}, set(), adding=True)

    def sync(self) -> None:
        """Rewrite the ACL from the password file (e.g. after an operator
        edited it, or replaced the old ``pattern`` template)."""
        self._change({}, set(), adding=False)

    def reload(self, timeout: float = RELOAD_TIMEOUT_S) -> str:
        """``reload(self.pid_file, self.reload_command)``: the broker re-reads both files."""
        return reload(self.pid_file, self.reload_command, timeout)

    def _change(self, new: dict[str, str], gone: set[str], adding: bool) -> bool:
        with _Lock(self.password_file.parent):
            items = self._passwords()
            names = [it[1] for it in items if it[0] == "user"]
            existed = bool(gone & set(names))
            pw_lines = list(PASSWORD_HEADER)
            placed = set()
            for it in items:
                if it[0] == "line":
                    pw_lines.append(it[1])
                elif it[1] in gone:
                    continue
                elif it[1] in new:
                    pw_lines.append(f"{it[1]}:{new[it[1]]}")
                    placed.add(it[1])
                else:
                    pw_lines.append(it[2])
            for name in sorted(new, key=lambda n: (n != self.daemon_user, n)):
                if name not in placed:
                    pw_lines.append(f"{name}:{new[name]}")
            final = (set(names) | set(new)) - gone
            terminals = sorted(n for n in final if _TERMINAL_RE.fullmatch(n))
            acl = self._acl()
            acl_lines = list(ACL_HEADER)
            emitted: set[str] = set()
            wanted = set(terminals) | {self.daemon_user}
            for it in acl:
                if it[0] == "line":
                    acl_lines.append(it[1])
                elif it[1] in wanted and it[1] not in emitted:
                    acl_lines.extend(self._block(it[1]))
                    emitted.add(it[1])
            for name in [self.daemon_user, *terminals]:
                if name not in emitted:
                    acl_lines.append("")
                    acl_lines.extend(self._block(name))
            pw_text = "\n".join(_collapse(pw_lines)) + "\n"
            acl_text = "\n".join(_collapse(acl_lines)) + "\n"
            writes = [(self.acl_file, acl_text), (self.password_file, pw_text)]
            if not adding:
                writes.reverse()  # a login goes before its rights do
            for path, text in writes:
                if _read_text(path) != text or not _private(path, self.gid):
                    _write_atomic(path, text, self.gid)
            return existed

    def _block(self, name: str) -> list[str]:
        if name == self.daemon_user:
            return daemon_acl(self.daemon_user, self.prefix)
        return terminal_acl(int(name, 16), self.prefix)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _private(path: Path, gid: int | None) -> bool:
    """Whether the file already has the mode and group a write would give it."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mode = st.st_mode & 0o777
    if gid is not None:
        return mode == GROUP_FILE_MODE and st.st_gid == gid
    return mode in (FILE_MODE, GROUP_FILE_MODE)


_CONFIG_KEYS = ("password_file", "acl_file", "prefix", "daemon_user", "group", "pid_file",
                "reload_command")  # fmt: skip


def from_config(cfg: object) -> BrokerFiles:
    """BrokerFiles from the config's broker settings: a mapping or an object
    with ``password_file`` and ``acl_file`` (required) and any of ``prefix``,
    ``daemon_user``, ``group``, ``pid_file``, ``reload_command`` (the
    constructor's arguments; None or missing: the default)."""
    def get(k: str) -> object:
        return cfg.get(k) if isinstance(cfg, dict) else getattr(cfg, k, None)

    kw = {k: get(k) for k in _CONFIG_KEYS if get(k) is not None}
    for k in ("password_file", "acl_file"):
        if k not in kw:
            raise BrokerFileError(f"the broker settings need {k}")
    return BrokerFiles(**kw)  # type: ignore[arg-type]


# --- reload ----------------------------------------------------------------


def reload(pid_file: str | os.PathLike[str] | None = None,
           command: str | Sequence[str] | None = None,
           timeout: float = RELOAD_TIMEOUT_S) -> str:  # fmt: skip
    """Make the running broker re-read its password and ACL files.

    ``command`` first when given (e.g. ``systemctl reload mosquitto``: its
    unit sends SIGHUP), then SIGHUP to the pid in ``pid_file`` -- only if
    that process is ``mosquitto`` (a stale pid file must not hang up some
    other process).  Returns what it did; raises BrokerReloadError saying
    why each way failed.  Mosquitto reloads on its next turn of its loop,
    before it reads another packet."""
    failures: list[str] = []
    if command is not None:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            failures.append("the reload command is empty")
        else:
            shown = shlex.join(argv)
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                   stdin=subprocess.DEVNULL, check=False)  # fmt: skip
            except FileNotFoundError:
                failures.append(f"{shown}: command not found")
            except subprocess.TimeoutExpired:
                failures.append(f"{shown}: no answer in {timeout:g} s")
            except OSError as e:
                failures.append(f"{shown}: {e.strerror}")
            else:
                if p.returncode == 0:
                    return f"ran {shown}"
                tail = (p.stderr or p.stdout).strip().splitlines()
                failures.append(
                    f"{shown}: exit status {p.returncode}"
                    + (f" ({tail[-1][:200]})" if tail else "")
                )
    if pid_file is not None:
        try:
            return _sighup(Path(pid_file))
        except BrokerReloadError as e:
            failures.append(str(e))
    if not failures:
        raise BrokerReloadError(
            "no way to reload the broker: configure its pid file or a reload command"
        )
    raise BrokerReloadError("the broker was not reloaded: " + "; ".join(failures))


def _sighup(pid_file: Path) -> str:
    try:
        text = pid_file.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise BrokerReloadError(
            f"{pid_file}: cannot read the broker's pid ({getattr(e, 'strerror', None) or 'not text'})"
        ) from None
    if not text.isdigit() or int(text) <= 1:
        raise BrokerReloadError(f"{pid_file}: no pid in it")
    pid = int(text)
    comm = Path(f"/proc/{pid}/comm")
    if Path("/proc/self/comm").exists():
        try:
            name = comm.read_text().strip()
        except FileNotFoundError:
            raise BrokerReloadError(f"{pid_file}: no process {pid} (a stale pid file?)") from None
        except OSError as e:
            raise BrokerReloadError(
                f"{pid_file}: cannot check process {pid} ({e.strerror})"
            ) from None
        if name != BROKER_PROCESS:
            raise BrokerReloadError(
                f"{pid_file}: process {pid} is {name!r}, not {BROKER_PROCESS} (a stale pid file?)"
            )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BrokerReloadError(f"{pid_file}: no process {pid} (a stale pid file?)") from None
    except PermissionError:
        raise BrokerReloadError(
            f"{pid_file}: not allowed to signal process {pid} (run as root or the broker's "
            "user, or configure a reload command)"
        ) from None
    return f"sent SIGHUP to {BROKER_PROCESS} (pid {pid})"
