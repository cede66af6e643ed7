"""Files that hold secrets are private whatever the umask (issue #11): the
store (every terminal's HMAC key) with its WAL and SHM, the contact key, the
hall's signing key; a secret file others can read is refused by the config."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from haochaping.daemon import config as config_mod
from haochaping.daemon import keys
from haochaping.daemon.contact import ContactCipher
from haochaping.daemon.store import NewRating, Store


@contextmanager
def umask(m: int) -> Iterator[None]:
    old = os.umask(m)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o002])
def test_store_wal_and_shm_are_0600(tmp_path: Path, mask: int) -> None:
    db = tmp_path / "hall.db"
    with umask(mask):
        s = Store(db)
        s.add_terminal(1, bytes(32), "W1", 0)
        s.commit([NewRating(1, 1, 5, 0, 0, None, None, 0, 0, 1, 1, "received")], 1)
        for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
            assert p.exists() and mode(p) == 0o600, (p.name, oct(mode(p)))
        s.close()


def test_an_operators_mode_on_an_existing_store_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "hall.db"
    Store(db).close()
    os.chmod(db, 0o640)  # 0640 to the service's group
    Store(db).close()
    assert mode(db) == 0o640


def test_keys_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0o000):
        ContactCipher(tmp_path / "contact.key")
        keys.init(tmp_path / "keys")
    assert mode(tmp_path / "contact.key") == 0o600
    assert mode(tmp_path / "keys" / keys.SIGNING_KEY) == 0o600


def test_a_tokens_file_others_can_read_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text("window-system 0123456789abcdef01\n")
    cfg = tmp_path / "hcp.toml"
    cfg.write_text('[store]\npath = "h.db"\n[api]\ntokens_file = "api-tokens"\n')
    os.chmod(tokens, 0o644)
    with pytest.raises(config_mod.ConfigError, match="readable by others.*chmod 600"):
        config_mod.load(cfg)
    os.chmod(tokens, 0o640)
    assert config_mod.load(cfg).api_tokens
