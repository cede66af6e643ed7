"""Test peers, a test harness and the benchmarks of the daemon: nothing here
runs in the hall, and nothing of the daemon's service imports it.

* ``peers``    fake terminals (the protocol's terminal side) on ptys and MQTT
* ``harness``  the daemon as a real process, a Mosquitto of our own, a notify
               socket, config writing and provisioning
* ``ingest``   ``hcp bench ingest`` and ``hcp bench core``
* ``uplink``   filling a hall database; ``hcp bench uplink`` (outage drain)
"""
