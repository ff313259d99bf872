"""Run as a script: a thread worker blocks forever in user code, then the
interpreter exits. Prints READY when the worker is inside the batch function;
the parent times how long the process takes to end after that."""

import sys
import threading

import seqify

started = threading.Event()
never = threading.Event()


def stuck(i):
    started.set()
    never.wait()  # user code that never returns
    return (i,)


ds = seqify.from_batch_fn(stuck, 4, workers=2)
threading.Thread(target=lambda: list(ds.iter_epoch()), daemon=True).start()
started.wait(60)
print("READY", flush=True)
sys.exit(0)
