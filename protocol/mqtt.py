"""MQTT topic layout: one frame per message, no COBS and no CRC (MQTT is
already framed and TCP checksummed; the tag still authenticates every frame).

    {prefix}/t/{terminal}/up     terminal -> daemon   (QoS 1)
    {prefix}/t/{terminal}/down   daemon -> terminal   (QoS 1)
    {prefix}/t/{terminal}/state  retained "online"/"offline" (the will)

``terminal`` is the 8-digit lower-case hex terminal id.  Default prefix "hcp".
"""

DEFAULT_PREFIX = "hcp"
MAX_PREFIX = 64


def terminal_name(terminal_id):
    return "%08x" % terminal_id


def _check_prefix(prefix):
    if not prefix or len(prefix) > MAX_PREFIX:
        raise ValueError("MQTT prefix must be 1..%d characters" % MAX_PREFIX)
    for ch in "+#\x00":
        if ch in prefix:
            raise ValueError("MQTT prefix may not contain wildcards or NUL")
    if prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("MQTT prefix may not start or end with '/'")
    return prefix


def up_topic(terminal_id, prefix=DEFAULT_PREFIX):
    return "%s/t/%s/up" % (_check_prefix(prefix), terminal_name(terminal_id))


def down_topic(terminal_id, prefix=DEFAULT_PREFIX):
    return "%s/t/%s/down" % (_check_prefix(prefix), terminal_name(terminal_id))


def state_topic(terminal_id, prefix=DEFAULT_PREFIX):
    return "%s/t/%s/state" % (_check_prefix(prefix), terminal_name(terminal_id))


def up_filter(prefix=DEFAULT_PREFIX):
    """Subscription the daemon uses for every terminal's up topic."""
    return "%s/t/+/up" % _check_prefix(prefix)


def parse_topic(topic, prefix=DEFAULT_PREFIX):
    """(terminal_id, kind) of a topic under ``prefix``, or None."""
    head = _check_prefix(prefix) + "/t/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head) :].split("/")
    if len(rest) != 2 or len(rest[0]) != 8 or rest[1] not in ("up", "down", "state"):
        return None
    try:
        tid = int(rest[0], 16)
    except ValueError:
        return None
    if terminal_name(tid) != rest[0]:
        return None
    return tid, rest[1]
