"""seqify benchmark suite: batches/s through Keras's own epoch iterator.

Run from the repository root:

    python -m benchmarks.extras [--quick] [--out FILE.md]

Everything runs in this one process (worker processes aside). Every dataset
object, Keras's and seqify's, is iterated the way `fit` does it: a Keras
`EpochIterator` over the object, whose data adapter hands out a numpy
iterator per epoch (`get_numpy_iterator`), each batch pulled with `next` and
then consumed (one byte read per 4 KiB page of large arrays).

Each repetition builds a fresh object (fresh pool) and runs several epochs:
epoch 1 includes pool start-up and is reported separately; batches/s is over
epochs 2+ (steady state). Repetitions are interleaved across configurations
(rep 1 of every configuration, then rep 2, ...) so that drift in machine load
hits every configuration alike; the table shows medians and the range.
"""

from benchmarks.extras import harness, report, runs
from benchmarks.extras.harness import FULL, QUICK, QuietGate, children, log, my_shm, reap_keras_pools

import argparse
import datetime
import faulthandler
import gc
import multiprocessing
import multiprocessing.pool
import sys
import time

import psutil

from benchmarks import bench_transport, workloads
from benchmarks.extras.configs import batch_fn_configs, generator_configs
from benchmarks.extras.report import (
    fit_table,
    git_state,
    machine_info,
    main_table,
    memory_table,
    reference,
    shm_table,
    state_table,
    targets,
    write_report,
)
from benchmarks.extras.runs import Retries, run_fit, run_group, run_state


