"""``hcp keys``, ``hcp uplink``, ``hcp province``, ``hcp audit``, ``hcp batch``, ``hcp bench uplink``.

Thin click commands over daemon/keys.py, daemon/uplink/, daemon/audit.py and
simulator/province/.  Registered on the main group by ``register``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click


def _keyring(keys_dir: str | None, pubkeys: tuple[str, ...]) -> Any:
    from haochaping.daemon import keys

    paths: list[str] = list(pubkeys)
    if keys_dir:
        paths.insert(0, keys_dir)
    try:
        return keys.Keyring.load(*paths)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from e


# ---------------------------------------------------------------- keys


@click.group("keys")
def keys_group() -> None:
    """The hall's Ed25519 batch-signing key (register its fingerprint with the province)."""


def _print_key(info: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), ensure_ascii=False))
        return
    click.echo(f"key id:      {info.key_id}")
    click.echo(f"fingerprint: SHA256:{info.fingerprint}")
    click.echo(f"public key (base64, raw 32 bytes): {info.public_b64}")
    click.echo(info.public_pem, nl=False)


@keys_group.command("init")
@click.option(
    "--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Key directory."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keys_init(dir_: str, as_json: bool) -> None:
    """Create DIR/signing.key (mode 0600); print the public key and fingerprint."""
    from haochaping.daemon import keys

    try:
        _print_key(keys.init(dir_), as_json)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from e


@keys_group.command("rotate")
@click.option(
    "--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Key directory."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keys_rotate(dir_: str, as_json: bool) -> None:
    """New signing key; the old public key stays in DIR/keyring so old batches verify."""
    from haochaping.daemon import keys

    try:
        old, new = keys.rotate(dir_)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps({"retired": old.key_id, "new": new.as_dict()}, ensure_ascii=False))
    else:
        click.echo(f"retired key id: {old.key_id} (public key kept in the keyring)")
        _print_key(new, False)


@keys_group.command("show")
@click.option(
    "--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Key directory."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keys_show(dir_: str, as_json: bool) -> None:
    """Print the current public key and fingerprint."""
    from haochaping.daemon import keys

    try:
        _print_key(keys.info(dir_), as_json)
    except keys.KeyFileError as e:
        raise click.ClickException(str(e)) from e


# ---------------------------------------------------------------- uplink


@click.group("uplink")
def uplink_group() -> None:
    """Deliver signed batches to the provincial 好差评 system (or a spool directory)."""


@uplink_group.command("run")
@click.option(
    "--db", required=True, type=click.Path(dir_okay=False), help="The hall's SQLite file."
)
@click.option("--hall", "hall_id", required=True, help="Hall id registered with the province.")
@click.option(
    "--keys", "keys_dir", required=True, type=click.Path(file_okay=False), help="Key directory."
)
@click.option("--url", default=None, help="Province endpoint (http:// or https://).")
@click.option(
    "--spool", "spool_dir", default=None, help="Write batch files here instead of POSTing."
)
@click.option("--batch-size", default=200, show_default=True, help="Ratings per batch.")
@click.option("--max-age", default=1.0, show_default=True, help="Seconds a rating may wait.")
@click.option("--connect-timeout", default=5.0, show_default=True, help="Seconds.")
@click.option(
    "--timeout", "read_timeout", default=15.0, show_default=True, help="Read time-out, s."
)
@click.option("--backoff-base", default=0.5, show_default=True, help="First retry delay, s.")
@click.option("--backoff-cap", default=60.0, show_default=True, help="Longest retry delay, s.")
@click.option("--cafile", default=None, help="CA bundle for the province's certificate.")
@click.option("--client-cert", default=None, help="mTLS client certificate (PEM).")
@click.option("--client-key", default=None, help="mTLS client key (PEM).")
@click.option("--pf", default="5", show_default=True, help="评价渠道 code.")
@click.option("--default-eval-detail", default="", help="evalDetail for a 差评 without reason.")
@click.option(
    "--default-writing",
    default="评价人未选择具体原因（评价器按键评价）",
    show_default=True,
    help="writingEvaluation for a 差评 without reason.",
)
@click.option("--send-staff-name/--no-send-staff-name", default=True, show_default=True)
@click.option("--send-service-number/--no-send-service-number", default=False, show_default=True)
@click.option("--min-free-mb", default=512, show_default=True, help="disk_low alarm below this.")
@click.option("--max-outbox-mb", default=2048, show_default=True, help="outbox_large alarm above.")
@click.option(
    "--profile",
    type=click.Choice(["signed-json", "case-first"]),
    default="signed-json",
    show_default=True,
    help="Provincial profile (docs/uplink.md).",
)
@click.option("--seed", type=int, default=None, help="Jitter seed (tests).")
@click.option("--until-idle", is_flag=True, help="Exit once everything is delivered.")
@click.option("-v", "--verbose", count=True)
def uplink_run(**o: Any) -> None:
    """Cut, sign, store and deliver batches until stopped (SIGTERM/SIGINT)."""
    from haochaping.daemon import keys
    from haochaping.daemon.uplink import batch, delivery, outbox, runner

    logging.basicConfig(
        level=logging.DEBUG
        if o["verbose"] > 1
        else logging.INFO
        if o["verbose"]
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = runner.UplinkConfig(
        db=o["db"],
        hall_id=o["hall_id"],
        keys_dir=o["keys_dir"],
        url=o["url"],
        spool_dir=o["spool_dir"],
        batch_size=o["batch_size"],
        max_age_s=o["max_age"],
        connect_timeout_s=o["connect_timeout"],
        read_timeout_s=o["read_timeout"],
        backoff_base_s=o["backoff_base"],
        backoff_cap_s=o["backoff_cap"],
        tls=delivery.TLS(o["cafile"], o["client_cert"], o["client_key"]),
        min_free_bytes=o["min_free_mb"] << 20,
        max_outbox_bytes=o["max_outbox_mb"] << 20,
        record=batch.RecordConfig(
            pf=o["pf"],
            default_eval_detail=o["default_eval_detail"],
            default_writing=o["default_writing"],
            send_staff_name=o["send_staff_name"],
            send_service_number=o["send_service_number"],
        ),
        seed=o["seed"],
        profile=o["profile"],
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner.run(cfg, stop=stop, until_idle=o["until_idle"])
    except (runner.UplinkError, outbox.OutboxError, keys.KeyFileError, ValueError) as e:
        raise click.ClickException(str(e)) from e


@uplink_group.command("status")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False))
def uplink_status(db: str) -> None:
    """Batches pending/acked, ratings waiting, last error, alarms (JSON)."""
    from haochaping.daemon.uplink import runner

    try:
        click.echo(json.dumps(runner.status(db), ensure_ascii=False, indent=2))
    except runner.UplinkError as e:
        raise click.ClickException(str(e)) from e


@uplink_group.command("held")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def uplink_held(db: str, as_json: bool) -> None:
    """Ratings the province refused for good (or that cannot be built): withheld, alarmed."""
    from haochaping.daemon.uplink import runner

    try:
        rows = runner.held(db)
    except runner.UplinkError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no rating is held")
    for r in rows:
        click.echo(f"rating {r['rating_id']}: {r['state']} ({r['reason']}) {r['detail']}"
                   + (f" -- {r['note']}" if r["note"] else ""))  # fmt: skip


def _act(db: str, ids: tuple[int, ...], action: str, note: str) -> None:
    from haochaping.daemon.uplink import outbox, runner

    try:
        done = runner.act(db, list(ids), action, note)
    except (runner.UplinkError, outbox.OutboxError) as e:
        raise click.ClickException(str(e)) from e
    for rid in ids:
        click.echo(f"rating {rid}: {action + 'd' if rid in done else 'not held, nothing done'}")
    if len(done) != len(ids):
        sys.exit(1)


@uplink_group.command("release")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--note", default="", help="Why (kept with it).")
@click.argument("rating_ids", nargs=-1, type=int, required=True)
def uplink_release(db: str, note: str, rating_ids: tuple[int, ...]) -> None:
    """Send held ratings again (late), e.g. after the province fixed its tables."""
    _act(db, rating_ids, "release", note)


@uplink_group.command("dismiss")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--note", required=True, help="Why it is never sent (kept with it).")
@click.argument("rating_ids", nargs=-1, type=int, required=True)
def uplink_dismiss(db: str, note: str, rating_ids: tuple[int, ...]) -> None:
    """Never send held ratings (they stay withheld in the chain); the alarm stops."""
    _act(db, rating_ids, "dismiss", note)


# ---------------------------------------------------------------- province


@click.group("province")
def province_group() -> None:
    """The reference provincial receiver (simulator)."""


@province_group.command("serve")
@click.option("--listen", default="127.0.0.1:8808", show_default=True, help="HOST:PORT (0 = any).")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Data directory.")
@click.option("--pubkey", multiple=True, help="Trusted hall public key (PEM file or key dir).")
@click.option(
    "--fault",
    type=click.Choice(["none", "refuse", "5xx", "timeout", "slow", "close_after_commit"]),
    default="none",
)
@click.option("--fault-rate", default=0.0, help="Probability per batch request.")
@click.option("--fault-count", default=0, help="Inject into the next N batch requests.")
@click.option("--fault-delay", default=2.0, help="Seconds, for timeout and slow.")
@click.option("--seed", default=0, help="Fault seed.")
@click.option("--tls-cert", default=None, help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", default=None, help="Its private key (PEM).")
@click.option("--client-ca", default=None, help="mTLS: require client certificates from this CA.")
@click.option("--require-cases", is_flag=True, help="Refuse evaluations of cases not pushed first.")
@click.option("--refuse-task-code", "refuse_task_codes", multiple=True,
              help="Refuse records naming this taskCode for good (422 task_refused), as a province "
                   "whose item list lacks it; repeatable.")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
def province_serve(
    listen: str, data: str, pubkey: tuple[str, ...], fault: str, fault_rate: float,
    fault_count: int, fault_delay: float, seed: int, tls_cert: str | None,
    tls_key: str | None, client_ca: str | None, require_cases: bool,
    refuse_task_codes: tuple[str, ...], verbose: bool,
) -> None:  # fmt: skip
    """Receive, verify and keep batches; inject faults for tests."""
    from haochaping.simulator import province

    try:
        host, port = province.parse_listen(listen)
        plan = province.FaultPlan(fault, fault_rate, fault_count, fault_delay, seed)
        recv = province.Receiver(
            data, host=host, port=port, pubkeys=pubkey, faults=plan, verbose=verbose,
            tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca, require_cases=require_cases,
            refuse_task_codes=refuse_task_codes,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"listening on {recv.scheme}://{host}:{recv.port}/batches", nl=True)
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=recv.server.shutdown).start())
    try:
        recv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        recv.server.server_close()
        recv.store.close()


@province_group.command("load")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Data directory.")
@click.option("--pubkey", multiple=True, help="Trusted hall public key (PEM file or key dir).")
def province_load(files: tuple[str, ...], data: str, pubkey: tuple[str, ...]) -> None:
    """Accept spooled batch files (manual transfer), in batch order, with every check."""
    from haochaping.simulator import province

    st = province.Store(data, pubkey)
    try:
        for f in province.spool_order(files):
            try:
                ack = st.accept(Path(f).read_bytes(), int(time.time() * 1000))
            except province.Reject as e:
                raise click.ClickException(f"{f}: refused ({e.code}): {e}") from e
            click.echo(f"{Path(f).name}: {ack['status']} ({ack['records']} records)")
    finally:
        st.close()


# ---------------------------------------------------------------- audit, batch


@click.group("audit")
def audit_group() -> None:
    """Prove the ratings log unaltered."""


@audit_group.command("verify")
@click.option("--db", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--keys", "keys_dir", default=None, help="Key directory (its keyring is trusted).")
@click.option("--pubkey", multiple=True, help="Trusted public key PEM (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(db: str, keys_dir: str | None, pubkey: tuple[str, ...], as_json: bool) -> None:
    """Recheck the ratings log against the hash chain and the signed batches.

    Exit 0 only if all is intact; otherwise name the first altered, missing or
    inserted rating and exit 1.
    """
    from haochaping.daemon import audit

    try:
        rep = audit.verify(db, _keyring(keys_dir, pubkey))
    except audit.AuditError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(rep.as_dict(), ensure_ascii=False))
    elif rep.ok:
        click.echo(
            f"intact: {rep.ratings} ratings, chain unbroken; {rep.batches} signed batches "
            f"({rep.signed_ratings} ratings) match the log"
        )
    else:
        click.echo(f"NOT INTACT: {len(rep.findings)} finding(s); first:")
        click.echo("  " + rep.findings[0].describe())
        for f in rep.findings[1:20]:
            click.echo("  then: " + f.describe())
    sys.exit(0 if rep.ok else 1)


@click.group("batch")
def batch_group() -> None:
    """Work with uplink batch files."""


@batch_group.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", multiple=True, help="Trusted public key PEM or key dir (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def batch_verify(file: str, pubkey: tuple[str, ...], as_json: bool) -> None:
    """Verify one batch offline: schema, signature, chain inside it, province rules."""
    from haochaping.daemon.uplink import batch

    if not pubkey:
        raise click.ClickException("give at least one --pubkey")
    try:
        v = batch.verify(Path(file).read_bytes(), _keyring(None, pubkey))
    except batch.BatchError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "code": e.code, "error": str(e)}))
            sys.exit(1)
        raise click.ClickException(f"batch does not verify ({e.code}): {e}") from e
    h = v.header
    if as_json:
        click.echo(json.dumps({"ok": True, "batchHash": v.hash, "header": h}, ensure_ascii=False))
    else:
        click.echo(
            f"ok: hall {h['hallId']} batch {h['batchSeq']} ({h['batchId']}), "
            f"{h['recordCount']} records, key {h['keyId']}, hash {v.hash}"
        )


@click.command("uplink")
@click.option("--ratings", default=100_000, show_default=True)
@click.option("--batch-size", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_uplink(ratings: int, batch_size: int, as_json: bool) -> None:
    """Outage drain: N buffered ratings delivered to the reference receiver."""
    from haochaping.daemon.bench import uplink as bench

    res = bench.drain(ratings, batch_size)
    if as_json:
        click.echo(json.dumps(res))
    else:
        for k, v in res.items():
            click.echo(f"{k:>16}: {v}")


def register(main: click.Group) -> None:
    for g in (keys_group, uplink_group, province_group, audit_group, batch_group):
        main.add_command(g)
    bench = main.commands.get("bench")
    if isinstance(bench, click.Group):
        bench.add_command(bench_uplink)
