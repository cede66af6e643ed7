"""Uplink: signed, hash-chained batches from the hall to the provincial 好差评 system.

* ``canonical`` RFC 8785 bytes of a batch (restricted value domain)
* ``schema``    the JSON Schema of a batch (docs/uplink.schema.json) and its validator
* ``batch``     national-format records, signing, verification (sans-IO)
* ``outbox``    signed batches stored in the hall's SQLite file before the first send
* ``delivery``  HTTP(S) and spool sinks, backoff
* ``runner``    the loop: cut, deliver, ack, alarms

CPython only.  Reads the daemon's ``ratings``/``cases``/``annotations`` tables,
never writes them.  See docs/uplink.md.
"""
