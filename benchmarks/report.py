"""Report: the Markdown tables and the PNG chart from the measured records."""

import argparse
import datetime
import json
import os
import platform
import statistics

ANALYSIS_MARKER = "<!-- Everything below this line is hand-written analysis; benchmarks/run.py keeps it when it rewrites this file. -->"
PATH_TITLES = {
    "numpy": "numpy path (Keras's EpochIterator over `get_numpy_iterator`; peers iterated directly)",
    "tf": "TensorFlow fit path (`get_tf_dataset()` through `TFEpochIterator`, a `tf.function` step per batch)",
    "tf32": "TensorFlow fit path with `steps_per_execution=32` (32 `next()` per `tf.function` call, as `compile(steps_per_execution=32)`)",
    "jax": "JAX fit path (`get_jax_iterator()` through `JAXEpochIterator`)",
    "torch": "torch fit path (`get_torch_dataloader()` through `TorchEpochIterator`)",
    "tf-fit": "End-to-end `model.fit`, TensorFlow backend (a one-layer model, input-bound; one `fit(epochs=1)` per timed epoch; peers passed to `fit` as they are)",
    "jax-fit": "End-to-end `model.fit`, JAX backend (same model and rules)",
    "torch-fit": "End-to-end `model.fit`, torch backend (same model and rules)",
}
PATH_ORDER = tuple(PATH_TITLES)


def median(record):
    return statistics.median(record["rates"])


def _find(records, path, workload, config):
    for r in records:
        if r["path"] == path and r["workload"] == workload and r["config"] == config and "rates" in r:
            return r
    return None


def _best(records, path, workload, family):
    rows = [r for r in records if r["path"] == path and r["workload"] == workload and r["family"] == family and "rates" in r]
    return max(rows, key=median) if rows else None


def _ratio(a, b):
    return f"{median(a) / median(b):.2f}×" if a and b else "–"


