"""Simulator: virtual terminals running firmware/, the reference provincial
receiver, hall scenarios and deterministic fault-injection runs.  CPython only.
"""
