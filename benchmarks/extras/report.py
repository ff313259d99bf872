"""Derived numbers (ratios, references) and the Markdown report.
"""

from benchmarks.extras.harness import ANALYSIS_MARKER, tf

import multiprocessing
import multiprocessing.pool
import os
import platform
import statistics
import sys

import keras
import numpy as np
import psutil

import seqify


# -- derived numbers -------------------------------------------------------------


def reference(cfgs, workload):
    for c in cfgs:
        if c.workload == workload and c.family == "plain":
            return c
    return None


def keras_peer(cfgs, cfg):
    if cfg.family != "seqify":
        return None
    for c in cfgs:
        if c.workload == cfg.workload and c.family == "keras" and c.kind == cfg.kind and c.workers == cfg.workers:
            return c
    return None


def ratio(a, b):
    if a is None or b is None or not b.rate or a.rate is None:
        return None
    return a.rate / b.rate


def find(cfgs, workload, family, kind=None, workers=None):
    for c in cfgs:
        if c.workload == workload and c.family == family and (kind is None or c.kind == kind) and (workers is None or c.workers == workers):
            return c
    return None


def fmt(x, spec=".2f", suffix=""):
    return "—" if x is None else f"{x:{spec}}{suffix}"


def fmt_rate(r):
    if r is None:
        return "—"
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}"



# -- report ---------------------------------------------------------------------------


def git_state():
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "seqify"], cwd=root, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = [line[3:] for line in dirty if line.strip()]
    if not dirty:
        return f"commit {head}, clean"
    import hashlib

    diff = subprocess.run(["git", "diff", "HEAD", "--", "seqify"], cwd=root, capture_output=True, timeout=10).stdout
    return f"commit {head} with uncommitted changes in {', '.join(dirty)} (diff sha1 {hashlib.sha1(diff).hexdigest()[:10]})"


SOURCE_AT_START = None


def machine_info(command, started):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"- Date: {started:%Y-%m-%d %H:%M:%S} (local)",
        f"- seqify source (as imported at start): {SOURCE_AT_START}",
        f"- Command: `{command}`",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        f"- Python {platform.python_version()}, numpy {np.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}, seqify {seqify.__version__}",
        f"- Start method: {multiprocessing.get_start_method()}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; sys.getswitchinterval()={sys.getswitchinterval() * 1e3:.0f} ms",
    ]


def main_table(cfgs, loads, sizes, serial_ms):
    lines = [
        "| workload | configuration | batches/s | range (reps) | × plain loop | × Keras same setting | 1st epoch (s) | 1st batch, epochs 2+ (ms) |",
        "|:--|:--|---:|---:|---:|---:|---:|---:|",
    ]
    last = None
    for c in cfgs:
        ref = reference(cfgs, c.workload)
        peer = keras_peer(cfgs, c)
        if c.error and not c.rates:
            lines.append(f"| {c.workload} | {c.name} | error: {c.error} | | | | | |")
            continue
        wl = c.workload if c.workload != last else ""
        last = c.workload
        rng = f"{fmt_rate(min(c.rates))}–{fmt_rate(max(c.rates))}" if c.rates else "—"
        if c.noisy:
            rng += f" ({c.noisy}*)"
        lat = statistics.median(c.start_latency) * 1e3 if c.start_latency else None
        name = c.name + (f" ({len(c.rates)} reps)" if c.max_reps else "")
        lines.append(
            f"| {wl} | {name} | {fmt_rate(c.rate)} | {rng} | {fmt(ratio(c, ref), '.2f', '×')} | "
            f"{fmt(ratio(c, peer), '.2f', '×')} | {fmt(statistics.median(c.first_epoch) if c.first_epoch else None, '.3f')} | {fmt(lat, '.2f')} |"
        )
    lines.append("")
    lines.append("Per workload: serial cost per batch (plain loop), batches per epoch, and CPU used by *other* processes on the machine while it ran (cores; this machine is shared):")
    lines.append("")
    for wl, ms in serial_ms.items():
        n = next(c.n for c in cfgs if c.workload == wl)
        lines.append(f"- `{wl}`: {ms:.3f} ms/batch serial, {n} batches/epoch, other load ≈ {loads.get(wl, 0):.2f} cores")
    return "\n".join(lines)


