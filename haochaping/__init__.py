"""haochaping: counter evaluation terminals for the 政务服务“好差评” system.

This package is also bundled onto terminals, so it must stay MicroPython code:
no imports here, only the version.
"""

__version__ = "0.1.0"
