"""Micro-benchmark: shared memory vs pickling through a pipe, per array size.

Justifies `seqify.engine.shm_transport.INLINE_BYTES`: below it an array is
pickled inline through the worker's pipe, at or above it it goes through a
/dev/shm segment. For each size one forked worker process answers requests on
a duplex pipe (the way seqify's process workers do) with one float32 array,
encoded by one of these `shm_transport.Encoder`s:

- pickle:    `Encoder(prefix, inline_bytes=huge)`: the array is pickled into the pipe;
- shm:       `Encoder(prefix, inline_bytes=0)`: always a new shared-memory segment;
- shm_slots: `Encoder(prefix, inline_bytes=0, max_slots=MAX_SLOTS)`: always shared
             memory, through recycled slots (where this seqify version has them);
- default:   the encoder seqify's process workers use (INLINE_BYTES, and slots
             where available).

The main side decodes as the engine does (a `Decoder` that maps recycled
slots once and returns their ids with the next request).

The main process receives, decodes, reads one byte per 4 KiB page (as any
consumer must; shared-memory pages fault in on first touch) and drops the
array. Reported: microseconds per round trip (request -> array usable ->
freed): the fastest of several timed blocks, modes interleaved block by
block (on a shared machine the fastest block is the one least disturbed by
other tenants; each block is a mean over many round trips).

Run alone: `python -m benchmarks.bench_transport [--quick]`.
"""

import argparse
import inspect
import multiprocessing
import os
import time
import uuid

import numpy as np

from seqify.engine import shm_transport

KiB = 1024
MiB = 1024 * KiB
SIZES = [1 * KiB, 4 * KiB, 16 * KiB, 32 * KiB, 64 * KiB, 96 * KiB, 128 * KiB, 192 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB]
QUICK_SIZES = [1 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 16 * MiB]
# mode -> Encoder keyword arguments (None: the engine's own worker setting)
_SLOTS = hasattr(shm_transport, "Decoder") and "max_slots" in inspect.signature(shm_transport.Encoder).parameters
MODES = {"pickle": {"inline_bytes": 1 << 62}, "shm": {"inline_bytes": 0}}
if _SLOTS:
    MODES["shm_slots"] = {"inline_bytes": 0, "max_slots": getattr(shm_transport, "MAX_SLOTS", 8)}
    MODES["default"] = {"max_slots": getattr(shm_transport, "MAX_SLOTS", 8)}
else:
    MODES["default"] = {}


def _touch(a):
    return int(a.reshape(-1).view(np.uint8)[::4096].sum())


def _server(conn, prefix):
    """Answers (mode, nbytes) requests with one array encoded the mode's way.

    One process serves all modes, so that every mode sees the same scheduling
    (same-core vs cross-core wake-ups dominate small round trips).
    """
    encoders = {mode: shm_transport.Encoder(f"{prefix}{mode}-", **kwargs) for mode, kwargs in MODES.items()}
    arrays = {}
    while True:
        request = conn.recv()
        if request is None:
            return
        mode, nbytes, released = request
        if released:
            encoders[mode].release(released)
        a = arrays.get(nbytes)
        if a is None:
            a = arrays[nbytes] = np.ones(nbytes // 4, np.float32)
        conn.send(encoders[mode].encode(a))


def _fmt_size(n):
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def measure(sizes=None, blocks=7, block_seconds=0.04, verbose=False):
    """Returns {mode: {size: microseconds per round trip, fastest block}}."""
    sizes = sizes or SIZES
    ctx = multiprocessing.get_context("fork")
    results = {m: {} for m in MODES}
    prefix = f"seqify-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}-"
    parent, child = ctx.Pipe(duplex=True)
    server = ctx.Process(target=_server, args=(child, prefix), daemon=True)
    server.start()
    child.close()
    conn = parent
    # Main side as in the engine: recycled slots are mapped once and their ids
    # go back to the worker with the next request once the array is dropped.
    released = {m: [] for m in MODES}
    decoders = {m: (shm_transport.Decoder(released[m].append) if _SLOTS else None) for m in MODES}

    def roundtrip(mode, size):
        ids, released[mode][:] = list(released[mode]), []
        conn.send((mode, size, ids))
        reply = conn.recv()
        a = decoders[mode].decode(reply) if decoders[mode] is not None else shm_transport.decode(reply)
        _touch(a)
        del a

    try:
        for size in sizes:
            per = {}
            for mode in MODES:  # warm-up, and calibrate iterations per block
                t0 = time.perf_counter()
                for _ in range(3):
                    roundtrip(mode, size)
                per[mode] = (time.perf_counter() - t0) / 3
            iters = max(5, min(3000, int(block_seconds / max(per.values()))))
            samples = {m: [] for m in MODES}
            for _ in range(blocks):  # interleave modes block by block
                for mode in MODES:
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        roundtrip(mode, size)
                    samples[mode].append((time.perf_counter() - t0) / iters * 1e6)
            for mode in MODES:
                results[mode][size] = min(samples[mode])
            if verbose:
                print(f"  transport {_fmt_size(size):>7}: " + ", ".join(f"{m} {results[m][size]:.1f} us" for m in MODES), flush=True)
    finally:
        for d in decoders.values():
            if d is not None:
                d.close()
        try:
            conn.send(None)
        except OSError:
            pass
        server.join(timeout=5)
        if server.is_alive():
            server.terminate()
            server.join()
        conn.close()
        leftover = shm_transport.sweep(prefix)
    return results, leftover


def crossover(results, mode):
    """Smallest measured size from which `mode` beats pickle at every larger size."""
    sizes = sorted(results["pickle"])
    best = None
    for s in reversed(sizes):
        if results[mode][s] < results["pickle"][s]:
            best = s
        else:
            break
    return best


def markdown(results, leftover):
    sizes = sorted(results["pickle"])
    slots = "shm_slots" in results
    head = "| array size | pickle through pipe (us) | shm, new segment per array (us) |"
    rule = "|---:|---:|---:|"
    if slots:
        head += " shm, recycled slot (us) |"
        rule += "---:|"
    head += " best shm vs pickle | seqify default (us) | default path |"
    rule += "---:|---:|:--|"
    lines = [head, rule]
    for s in sizes:
        p, m, d = results["pickle"][s], results["shm"][s], results["default"][s]
        best = min(m, results["shm_slots"][s]) if slots else m
        path = "shm" if s >= shm_transport.INLINE_BYTES else "inline pickle"
        row = f"| {_fmt_size(s)} | {p:.1f} | {m:.1f} |"
        if slots:
            row += f" {results['shm_slots'][s]:.1f} |"
        row += f" {p / best:.2f}x | {d:.1f} | {path} |"
        lines.append(row)
    lines.append("")
    parts = [f"INLINE_BYTES = {shm_transport.INLINE_BYTES // KiB} KiB. Measured crossover (shm faster than pickle at this size and every larger one):"]
    for mode, label in (("shm", "new segment per array"), ("shm_slots", "recycled slots")):
        if mode in results:
            cross = crossover(results, mode)
            parts.append(f"{label}: {_fmt_size(cross) if cross else 'none in range'};")
    parts.append(f"Segments the final sweep removed: {leftover} (recycled slots live until their owner sweeps them, as seqify's pool does on close).")
    lines.append(" ".join(parts))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results, leftover = measure(QUICK_SIZES if args.quick else SIZES, blocks=4 if args.quick else 7, verbose=True)
    print(markdown(results, leftover))


if __name__ == "__main__":
    main()
