"""One epoch of 19 MB batches from 2 process workers, for a /dev/shm too small for them.

Run by tests/engine/test_shm_transport.py as `python _small_shm_child.py
<start method>` inside a private mount namespace whose /dev/shm is a small
tmpfs. Prints one JSON line: what came out of the epoch, how each batch
travelled, the "seqify" warnings logged and what was left in /dev/shm.
"""

import gc
import json
import logging
import os
import sys

import numpy as np

from _support import mapped_file  # this folder (the script's own directory is on sys.path)

SHAPE = (32, 224, 224, 3)  # float32: 19.3 MB, the benchmarks' large_payload
NUM_BATCHES = 8


def batch(i):
    x = np.empty(SHAPE, np.float32)
    x.fill(i)
    return x, np.array([i], dtype=np.int64)


def main(start_method):
    import seqify

    warnings = []

    class Record(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("seqify").addHandler(Record(level=logging.WARNING))
    ds = seqify.from_batch_fn(batch, NUM_BATCHES, workers=2, use_multiprocessing=True, start_method=start_method)
    kept, report = [], {"ids": [], "right_on_arrival": [], "via": []}
    try:
        for i, (x, y) in enumerate(ds.iter_epoch()):
            report["ids"].append(int(y[0]))
            report["right_on_arrival"].append(x.shape == SHAPE and bool((x == i).all()) and int(y[0]) == i)
            report["via"].append("shm" if (mapped_file(x) or "").startswith("/dev/shm/seqify-") else "pipe")
            kept.append((x, y))  # all held at once: the workers' slots stay busy
    finally:
        ds.close()
    report["right_at_end"] = [bool((x == i).all()) and int(y[0]) == i for i, (x, y) in enumerate(kept)]
    del kept, x, y
    gc.collect()
    report["warnings"] = warnings
    report["left_in_shm"] = sorted(os.listdir("/dev/shm"))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
