# The MQTT client's packet building and parsing on real MicroPython (the
# WebAssembly port has no socket module, so the byte paths are driven
# directly; the socket paths run against Mosquitto in test_firmware_links.py).
import json

from haochaping.firmware import mqtt as fm

t = fm.MQTTTransport("127.0.0.1", 1883, 0x00C0FFEE)
out = {}
out["publish"] = list(fm.publish_packet("a/b", b"\x01\x02", 7))
out["subscribe"] = list(fm.subscribe_packet("d", 1))
out["connect_head"] = list(fm.connect_packet("hcp-1", 30, "s", b"offline")[:12])
down = t.down.encode()
pub = fm._packet(0x32, bytes((0, len(down))) + down + b"\x00\x09" + b"FRAME")
t._in = bytearray(b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x01" + pub[:5])
t._packets(100)
out["after_connack"] = [t.state == fm.M_UP, len(t._out) > 0]
t._out = bytearray()
t._in.extend(pub[5:])
t._packets(110)
out["frame"] = list(t.recv())
out["puback"] = list(t._out)
print("JSON " + json.dumps(out))
