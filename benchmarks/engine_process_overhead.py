"""Per-batch cost of the process path alone: ProcessPool + ordered window, no Keras.

    python -m benchmarks.engine_process_overhead [--batches 3000] [--reps 5] [--start-method fork]

Runs tiny (32, 4) float32 batches through `ProcessPool` (2 workers) and
`ordered` (window 10, as `max_queue_size=10`), and reports per batch: wall
time, CPU time of the parent and its workers together (steadier than wall
time on a busy machine), and pipe messages (tasks down + replies up). Also
times `seed_global_rngs`, the per-batch seeding of the global RNGs that
process workers do before user code runs.
"""

import argparse
import collections
import statistics
import time
import timeit

import numpy as np
import psutil

from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.process_pool import ProcessPool
from seqify.engine.window import ordered

try:
    from seqify.engine.worker_info import seed_global_rngs
except ImportError:  # an engine from before the seeding (for before/after runs)
    seed_global_rngs = None


def tiny(i):
    return (np.full((32, 4), i, dtype=np.float32),)


def _cpu(procs):
    return time.process_time() + sum(sum(p.cpu_times()[:2]) for p in procs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--start-method", default="fork")
    parser.add_argument("--without-seeding", action="store_true", help="skip the global-RNG seeding (fork only: to attribute its cost)")
    args = parser.parse_args()
    if args.without_seeding:
        import seqify.engine.job

        seqify.engine.job.seed_global_rngs = lambda *_: None  # forked workers inherit this
    n = args.batches
    pool = ProcessPool(Job(fetch=tiny), 2, args.start_method)
    messages = collections.Counter()
    send, receive = pool._send, pool._receive

    def counting_send(worker, message):
        messages["down"] += 1
        send(worker, message)

    def counting_receive(worker):
        messages["up"] += 1
        return receive(worker)

    pool._send, pool._receive = counting_send, counting_receive
    walls, cpus = [], []
    try:
        list(ordered(pool, [Task(TaskKind.FETCH, 0, i) for i in range(200)], 10))  # start, warm up
        procs = [psutil.Process(pid) for pid in pool.pids]
        messages.clear()
        for rep in range(1, args.reps + 1):
            cpu0, start = _cpu(procs), time.perf_counter()
            got = [int(b[0][0, 0]) for b in ordered(pool, (Task(TaskKind.FETCH, rep, i) for i in range(n)), 10)]
            walls.append((time.perf_counter() - start) / n * 1e6)
            cpus.append((_cpu(procs) - cpu0) / n * 1e6)
            assert got == list(range(n))
    finally:
        pool.close()
    total = n * args.reps
    seeding_note = " (seeding skipped)" if args.without_seeding else ""
    print(f"start method {args.start_method}{seeding_note}, {n} batches x {args.reps}, load average {psutil.getloadavg()[0]:.1f}")
    print(f"wall: median {statistics.median(walls):.1f} us/batch (min {min(walls):.1f})")
    print(f"cpu (parent + workers): median {statistics.median(cpus):.1f} us/batch (min {min(cpus):.1f})")
    print(f"pipe messages: {messages['down'] / total:.2f} down + {messages['up'] / total:.2f} up per batch")
    if seed_global_rngs is not None:
        seeding = min(timeit.repeat(lambda: seed_global_rngs(123, 4, 567), number=20000, repeat=5)) / 20000 * 1e6
        print(f"seed_global_rngs: {seeding:.1f} us per batch (best of 5)")


if __name__ == "__main__":
    main()
