"""Terminal firmware (MicroPython): evaluator state machine, flash journal,
links and board adapters.  Runs unchanged on CPython for the simulator."""