# -- main -------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extras", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller epochs (~3 min)")
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    parser.add_argument("--only", default=None, help="comma-separated sections: workloads,generator,memory,state,fit,transport")
    parser.add_argument("--workloads", default=None, help="comma-separated batch-function workloads (default: all)")
    parser.add_argument("--no-wait", action="store_true", help="never wait for, or re-run because of, other processes' CPU load")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    sections = set((args.only or "workloads,generator,memory,state,fit,transport").split(","))
    command = " ".join(["python -m benchmarks.extras"] + (argv if argv is not None else sys.argv[1:]))
    started = datetime.datetime.now()
    t_start = time.perf_counter()
    faulthandler.dump_traceback_later(1800, exit=True)  # never hang forever
    reps, epochs = sizes["reps"], sizes["epochs"]
    report.SOURCE_AT_START = git_state()
    harness.GATE = QuietGate(sizes["quiet_budget"] if not args.no_wait else 0)
    runs.RETRIES = Retries(sizes["retry_budget"] if not args.no_wait else 0)

    log("\n".join(machine_info(command, started)))
    cfgs, loads, serial_ms = [], {}, {}
    if "workloads" in sections:
        for wl, fn in workloads.BATCH_FNS.items():
            if args.workloads and wl not in args.workloads.split(","):
                continue
            group = batch_fn_configs(wl, fn, sizes["batches"][wl])
            loads[wl] = run_group(wl, group, reps, epochs)
            cfgs.extend(group)
    if "generator" in sections:
        group = generator_configs(sizes["gen_batches"], sizes["gen_transform_batches"])
        load = run_group("legacy generator", group, reps, epochs)
        for c in group:
            loads.setdefault(c.workload, load)
        cfgs.extend(group)
    mem_cfgs = []
    if "memory" in sections:
        mem_cfgs = batch_fn_configs("large_payload (memory pass)", workloads.large_payload, sizes["mem_batches"])
        mem_cfgs = [c for c in mem_cfgs if c.family != "ceiling"]
        run_group(f"memory pass, large_payload ({sizes['mem_batches']} batches x {sizes['mem_epochs']} epochs, sampled every 50 ms)",
                  mem_cfgs, 1, sizes["mem_epochs"], sample_memory=True)
    for wl in dict.fromkeys(c.workload for c in cfgs):
        ref = reference(cfgs, wl)
        if ref is not None and ref.rate:
            serial_ms[wl] = 1e3 / ref.rate

    state_cfgs = run_state(sizes) if "state" in sections else []

    fit = None
    if "fit" in sections:
        keras_gil = [c for c in cfgs if c.workload == "python_gil" and c.family == "keras" and c.rate]
        best = max(keras_gil, key=lambda c: c.rate) if keras_gil else None
        fit = run_fit(sizes, (best.kind, best.workers) if best else ("processes", 2))

    transport_md = None
    if "transport" in sections:
        log("\n== transport micro-benchmark")
        harness.GATE.wait()
        results, leftover = bench_transport.measure(
            bench_transport.QUICK_SIZES if args.quick else bench_transport.SIZES,
            blocks=4 if args.quick else 7, verbose=True)
        transport_md = bench_transport.markdown(results, leftover)

    # final hygiene: every seqify object was closed; no child may survive
    reap_keras_pools()
    gc.collect()
    time.sleep(0.2)
    multiprocessing.active_children()
    left = children()
    left_desc = ", ".join(f"{p.pid} ({p.name()}, {p.status()}, parent {p.ppid()}, started {p.create_time() - psutil.Process().create_time():.1f} s into the run)" for p in left) or "none"
    shm_files, shm_bytes = my_shm()
    elapsed = time.perf_counter() - t_start

    source_now = git_state()
    changed = [] if source_now == report.SOURCE_AT_START else [
        f"- Note: the seqify source changed on disk during the run (now: {source_now}); the run used the code imported at start."]
    md = ["# seqify benchmark results", "", *machine_info(command, started), *changed, f"- Run time: {elapsed:.0f} s",
          f"- Machine sharing: {harness.GATE.summary()}; {runs.RETRIES.summary()}", ""]
    md += [
        "How: every configuration is iterated as `fit` iterates it — Keras's `EpochIterator` "
        "(data adapter → `get_numpy_iterator()` → `next` per batch) — except the plain loop and the raw generator. "
        "Each batch is consumed by reading one byte per 4 KiB page of arrays ≥ 64 KiB. Each repetition builds a fresh "
        f"object and runs {epochs} epochs; batches/s is over epochs 2+ (median over {reps} repetitions, interleaved across "
        "configurations); '1st epoch' includes pool start-up. '1st batch, epochs 2+' is the time from asking for the "
        "next epoch to its first batch. The machine is shared with other sessions: a repetition during which other "
        "processes used ≥ 0.3 cores is thrown away and run again (within a time budget); the 'ideal ceiling' rows "
        "(the work split over bare workers, no pipeline) show what speed-up the machine allowed meanwhile.",
        "",
    ]
    if cfgs:
        md += ["## Throughput", "", main_table(cfgs, loads, sizes, serial_ms), ""]
    target_md, rows = targets(cfgs, fit, state_cfgs, loads)
    md += ["## Targets", "", target_md, ""]
    if any(c.peak_rss for c in mem_cfgs):
        md += ["## Memory, large_payload (19 MB batches)", "",
               f"A separate pass ({sizes['mem_batches']} batches x {sizes['mem_epochs']} epochs per configuration, not timed), sampled every 50 ms: "
               "PSS summed over this process and its children (pages shared after fork are split between the sharers, "
               "not counted once per process as summed RSS does), plus seqify segments waiting in /dev/shm. "
               "The increase is over the same measure taken just before the configuration started. max_queue_size is "
               "Keras's and seqify's default, 10.", "",
               memory_table(mem_cfgs), ""]
    if fit:
        md += ["## End-to-end `model.fit` (python_gil, Dense 64→64→1, TensorFlow backend, compiled)", "", fit_table(fit), ""]
    if state_cfgs:
        md += [f"## Epoch start with {sizes['state_mb']} MB of dataset state, 4 process workers", "", state_table(state_cfgs), ""]
    if transport_md:
        md += ["## Transport micro-benchmark (worker → main, one array per round trip)", "", transport_md, ""]
    md += ["## Hygiene", "", shm_table(cfgs + mem_cfgs + state_cfgs), "",
           f"- seqify segments of this run left in /dev/shm at the end: {shm_files} files, {shm_bytes} bytes",
           f"- Child processes alive at the end: {left_desc}", ""]
    body = "\n".join(md)
    log("\n" + body)
    log("\nTargets: " + "; ".join(f"{row[0]}: {row[4]}" for row in rows))
    if args.out:
        write_report(args.out, body)
        log(f"\nwrote {args.out}")
    log(f"\nTotal run time: {elapsed:.0f} s")
    for p in left:  # do not leave anything behind, even if reported
        try:
            p.terminate()
        except psutil.Error:
            pass
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
