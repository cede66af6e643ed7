"""Hall daemon: transports, sans-IO core, SQLite store, uplink, local API, service.

CPython only.  Installed as ``haochaping.daemon``.
"""