def memory_table(cfgs):
    lines = [
        "| configuration | peak memory, PSS main + children + /dev/shm (MB) | peak increase over idle (MB) | peak /dev/shm seqify bytes (MB) | peak RSS summed (MB; double-counts fork-shared pages) |",
        "|:--|---:|---:|---:|---:|",
    ]
    for c in cfgs:
        if not c.peak_rss:
            continue
        lines.append(
            f"| {c.name} | {max(c.peak_rss) / 2**20:,.0f} | {max(c.peak_rss_delta) / 2**20:,.0f} | {max(c.peak_shm) / 2**20:,.1f} | {max(c.peak_rss_sum) / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def shm_table(cfgs):
    lines = ["| configuration | /dev/shm seqify-* files after close() (max over reps) | bytes |", "|:--|---:|---:|"]
    for c in cfgs:
        if c.family == "seqify" and c.kind == "processes" and c.shm_after_close:
            files = max(f for f, _ in c.shm_after_close)
            size = max(b for _, b in c.shm_after_close)
            lines.append(f"| {c.workload} / {c.name} | {files} | {size} |")
    return "\n".join(lines)


def state_table(cfgs):
    lines = [
        "| configuration | first batch of epoch 2+ (ms, median) | max (ms) | 1st epoch (s) | batches/s epochs 2+ |",
        "|:--|---:|---:|---:|---:|",
    ]
    for c in cfgs:
        if c.error and not c.rates:
            lines.append(f"| {c.name} | error: {c.error} | | | |")
            continue
        lines.append(
            f"| {c.name} | {statistics.median(c.start_latency) * 1e3:.1f} | {max(c.start_latency) * 1e3:.1f} | "
            f"{statistics.median(c.first_epoch):.3f} | {fmt_rate(c.rate)} |"
        )
    return "\n".join(lines)


def fit_table(fit):
    lines = ["| input pipeline | fit batches/s, epochs 2+ (median) | range | whole fit call (s) | first epoch (s) |", "|:--|---:|---:|---:|---:|"]
    for name, runs in fit.items():
        rates = [r[0] for r in runs]
        lines.append(
            f"| {name} | {statistics.median(rates):.1f} | {min(rates):.1f}–{max(rates):.1f} | "
            f"{statistics.median(r[1] for r in runs):.2f} | {statistics.median(r[2] for r in runs):.2f} |"
        )
    return "\n".join(lines)


def best_ratio(a, b):
    if a is None or b is None or not a.rates or not b.rates:
        return None
    return max(a.rates) / max(b.rates)


def targets(cfgs, fit, state_cfgs, loads):
    """PASS/MISS per target, on medians; with the best repetition and context."""
    rows = []

    def add(name, value, threshold, op, best=None, context=""):
        unit = " ms" if op == "<" else "×"
        if value is None:
            rows.append((name, "—", "—", f"{op} {threshold}{unit}", "not measured", context))
            return
        ok = value >= threshold if op == ">=" else value < threshold
        rows.append((name, f"{value:.2f}{unit}", fmt(best, ".2f", unit), f"{op} {threshold}{unit}", "PASS" if ok else "MISS", context))

    def pair(wl, fam, kind, w, base):
        c = find(cfgs, wl, fam, kind, w)
        return ratio(c, base), best_ratio(c, base)

    def ceiling_note(wl):
        ceil, ref = find(cfgs, wl, "ceiling"), reference(cfgs, wl)
        if ceil is None or ref is None or ceil.rate is None:
            return f"other load {loads.get(wl, 0):.1f} cores"
        return (f"ideal 2-worker ceiling measured alongside: {ratio(ceil, ref):.2f}× "
                f"(other load {loads.get(wl, 0):.1f} cores)")

    ref = lambda wl: reference(cfgs, wl)  # noqa: E731
    v, b = pair("python_gil", "seqify", "processes", 2, ref("python_gil"))
    add("GIL-holding work (python_gil): seqify 2 processes vs plain loop", v, 1.8, ">=", b, ceiling_note("python_gil"))
    v, b = pair("numpy_gil_free", "seqify", "threads", 2, ref("numpy_gil_free"))
    add("GIL-releasing numpy (numpy_gil_free): seqify 2 threads vs plain loop", v, 1.8, ">=", b, ceiling_note("numpy_gil_free"))
    for w in (2, 4):
        v, b = pair("large_payload", "seqify", "processes", w, ref("large_payload"))
        add(f"Large payload: seqify {w} processes vs plain loop", v, 0.5, ">=", b, f"other load {loads.get('large_payload', 0):.1f} cores")
    for w in (2, 4):
        v, b = pair("large_payload", "seqify", "processes", w, find(cfgs, "large_payload", "keras", "processes", w))
        add(f"Large payload: seqify {w} processes vs Keras {w} processes", v, 15, ">=", b)
    for kind in ("threads", "processes"):
        for w in (2, 4):
            v, b = pair("tiny", "seqify", kind, w, find(cfgs, "tiny", "keras", kind, w))
            add(f"Tiny batches: seqify {w} {kind} vs Keras {w} {kind}", v, 4, ">=", b)
    v, b = pair("legacy_generator", "seqify", None, None, ref("legacy_generator"))
    add("Legacy generator (~1 ms/batch, generator-bound), no transform: from_generator vs raw loop", v, 0.95, ">=", b,
        f"other load {loads.get('legacy_generator', 0):.1f} cores")
    v, b = pair("legacy_generator + transform", "seqify", "processes", 2, ref("legacy_generator + transform"))
    add("Heavy transform: from_generator, 2 processes vs serial generator+transform loop", v, 1.8, ">=", b,
        ceiling_note("legacy_generator + transform"))
    if fit:
        names = list(fit)
        k = [x[0] for x in fit[names[0]]]
        s_ = [x[0] for x in fit[names[1]]]
        add("End-to-end model.fit: seqify 2 processes vs Keras's best PyDataset", statistics.median(s_) / statistics.median(k), 1.5, ">=",
            max(s_) / max(k), f"vs {names[0]}")
    for c in state_cfgs:
        if c.family == "seqify" and c.start_latency:
            add(f"Epoch 2+ start, {c.name}", statistics.median(c.start_latency) * 1e3, 50, "<", min(c.start_latency) * 1e3,
                "best column: fastest epoch start")
    lines = ["| target | measured (median) | best repetition | threshold | result | context |", "|:--|---:|---:|---:|:--|:--|"]
    for name, value, best, thr, res, ctx in rows:
        lines.append(f"| {name} | {value} | {best} | {thr} | **{res}** | {ctx} |")
    return "\n".join(lines), rows


def write_report(path, body):
    tail = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if ANALYSIS_MARKER in text:
            tail = text[text.index(ANALYSIS_MARKER) + len(ANALYSIS_MARKER):]
    with open(path, "w") as f:
        f.write(body.rstrip() + "\n\n" + ANALYSIS_MARKER + (tail if tail else "\n"))

