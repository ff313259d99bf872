"""seqify benchmark suite: every configuration on the path `fit` takes per backend.

    python -m benchmarks.run [--quick] [--out benchmarks/RESULTS.md] [--backends tensorflow,jax,torch]

Modules: `workloads` (batch functions), `configurations` (the rows: plain
loop, Keras PyDataset, seqify, torch DataLoader, Grain), `measure` (one
backend per process: calibrated epochs, medians of 3), `report` (Markdown
tables, targets, PNG chart). This module starts one `measure` process per
backend (KERAS_BACKEND is fixed at import), streams their progress, then
writes `RESULTS.md` and `results.png` next to it.
The older suite's extra sections (memory, epoch start with big state,
transport, end-to-end fit) remain in `benchmarks/extras/`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import configurations, report


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="three workloads, fewer rows: about 25 min on 2 busy cores")
    parser.add_argument("--out", default="benchmarks/RESULTS.md")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--workloads", default=None)
    parser.add_argument("--target", type=float, default=1.0, help="seconds per timed epoch (at least)")
    parser.add_argument("--only", default=None, help="configuration names (comma-separated substrings)")
    parser.add_argument("--paths", default=None, help="fit paths to run (numpy, tf, tf32, jax, torch; default all)")
    args = parser.parse_args(argv)
    started = time.time()
    records = []
    for backend in args.backends.split(","):
        print(f"== {backend} backend ({time.time() - started:.0f} s)", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        command = [sys.executable, "-m", "benchmarks.measure", "--backend", backend, "--json", out, "--target", str(args.target)]
        if args.quick:
            command.append("--quick")
        if args.workloads:
            command += ["--workloads", args.workloads]
        if args.only:
            command += ["--only", args.only]
        if args.paths:
            paths = [p for p in args.paths.split(",") if p in configurations.PATHS[backend]]
            if not paths:
                continue
            command += ["--paths", ",".join(paths)]
        env = dict(os.environ, KERAS_BACKEND=backend)
        code = subprocess.call(command, env=env, stderr=subprocess.DEVNULL)
        try:
            with open(out) as f:
                records += json.load(f)
        except (OSError, ValueError):
            print(f"   {backend}: no results (exit code {code})", flush=True)
        finally:
            if os.path.exists(out):
                os.unlink(out)
    took = time.time() - started
    png = os.path.join(os.path.dirname(args.out) or ".", "results.png")
    report.chart(records, png)
    with open(os.path.join(os.path.dirname(args.out) or ".", "results.json"), "w") as f:
        json.dump(records, f, indent=0)
    body = report.render(records, quick=args.quick, minutes=took / 60, target=args.target)
    report.write(args.out, body)
    print(f"wrote {args.out} and {png} ({took:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
