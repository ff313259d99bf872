"""Micro-benchmark: shared memory vs pickling through a pipe, per array size.

Justifies `seqify.engine.shm_transport.INLINE_BYTES`: below it an array is
pickled inline through the worker's pipe, at or above it it goes through a
/dev/shm segment. For each size a forked worker process answers requests on
a duplex pipe (the way seqify's process workers do) with one float32 array,
encoded by a `shm_transport.Encoder`:

- pickle: `Encoder(prefix, inline_bytes=huge)`: the array is pickled into the pipe;
- shm:    `Encoder(prefix, inline_bytes=0)`: always a shared-memory segment;
- default: `Encoder(prefix)`: seqify's real setting (INLINE_BYTES).

The main process receives, decodes, reads one byte per 4 KiB page (as any
consumer must; shared-memory pages fault in on first touch) and drops the
array. Reported: microseconds per round trip (request -> array usable ->
freed), median of several timed blocks.

Run alone: `python -m benchmarks.bench_transport [--quick]`.
"""

import argparse
import multiprocessing
import os
import statistics
import time
import uuid

import numpy as np

from seqify.engine import shm_transport

KiB = 1024
MiB = 1024 * KiB
SIZES = [1 * KiB, 4 * KiB, 16 * KiB, 32 * KiB, 64 * KiB, 128 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB]
QUICK_SIZES = [1 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 16 * MiB]
MODES = {"pickle": 1 << 62, "shm": 0, "default": None}


def _touch(a):
    return int(a.reshape(-1).view(np.uint8)[::4096].sum())


def _server(conn, prefix, inline_bytes):
    encoder = shm_transport.Encoder(prefix) if inline_bytes is None else shm_transport.Encoder(prefix, inline_bytes=inline_bytes)
    arrays = {}
    while True:
        nbytes = conn.recv()
        if nbytes is None:
            return
        a = arrays.get(nbytes)
        if a is None:
            a = arrays[nbytes] = np.ones(nbytes // 4, np.float32)
        conn.send(encoder.encode(a))


def _fmt_size(n):
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def measure(sizes=None, blocks=5, block_seconds=0.06, verbose=False):
    """Returns {mode: {size: median microseconds per round trip}}."""
    sizes = sizes or SIZES
    ctx = multiprocessing.get_context("fork")
    results = {m: {} for m in MODES}
    prefix = f"seqify-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}-"
    servers = {}
    try:
        for mode, inline in MODES.items():
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_server, args=(child, f"{prefix}{mode}-", inline), daemon=True)
            p.start()
            child.close()
            servers[mode] = (p, parent)
        for size in sizes:
            # calibrate iterations per block on a warm-up
            per = {}
            for mode, (_, conn) in servers.items():
                t0 = time.perf_counter()
                for _ in range(3):
                    conn.send(size)
                    _touch(shm_transport.decode(conn.recv()))
                per[mode] = (time.perf_counter() - t0) / 3
            iters = max(5, min(3000, int(block_seconds / max(per.values()))))
            samples = {m: [] for m in MODES}
            for _ in range(blocks):  # interleave modes block by block
                for mode, (_, conn) in servers.items():
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        conn.send(size)
                        a = shm_transport.decode(conn.recv())
                        _touch(a)
                        del a
                    samples[mode].append((time.perf_counter() - t0) / iters * 1e6)
            for mode in MODES:
                results[mode][size] = statistics.median(samples[mode])
            if verbose:
                print(f"  transport {_fmt_size(size):>7}: " + ", ".join(f"{m} {results[m][size]:.1f} us" for m in MODES), flush=True)
    finally:
        for p, conn in servers.values():
            try:
                conn.send(None)
            except OSError:
                pass
        for p, conn in servers.values():
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
            conn.close()
        leftover = shm_transport.sweep(prefix)
    return results, leftover


def crossover(results):
    """Smallest measured size from which shm is faster than pickle at every larger size."""
    sizes = sorted(results["pickle"])
    best = None
    for s in reversed(sizes):
        if results["shm"][s] < results["pickle"][s]:
            best = s
        else:
            break
    return best


def markdown(results, leftover):
    sizes = sorted(results["pickle"])
    lines = [
        "| array size | pickle through pipe (us) | shared memory (us) | shm speed-up | seqify default (us) | default path |",
        "|---:|---:|---:|---:|---:|:--|",
    ]
    for s in sizes:
        p, m, d = results["pickle"][s], results["shm"][s], results["default"][s]
        path = "shm" if s >= shm_transport.INLINE_BYTES else "inline pickle"
        lines.append(f"| {_fmt_size(s)} | {p:.1f} | {m:.1f} | {p / m:.2f}x | {d:.1f} | {path} |")
    cross = crossover(results)
    lines.append("")
    lines.append(
        f"INLINE_BYTES = {shm_transport.INLINE_BYTES // KiB} KiB. Measured crossover (shm faster at this size and every "
        f"larger one): {_fmt_size(cross) if cross else 'none in range'}. Segments left in /dev/shm after the "
        f"micro-benchmark: {leftover}."
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results, leftover = measure(QUICK_SIZES if args.quick else SIZES, blocks=3 if args.quick else 5, verbose=True)
    print(markdown(results, leftover))


if __name__ == "__main__":
    main()
