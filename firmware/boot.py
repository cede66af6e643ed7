# Runs before main.py on every boot.  Keep it tiny: anything that fails here
# leaves the board at the REPL, where a technician can reach it over USB.
import gc

gc.collect()