def tables(records):
    out = []
    paths = [p for p in PATH_ORDER if any(r["path"] == p for r in records)]
    for path in paths:
        rows = [r for r in records if r["path"] == path]
        out.append(f"### {PATH_TITLES[path]}\n")
        out.append("| workload | configuration | batches/s (median of 3) | spread (min–max) | µs/batch | × plain loop | × Keras's best | epoch (batches, s) | first epoch s |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if "rates" not in r:
                out.append(f"| {r['workload']} | {r['config']} | failed: {r['error']} | | | | | | |")
                continue
            m = median(r)
            plain = _find(records, "numpy", r["workload"], "plain loop")
            keras = _best(records, path, r["workload"], "keras")
            out.append(
                f"| {r['workload']} | {r['config']} | {m:,.0f} | {min(r['rates']):,.0f}–{max(r['rates']):,.0f} | "
                f"{1e6 / m:,.1f} | {_ratio(r, plain)} | {_ratio(r, keras)} | {r['n']:,} in {min(r['epoch_s']):.2f}–{max(r['epoch_s']):.2f} | "
                f"{r['first_epoch_s']:.2f} |"
            )
        out.append("")
    return "\n".join(out)


def targets(records):
    """The issue's targets, PASS/MISS, from this run's ratios."""
    lines = []

    def check(name, value, goal):
        if value is None:
            lines.append(f"- {name}: not measured")
        else:
            lines.append(f"- {'PASS' if value >= goal else 'MISS'} {name}: {value:.2f}× (target ≥ {goal}×)")

    def rate(path, workload, config):
        r = _find(records, path, workload, config)
        return median(r) if r else None

    def div(a, b):
        return a / b if a and b else None

    plain = rate("numpy", "tiny", "plain loop")
    check("tiny, seqify 2 threads vs plain loop (numpy path)", div(rate("numpy", "tiny", "seqify, 2 threads"), plain), 0.5)
    check("tiny, seqify 2 processes vs plain loop (numpy path)", div(rate("numpy", "tiny", "seqify, 2 processes"), plain), 0.25)
    for path in ("numpy", "jax", "torch"):
        keras1 = rate(path, "tiny", "Keras PyDataset, workers=1")
        for config in ("seqify, workers=0", "seqify, 1 thread (default)", "seqify, 2 threads", "seqify, 2 processes"):
            if keras1 and rate(path, "tiny", config):
                check(f"tiny, {config} vs Keras workers=1 ({path} path, never slower)", div(rate(path, "tiny", config), keras1), 1.0)
    for path in ("tf", "tf32"):
        keras_tf = _best(records, path, "tiny", "keras")
        seq_tf = _best(records, path, "tiny", "seqify")
        check(f"tiny, {path} path: seqify's best vs Keras's best get_tf_dataset", div(seq_tf and median(seq_tf), keras_tf and median(keras_tf)), 5.0)
    for workload in ("large_payload", "large_recycled", "numpy_gil_free", "python_gil"):
        seq_tf = _best(records, "tf", workload, "seqify")
        seq_np = _best(records, "numpy", workload, "seqify")
        if seq_tf and seq_np:
            check(f"{workload}, TF path vs seqify's numpy path (best settings)", median(seq_tf) / median(seq_np), 0.9)
    floor = rate("numpy", "tiny", "Keras's EpochIterator alone, bare adapter (floor)")
    if floor and plain:
        # fn(i) plus Keras's own per-step cost: no source driven by fit can beat it.
        bound = 1.0 / (1.0 / plain + 1.0 / floor)
        lines.append(f"- (context) tiny, numpy path: Keras's EpochIterator alone steps at {floor:,.0f}/s here, so a "
                     f"source that adds nothing to fn(i) would reach {bound / plain:.2f}× the plain loop through fit")
    for path in ("tf", "tf32"):
        ceiling = rate(path, "tiny", "tf.data in-graph dataset (ceiling)")
        best = _best(records, path, "tiny", "seqify")
        if ceiling and best:
            lines.append(f"- (context) tiny, {path} path: a dataset built in the graph (no Python at all) steps at {ceiling:,.0f}/s "
                         f"here; seqify's best reaches {median(best) / ceiling:.2f}× of that ceiling")
    for path in ("tf-fit", "jax-fit", "torch-fit"):
        for workload in dict.fromkeys(r["workload"] for r in records if r["path"] == path):
            seq = _best(records, path, workload, "seqify")
            keras_best = _best(records, path, workload, "keras")
            if not (seq and keras_best):
                continue
            peers = "; ".join(f"{r['config']} {median(r):,.0f}/s" for r in records
                              if r["path"] == path and r["workload"] == workload and r["family"] in ("torch", "grain") and "rates" in r)
            lines.append(f"- (measured) {workload}, {path}: seqify's best ({seq['config']}) {median(seq):,.0f} steps/s, "
                         f"Keras's best ({keras_best['config']}) {median(keras_best):,.0f}: {median(seq) / median(keras_best):.2f}×"
                         + (f"; {peers}" if peers else ""))
    return "\n".join(lines)


def chart(records, path_png):
    """Grouped bars, one panel per path: batches/s per workload and configuration (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [p for p in PATH_ORDER if any(r["path"] == p and "rates" in r for r in records)]
    # One colour per configuration in every panel (tab20: no repeats up to 20 rows).
    every_config = list(dict.fromkeys(r["config"] for r in records if "rates" in r))
    palette = plt.get_cmap("tab20")
    colour = {config: palette(i % 20) for i, config in enumerate(every_config)}
    fig, axes = plt.subplots(len(paths), 1, figsize=(14, 3.6 * len(paths)), squeeze=False)
    for ax, path in zip(axes[:, 0], paths):
        rows = [r for r in records if r["path"] == path and "rates" in r]
        workloads = list(dict.fromkeys(r["workload"] for r in rows))
        configs = list(dict.fromkeys(r["config"] for r in rows))
        width = 0.8 / len(configs)
        for j, config in enumerate(configs):
            xs, ys, errs = [], [], [[], []]
            for i, workload in enumerate(workloads):
                r = _find(records, path, workload, config)
                if r is None:
                    continue
                m = median(r)
                xs.append(i + (j - (len(configs) - 1) / 2) * width)
                ys.append(m)
                errs[0].append(m - min(r["rates"]))
                errs[1].append(max(r["rates"]) - m)
            ax.bar(xs, ys, width, yerr=errs, label=config, capsize=2, color=colour[config])
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads)
        ax.set_ylabel("batches/s (log)")
        ax.set_title(f"{path} path", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)


def write(path_md, body):
    """Writes `body` to `path_md`, keeping hand-written analysis below the marker."""
    analysis = ""
    try:
        with open(path_md) as f:
            old = f.read()
        if ANALYSIS_MARKER in old:
            analysis = old[old.index(ANALYSIS_MARKER) + len(ANALYSIS_MARKER):]
    except FileNotFoundError:
        pass
    with open(path_md, "w") as f:
        f.write(body.rstrip() + "\n\n" + ANALYSIS_MARKER + analysis)


def render(records, quick=False, minutes=0.0, target=1.0):
    """The whole RESULTS.md body (above the analysis marker)."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (0, 0, 0)
    return f"""# seqify benchmark results

Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `python -m benchmarks.run{' --quick' if quick else ''}`,
{minutes:.1f} min; {os.cpu_count()} cores, Python {platform.python_version()}, load average when written
{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the machine is shared with other sessions: their load is in these
numbers, so read medians and spreads, not single figures).

Each row: a fresh object, one warm-up epoch (pool start-up, "first epoch"), then 3 timed epochs of
the length shown (calibrated to last ≥ {target:g} s; the epoch column gives each row's batches and the
min–max seconds); batches/s is the median, the spread is the min–max of the 3. "× plain loop"
divides by the plain loop `fn(i)` on the same workload; "× Keras's best" by the fastest Keras
PyDataset setting on the same path. Peers (torch DataLoader, Grain) are iterated directly on the numpy path and passed to `fit` as they are on the `*-fit` paths.

![batches/s per workload and configuration](results.png)

## Targets (issue 9)

{targets(records)}

## Tables

{tables(records)}
"""


def main(argv=None):
    """Rebuilds RESULTS.md and results.png from saved records (`results.json` files, merged)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("records", nargs="+")
    parser.add_argument("--out", default="benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=0.0)
    args = parser.parse_args(argv)
    records = []
    for path in args.records:
        with open(path) as f:
            records += json.load(f)
    folder = os.path.dirname(args.out) or "."
    chart(records, os.path.join(folder, "results.png"))
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(records, f, indent=0)
    write(args.out, render(records, args.quick, args.minutes))


if __name__ == "__main__":
    main()
