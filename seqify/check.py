"""`seqify.check`: measure how batches are built, and pick a workers setting.

Three ways of building the same sample batches are timed against each other:
on the calling thread, on 2 threads, and on 2 processes. From those numbers:

- time per batch: the median of single batches built on the calling thread;
- GIL: the speed-up of 2 threads over the calling thread (about 1x when the
  work holds the GIL, up to 2x when it releases it: numpy, I/O, sleeps);
- transport: the round trip of one ready-made batch through a process
  worker (pipe plus shared memory), sent one at a time;
- picklability: what process workers receive, cloudpickled and unpickled
  (spawn and forkserver workers start from nothing but that pickle).

`decide()` turns the numbers into `{"workers", "use_multiprocessing"}` with
margins wide enough for a noisy, shared machine: thread and calling-thread
rounds are interleaved and summarised by their median, and a setting is only
preferred over another when the measured difference is large. `workers="auto"`
runs the same measurement (`choose_workers`) when the object's pool starts.

This module must not import Keras or TensorFlow: it is imported eagerly by
`seqify/__init__.py`, which worker processes import too.
"""

import dataclasses
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

import cloudpickle
import numpy as np

from seqify._pickling import _find_culprit
from seqify._validation import is_int
from seqify.engine.inline_pool import InlinePool
from seqify.engine.job import Job
from seqify.engine.messages import Task, TaskKind
from seqify.engine.thread_pool import ThreadPool
from seqify.source import IndexSource

clock = time.perf_counter

#: A batch built faster than this is built on the consuming thread
#: (workers=0): handing it to a worker and back costs about as much.
TINY_SECONDS = 1e-3
#: 2 threads must be at least this much faster than one thread to count as
#: "threads help" (perfect is 2x; pure-Python work measures 0.9-1.05x).
THREADS_HELP = 1.3
#: The work holds the GIL when at least this share of GIL probes had to wait
#: for it (pure-Python work measures ~1.0; numpy sorts, BLAS, sleeps and I/O
#: 0.0-0.3, even on a machine busy with other work).
GIL_HELD = 0.5
#: ... or at least this share, when 2 threads were also no faster than
#: THREADS_HELP. A busy machine makes the probe find the GIL free while the
#: builder thread merely waits for a core (pure-Python work measured 0.17-0.43
#: at load average 8 on 2 cores); GIL-releasing work stays below ~0.07
#: (sleeps, I/O) to ~0.3 (numpy sorts), so the thread speed-up decides there.
GIL_HELD_SLOW_THREADS = 0.1
#: Seconds the GIL probe runs, in GIL_SEGMENTS parts (the share is their median).
GIL_PROBE_SECONDS = 0.4
GIL_SEGMENTS = 5
#: Processes are preferred over threads that help only if this much faster.
PROCESSES_BETTER = 1.25
#: Process workers are not worth it when moving a batch costs this fraction
#: of building it (the main process pays the receiving side of every batch).
TRANSPORT_LIMIT = 0.5
#: The most workers "auto" picks (one per core up to this).
MAX_AUTO_WORKERS = 8
#: Seconds of measuring per way of building (calling thread + threads, processes).
BUDGET_SECONDS = 1.0
#: Process workers that need longer than this to start are not measured.
PROCESS_START_LIMIT = 6.0
ROUNDS = 5
SAMPLE_TASKS = 16  # distinct sample batches (reused round after round)
STREAM_SAMPLES = 4


@dataclasses.dataclass
class ArrayInfo:
    """One array of a batch: where it sits, its shape, dtype and size."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    nbytes: int


@dataclasses.dataclass
class Measurement:
    """What `check` measured (None: not measured). Times are in seconds."""

    description: str = ""
    parallel: bool = True
    structure: List[ArrayInfo] = dataclasses.field(default_factory=list)
    batch_bytes: int = 0
    first_batch_seconds: Optional[float] = None
    seconds_per_batch: Optional[float] = None
    batches_timed: int = 0
    thread_speedup: Optional[float] = None
    thread_rounds: List[float] = dataclasses.field(default_factory=list)
    gil_share: Optional[float] = None
    gil_probes: int = 0
    gil_median_wait: Optional[float] = None
    process_speedup: Optional[float] = None
    process_start_seconds: Optional[float] = None
    transport_seconds: Optional[float] = None
    picklable: Optional[bool] = None
    pickle_problem: Optional[str] = None
    pickled_bytes: Optional[int] = None
    start_method: Optional[str] = None
    cores: int = 1
    notes: List[str] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0


class CheckReport:
    """What `seqify.check` found: print it, or read its attributes.

    Attributes:
        recommendation: `{"workers": int, "use_multiprocessing": bool}`.
        reason: why, in one sentence.
        measurement: the raw numbers (`seqify.check.Measurement`).
    """

    def __init__(self, measurement: Measurement, workers: int, use_multiprocessing: bool, reason: str):
        self.measurement = measurement
        self.recommendation = {"workers": int(workers), "use_multiprocessing": bool(use_multiprocessing)}
        self.reason = reason

    # Shortcuts to the figures users ask for most.
    @property
    def seconds_per_batch(self) -> Optional[float]:
        return self.measurement.seconds_per_batch

    @property
    def thread_speedup(self) -> Optional[float]:
        return self.measurement.thread_speedup

    @property
    def holds_gil(self) -> Optional[bool]:
        """Whether the work holds the GIL (see `Measurement.gil_share`)."""
        return _holds_gil(self.measurement)

    @property
    def transport_seconds(self) -> Optional[float]:
        return self.measurement.transport_seconds

    @property
    def picklable(self) -> Optional[bool]:
        return self.measurement.picklable

    def __repr__(self) -> str:
        rec = self.recommendation
        return f"<seqify.check report: workers={rec['workers']}, use_multiprocessing={rec['use_multiprocessing']}>"

    def __str__(self) -> str:
        m = self.measurement
        lines = [f"seqify.check: {m.description} (measured in {m.elapsed:.1f} s, {m.cores} cores)"]
        if m.structure:
            lines.append(f"  batch structure ({_bytes(m.batch_bytes)} per batch):")
            width = max(len(a.name) for a in m.structure)
            shape_width = max(len(str(a.shape)) for a in m.structure)
            for a in m.structure:
                lines.append(f"    {a.name:<{width}}  {str(a.shape):<{shape_width}}  {a.dtype:<8} {_bytes(a.nbytes)}")
        if m.seconds_per_batch is not None:
            first = ""
            if m.first_batch_seconds is not None and m.first_batch_seconds > 3 * m.seconds_per_batch + 1e-3:
                first = f"; the first took {_seconds(m.first_batch_seconds)}"
            lines.append(f"  time per batch:   {_seconds(m.seconds_per_batch)} (median of {m.batches_timed}, calling thread{first})")
        tiny = m.seconds_per_batch is not None and m.seconds_per_batch < TINY_SECONDS
        if m.thread_speedup is not None:
            rounds = ", ".join(f"{r:.2f}" for r in m.thread_rounds)
            lines.append(f"  2 threads:        {m.thread_speedup:.2f}x the calling thread (median of rounds {rounds})")
        if m.gil_share is not None:
            if tiny:
                verdict = "batches too small to matter"
            elif _holds_gil(m):
                verdict = "holds the GIL: threads cannot run it in parallel"
            else:
                verdict = "releases the GIL: threads can run it in parallel"
            lines.append(
                f"  GIL:              held {100 * m.gil_share:.0f}% of the time (a thread asking for it waited "
                f"{_seconds(m.gil_median_wait)}, median of {m.gil_probes}) -> {verdict}"
            )
        if m.process_speedup is not None:
            start = f"; workers started in {_seconds(m.process_start_seconds)}" if m.process_start_seconds is not None else ""
            lines.append(f"  2 processes:      {m.process_speedup:.2f}x ({m.start_method}{start})")
        if m.transport_seconds is not None:
            share = ""
            if m.seconds_per_batch:
                share = f", {100 * m.transport_seconds / m.seconds_per_batch:.0f}% of building one"
            lines.append(f"  transport:        {_seconds(m.transport_seconds)} per batch between processes (round trip{share})")
        if m.picklable is True:
            lines.append(f"  picklable:        yes ({_bytes(m.pickled_bytes or 0)} to each process worker; spawn/forkserver workers can rebuild it)")
        elif m.picklable is False:
            lines.append(f"  picklable:        NO, process workers cannot receive it: {m.pickle_problem}")
        for note in m.notes:
            lines.append(f"  note: {note}")
        rec = self.recommendation
        lines.append(f"  recommendation:   workers={rec['workers']}, use_multiprocessing={rec['use_multiprocessing']}")
        lines.append(f"    because {self.reason}")
        return "\n".join(lines)


# -- formatting ------------------------------------------------------------------


def _seconds(s: Optional[float]) -> str:
    if s is None:
        return "?"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _structure(batch) -> List[ArrayInfo]:
    names = ("x", "y", "sample_weight")
    out = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}[{key!r}]" if path else str(key))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            array = np.asarray(value)
            out.append(ArrayInfo(path, tuple(array.shape), str(array.dtype), int(array.nbytes)))

    if isinstance(batch, tuple):
        for i, item in enumerate(batch):
            walk(item, names[i] if i < len(names) else f"[{i}]")
    else:
        walk(batch, "")
    return out


# -- what to measure -------------------------------------------------------------


@dataclasses.dataclass
class _Target:
    """The job and sample tasks of one object, whatever kind of source it has."""

    description: str
    parallel: bool
    make_job: Any  # () -> Job: a fresh job per way of building
    tasks: List[Task]  # distinct sample tasks, reused in every round
    pinned: bool  # tasks must stay on the worker they name (sharded streams)
    start_method: Optional[str]
    problem_parts: List[Tuple[str, Any]]  # (argument name, object) to blame if the job won't pickle


def _sharded_tasks(count: int, workers: int) -> List[Task]:
    # Throwaway shard tasks: item g of shard g % workers. They run on jobs of
    # their own (fresh shard generators), never on the object's workers, so
    # the object's stream is not advanced.
    return [Task(TaskKind.SHARD, 0, i, worker=i % workers) for i in range(count)]


def _target_for_runner(runner, count: int) -> _Target:
    source = runner.source
    settings = runner.settings
    name = getattr(runner, "name", "seqify")
    n = source.num_batches()
    description = f"{name}, {'infinite' if n is None else n} batches per epoch"
    if source.samples_on_pool:  # a sharded stream: its samples would be real items
        tasks = _sharded_tasks(count, 1)
        pinned = True
    else:
        if not source.reorders:
            # A stream: items are read (and put back) only to be transformed;
            # a few are enough, reading more only delays the first pass.
            count = min(count, STREAM_SAMPLES)
        tasks = list(source.sample_tasks(count, runner.state, 0))
        pinned = False
    job = source.make_job()
    fetch = job.fetch
    dataset = getattr(fetch, "_ref", None)  # a Sequence subclass ships itself
    parts = [("the dataset", dataset()) if dataset is not None else ("fn", fetch), ("transform", job.transform)]
    if job.shard_source is not None:
        parts.append(("source", job.shard_source[0]))
        parts.append(("args/kwargs", job.shard_source[1:]))
    return _Target(description, source.parallel, source.make_job, tasks, pinned, settings.start_method, parts)


class _Item:
    """`obj[i]` of a random-access object that is not a seqify Sequence."""

    def __init__(self, obj):
        self.obj = obj

    def __call__(self, index):
        return self.obj[index]


def _target_for(obj, count: int) -> _Target:
    """The target for an object `check` accepts that is not a seqify Sequence."""
    if isinstance(obj, type):
        raise TypeError(f"`obj` must be a dataset or batch function, not the class {obj.__name__}: pass an instance.")
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, dict)):
        n = len(obj)
        if n < 1:
            raise ValueError(f"`obj` ({type(obj).__name__}) has len() {n}: there is no batch to measure.")
        source = IndexSource(_Item(obj), n, 0)
        description = f"{type(obj).__name__}, {n} batches"
        parts = [("obj", obj)]
    elif hasattr(obj, "__next__") or (hasattr(obj, "__iter__") and not callable(obj)):
        raise TypeError(
            f"`obj` is an iterator ({type(obj).__name__}): measuring it would consume batches. Wrap it "
            "first, seqify.check(seqify.from_generator(gen, steps_per_epoch=N)); batches read to measure "
            "a seqify stream are put back, none is lost."
        )
    elif callable(obj):
        source = IndexSource(obj, None, 0)
        description = f"batch function {getattr(obj, '__qualname__', type(obj).__name__)}"
        parts = [("fn", obj)]
    else:
        raise TypeError(
            f"`obj` must be a seqify object, a Keras PyDataset (anything with __len__ and __getitem__) "
            f"or a batch function fn(i) -> batch; got {type(obj).__name__}."
        )
    tasks = source.sample_tasks(count, None, 0)
    return _Target(description, True, source.make_job, tasks, False, None, parts)


# -- measuring -------------------------------------------------------------------


def _cycle(tasks: List[Task], count: int, offset: int = 0) -> List[Task]:
    return [tasks[(offset + i) % len(tasks)] for i in range(count)]


def _run_inline(job, tasks) -> List[float]:
    pool = InlinePool(job)
    times = []
    for task in tasks:
        started = clock()
        pool.submit(task).result()
        times.append(clock() - started)
    return times


def _run_pool(pool, tasks) -> float:
    started = clock()
    handles = [pool.submit(task) for task in tasks]
    for handle in handles:
        handle.result()
    return clock() - started


def _for_workers(tasks, workers, pinned):
    """Pins tasks round-robin (sharded streams need a worker per task; a
    pinned warm-up reaches every worker)."""
    if pinned:
        return [dataclasses.replace(t, worker=i % workers) for i, t in enumerate(tasks)]
    return tasks


def _plan(per_batch: float, batches: Optional[int]) -> Tuple[int, int]:
    """`(rounds, batches per round on the calling thread)` within the budget."""
    if batches is not None:
        rounds = min(ROUNDS, max(1, batches // 2))
        return rounds, max(1, batches // rounds)
    # A round costs about 2x its calling-thread part (threads build 2x as
    # many batches, at best 2x as fast).
    per_round = BUDGET_SECONDS / ROUNDS / 2
    m = int(per_round / max(per_batch, 1e-6))
    if m >= 1:
        return ROUNDS, min(m, 200)
    rounds = max(1, min(ROUNDS, int(BUDGET_SECONDS / (3 * per_batch))))
    return rounds, 1


def _measure_threads(target: _Target, m: Measurement, batches: Optional[int]) -> None:
    job = target.make_job()
    # Warm-up (imports, caches, a generator's start) and a first estimate.
    times = _run_inline(job, _cycle(target.tasks, 2))
    m.first_batch_seconds = times[0]
    rounds, per_round = _plan(times[1], batches)
    pool = ThreadPool(job, 2, "seqify-check")
    per_batch = []
    ratios = []
    try:
        _run_pool(pool, _for_workers(_cycle(target.tasks, 2), 2, target.pinned))  # start both threads
        offset = 0
        for r in range(rounds):
            inline_tasks = _cycle(target.tasks, per_round, offset)
            thread_tasks = _for_workers(_cycle(target.tasks, 2 * per_round, offset), 2, target.pinned)
            offset += per_round
            # Alternate which goes first, so that a drift in machine load
            # does not always favour the same side.
            if r % 2 == 0:
                inline = _run_inline(job, inline_tasks)
                threaded = _run_pool(pool, thread_tasks)
            else:
                threaded = _run_pool(pool, thread_tasks)
                inline = _run_inline(job, inline_tasks)
            per_batch.extend(inline)
            ratios.append((sum(inline) / len(inline)) / (threaded / len(thread_tasks)))
    finally:
        pool.close()
    m.seconds_per_batch = statistics.median(per_batch)
    m.batches_timed = len(per_batch)
    m.thread_rounds = ratios
    m.thread_speedup = statistics.median(ratios)


def _measure_gil(target: _Target, m: Measurement) -> None:
    """How much of the time the work holds the GIL.

    One thread builds batches non-stop while this thread sleeps 0.5 ms at a
    time and notes how late it wakes. A sleeper needs the GIL back to wake;
    if the builder holds it, the sleeper waits for the interpreter's forced
    switch (`sys.getswitchinterval()`, 5 ms), otherwise it is back within
    ~0.1 ms. Unlike a speed-up, this does not depend on idle cores: other
    processes keeping the machine busy delay both sides alike.
    """
    job = target.make_job()
    tasks = target.tasks
    stop = threading.Event()
    failure = []

    def build():
        pool = InlinePool(job)
        i = 0
        try:
            while not stop.is_set():
                pool.submit(tasks[i % len(tasks)]).result()
                i += 1
        except BaseException as exc:
            failure.append(exc)

    builder = threading.Thread(target=build, name="seqify-check-gil", daemon=True)
    builder.start()
    nap = 0.0005
    late = max(1e-3, 0.4 * sys.getswitchinterval())
    waits = []
    shares = []
    try:
        time.sleep(0.01)  # let the builder get going
        segment = max(GIL_PROBE_SECONDS, min(1.0, 2 * (m.seconds_per_batch or 0.0))) / GIL_SEGMENTS
        for _ in range(GIL_SEGMENTS):
            end = clock() + segment
            part = []
            while clock() < end and not failure:
                started = clock()
                time.sleep(nap)
                part.append(clock() - started - nap)
            if part:
                shares.append(sum(w >= late for w in part) / len(part))
                waits.extend(part)
    finally:
        stop.set()
        builder.join()
    if failure:
        raise failure[0]
    if waits:
        m.gil_probes = len(waits)
        m.gil_share = statistics.median(shares)
        m.gil_median_wait = max(0.0, statistics.median(waits))


def _holds_gil(m: Measurement) -> Optional[bool]:
    slow_threads = m.thread_speedup is not None and m.thread_speedup < THREADS_HELP
    if m.gil_share is not None:
        return m.gil_share >= GIL_HELD or (slow_threads and m.gil_share >= GIL_HELD_SLOW_THREADS)
    if m.thread_speedup is not None:
        return m.thread_speedup < THREADS_HELP
    return None


def _check_pickle(target: _Target, m: Measurement) -> None:
    job = target.make_job()
    try:
        data = cloudpickle.dumps(job)
        cloudpickle.loads(data)
    except Exception as exc:
        m.picklable = False
        culprit = None
        for argument, value in target.problem_parts:
            if value is None:
                continue
            try:
                cloudpickle.loads(cloudpickle.dumps(value))
            except Exception:
                found = _culprit(value)
                culprit = f"`{argument}`" + (f": {found}" if found else "")
                break
        m.pickle_problem = f"{type(exc).__name__}: {exc}" + (f" (the culprit is {culprit})" if culprit else "")
        return
    m.picklable = True
    m.pickled_bytes = len(data)


def _culprit(value) -> Optional[str]:
    sequence_module = sys.modules.get("seqify.sequence")
    if sequence_module is not None and isinstance(value, sequence_module.Sequence):
        # What travels is its __dict__ without the runner (see Sequence.__reduce_ex__).
        for name, item in value.__dict__.items():
            if name == "_seqify_runner":
                continue
            try:
                cloudpickle.dumps(item)
            except Exception:
                return f"attribute `{name}` ({type(item).__module__}.{type(item).__qualname__})"
        return None
    return _find_culprit(value)


class _Echo:
    """A batch function that returns one ready batch: measures transport alone."""

    def __init__(self, batch):
        self.batch = batch

    def __call__(self, index):
        return self.batch


def _measure_processes(target: _Target, m: Measurement, sample_batch, batches: Optional[int]) -> None:
    from seqify.engine.process_pool import ProcessPool
    from seqify.start_methods import start_method_for

    method = start_method_for(target.start_method)
    m.start_method = method
    pool = ProcessPool(target.make_job(), 2, method, "seqify-check", max_slots=4)
    outcome = {}

    def trial():
        started = clock()
        _run_pool(pool, _for_workers(_cycle(target.tasks, 2), 2, True))  # one per worker: both started
        outcome["start"] = clock() - started
        rounds, per_round = _plan(m.seconds_per_batch or 1e-3, batches)
        rounds = max(1, min(3, rounds))
        walls = []
        for r in range(rounds):
            tasks = _for_workers(_cycle(target.tasks, 2 * per_round, r), 2, target.pinned)
            walls.append(_run_pool(pool, tasks) / len(tasks))
        outcome["per_batch"] = statistics.median(walls)
        # Transport: a ready-made batch (or, for a stream, the item itself)
        # sent one at a time, so nothing overlaps the round trip.
        echo_tasks = [t for t in target.tasks if t.kind == TaskKind.TRANSFORM]
        if echo_tasks:
            pool.update(Job())  # no transform: the item comes straight back
        else:
            pool.update(Job(fetch=_Echo(sample_batch)))
            echo_tasks = [Task(TaskKind.FETCH, 0, i) for i in range(len(target.tasks))]
        trips = []
        deadline = clock() + BUDGET_SECONDS / 2
        for i in range(40):
            task = dataclasses.replace(echo_tasks[i % len(echo_tasks)], worker=i % 2)
            started = clock()
            batch = pool.submit(task).result()
            trips.append(clock() - started)
            del batch  # frees the shared-memory slot for the next trip
            if i >= 4 and clock() > deadline:
                break
        outcome["transport"] = statistics.median(trips)

    def run_trial():
        try:
            trial()
        except BaseException as exc:  # reported below, on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run_trial, name="seqify-check-processes", daemon=True)
    thread.start()
    limit = PROCESS_START_LIMIT + 4 * BUDGET_SECONDS + 6 * (m.seconds_per_batch or 0.0)
    thread.join(limit)
    if thread.is_alive():
        # Stuck (a slow start, or a batch that never ends): kill the workers,
        # which makes the waiting trial raise, then clean up.
        for pid in pool.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        thread.join(5.0)
        m.notes.append(f"process workers did not finish the trial within {limit:.0f} s; not measured")
    pool.close()
    error = outcome.get("error")
    if error is not None and "start" not in outcome:
        m.picklable = False
        m.pickle_problem = f"process workers could not start it ({method}): {type(error).__name__}: {error}"
        return
    if error is not None and not thread.is_alive():
        m.notes.append(f"process trial failed: {type(error).__name__}: {error}")
    m.process_start_seconds = outcome.get("start")
    if "per_batch" in outcome and m.seconds_per_batch:
        m.process_speedup = m.seconds_per_batch / outcome["per_batch"]
    m.transport_seconds = outcome.get("transport")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def measure(target: _Target, batches: Optional[int] = None, *, full: bool = True) -> Measurement:
    """Times `target` on the calling thread, 2 threads and 2 processes.

    Args:
        full: measure processes even when the decision does not need them
            (`check` does; `workers="auto"` skips them when threads clearly
            win or batches are tiny, to start its pool sooner).
    """
    started = clock()
    m = Measurement(description=target.description, parallel=target.parallel, cores=cores())
    job = target.make_job()
    first = InlinePool(job).submit(target.tasks[0]).result()
    m.structure = _structure(first)
    m.batch_bytes = sum(a.nbytes for a in m.structure)
    if not target.parallel:
        # An untransformed stream: the batch is the item itself, read on
        # the consuming thread; there is no work a worker could take.
        m.seconds_per_batch = statistics.median(_run_inline(job, _cycle(target.tasks, 4)))
        m.batches_timed = 4
        m.elapsed = clock() - started
        return m
    _measure_threads(target, m, batches)
    tiny = m.seconds_per_batch < TINY_SECONDS
    if full or not tiny:
        _measure_gil(target, m)
    # Processes are the choice for GIL-holding work, and can otherwise only
    # win if threads reached less than 2x / PROCESSES_BETTER.
    needed = not tiny and (_holds_gil(m) or m.thread_speedup < 2 / PROCESSES_BETTER)
    if full or needed:
        _check_pickle(target, m)
    if m.picklable and (full or needed):
        _measure_processes(target, m, first, batches)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if load > m.cores:
        m.notes.append(
            f"the machine is busy (load average {load:.1f} on {m.cores} cores): speed-ups measured now "
            "understate what workers gain on an idle machine; the recommendation rests mainly on the GIL probe, "
            "which load disturbs less"
        )
    m.elapsed = clock() - started
    return m


def decide(m: Measurement) -> Tuple[int, bool, str]:
    """`(workers, use_multiprocessing, reason)` for a measurement."""
    n = max(1, min(m.cores, MAX_AUTO_WORKERS))
    if not m.parallel:
        return 0, False, "an untransformed stream has no work for workers: one thread reads it, in order"
    per_batch = m.seconds_per_batch
    if per_batch < TINY_SECONDS:
        return 0, False, (
            f"a batch takes {_seconds(per_batch)} to build: handing it to a worker and back costs "
            "about as much, so it is built on the consuming thread"
        )
    threads = m.thread_speedup
    holds = _holds_gil(m)
    gil = f"the work holds the GIL ({100 * m.gil_share:.0f}% of the time; 2 threads: {threads:.2f}x)" if m.gil_share is not None else f"the work holds the GIL (2 threads: {threads:.2f}x)"
    if m.cores < 2:
        return 1, False, "there is one core: one thread overlaps building with training, more have no core to run on"
    transport = m.transport_seconds
    processes_ok = bool(m.picklable) and (transport is None or transport < TRANSPORT_LIMIT * per_batch)
    processes_better = (
        processes_ok and m.process_speedup is not None and m.process_speedup >= THREADS_HELP
        and m.process_speedup >= PROCESSES_BETTER * threads
    )
    if not holds and not processes_better:
        held = f"held {100 * m.gil_share:.0f}% of the time, " if m.gil_share is not None else ""
        return n, False, (
            f"the work releases the GIL ({held}2 threads: {threads:.2f}x): threads run it in parallel and "
            f"share the object, nothing is copied ({n} = one per core)"
        )
    if processes_ok:
        if not holds:
            why = f"2 processes ran {m.process_speedup:.2f}x, 2 threads only {threads:.2f}x"
        else:
            why = f"{gil}, so only processes run it in parallel"
        cost = "" if transport is None else f"; a batch moves between processes in {_seconds(transport)}"
        return n, True, f"{why}{cost} ({n} = one per core)"
    if not m.picklable:
        return 1, False, (
            f"{gil} but cannot go to process workers "
            f"({m.pickle_problem}); one thread still overlaps building with training"
        )
    return 1, False, (
        f"{gil}, but moving a batch between processes "
        f"({_seconds(transport)}) costs {100 * transport / per_batch:.0f}% of building it; one thread "
        "overlaps building with training"
    )


def check(obj, *, batches: Optional[int] = None) -> CheckReport:
    """Measures how `obj` builds batches and recommends a workers setting.

    Builds a few sample batches on the calling thread, then on 2 threads,
    then on 2 processes (about 3 s in all; batches slower than 0.2 s take
    about a dozen batch times), and reports: the batch structure (shapes,
    dtypes, bytes), the time per batch, whether the work holds the GIL (the
    speed-up of 2 threads, and a probe of how long a thread waits for the
    GIL while the work runs), the cost of moving a batch between processes,
    whether process workers can receive the object (it is cloudpickled, as
    spawn and forkserver workers need; the culprit is named if not) and a
    recommendation with its reason. `obj` is not changed: its epoch does not
    advance, and a stream's batches read to measure are put back.

    The decision rests on measures that stay stable on a busy machine: the
    time per batch (tiny: < 1 ms -> workers=0), the GIL probe (held >= 50%
    of the time -> processes, if picklable and a batch moves in less than
    half its build time), and medians of interleaved rounds for speed-ups,
    with wide margins (processes replace threads for GIL-releasing work only
    when >= 1.25x faster).
    `workers="auto"` runs the same measurement when an object's pool starts.

    Args:
        obj: a seqify object, a Keras `PyDataset` (anything with `__len__`
            and `__getitem__`), or a batch function `fn(i) -> batch`
            (called with i = 0, 1, 2, ...).
        batches: how many batches each way of building builds (>= 2); None
            chooses from the time per batch.

    Returns:
        A `CheckReport`: `print(report)` for the summary;
        `report.recommendation` is `{"workers": int, "use_multiprocessing": bool}`.

    Raises:
        TypeError: `obj` is an iterator (measuring would consume it: wrap it
            with `seqify.from_generator` first) or not a dataset.
        ValueError: `batches` < 2.

    Example:

    ```python
    report = seqify.check(ds)
    print(report)
    ds = seqify.from_batch_fn(fn, 100, **report.recommendation)
    ```
    """
    if batches is not None and (not is_int(batches) or batches < 2):
        raise ValueError(f"`batches` must be an int >= 2 (batches built per measurement) or None; got {batches!r}.")
    count = SAMPLE_TASKS if batches is None else max(2, min(int(batches), SAMPLE_TASKS))
    sequence_module = sys.modules.get("seqify.sequence")
    if sequence_module is not None and isinstance(obj, sequence_module.Sequence):
        runner = obj._runner
        with runner.lock:  # no pass of the object runs meanwhile (a stream's items are read and put back)
            m = measure(_target_for_runner(runner, count), batches)
    else:
        m = measure(_target_for(obj, count), batches)
    workers, use_mp, reason = decide(m)
    return CheckReport(m, workers, use_mp, reason)


def choose_workers(runner) -> Tuple[int, bool, str]:
    """`workers="auto"`: `(workers, use_multiprocessing, reason)` for an `EpochRunner`.

    Called once by the runner (under its lock) before its first pool starts;
    it measures as `check` does, consuming nothing, on pools of its own.
    """
    if not runner.source.parallel:
        return 0, False, "an untransformed stream has no work for workers: one thread reads it, in order"
    m = measure(_target_for_runner(runner, SAMPLE_TASKS), full=False)
    workers, use_mp, reason = decide(m)
    return workers, use_mp, f"{reason}; measured in {m.elapsed:.1f} s"


__all__ = ["check", "CheckReport", "Measurement", "choose_workers", "decide", "measure"]
