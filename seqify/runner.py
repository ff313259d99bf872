"""`EpochRunner`: runs the passes of one seqify object in this process.

It owns what a pass needs and nothing a pickle should carry:
- the epoch cursor (which epoch comes next, and where in it a pass starts),
- the worker pool (started lazily, reused across passes and across
  fit/evaluate/predict, replaced when the settings change or a worker died),
- the source's per-process state (a stream's producer, items read ahead),
- typed caches (the tf.data signature).

A pass is `iter_epoch()`: the source's tasks go through the ordered window
(`seqify.engine.window`) on the pool, and batches come out in the source's
order. A pass stopped early hands its undelivered work back to the source.
"""

import collections
import dataclasses
import logging
import threading
from typing import Callable, Iterator, Optional

from seqify import input_wait
from seqify.engine import errors, tree
from seqify.engine.inline_pool import InlinePool
from seqify.engine.shm_transport import MAX_SLOTS
from seqify.engine.thread_pool import ThreadPool
from seqify.engine.window import ordered
from seqify.settings import AUTO, Settings
from seqify.source import Pass, Source

logger = logging.getLogger("seqify")

#: Version tag of the dicts `get_state()` returns.
STATE_FORMAT = "seqify.state/1"


def check_state(state, fingerprint: dict) -> None:
    """Raises a clear error for a state that is not this object's."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"`state` is not a seqify state (format {got!r}, expected {STATE_FORMAT!r}). "
            "Pass a dict returned by `get_state()` (after a JSON round trip is fine)."
        )
    for key in ("epoch", "position"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`state[{key!r}]` must be an int >= 0; got {value!r}.")
    saved = state.get("object") or {}
    differences = [
        f"{key}: {saved.get(key)!r} in the state, {value!r} here"
        for key, value in fingerprint.items()
        if saved.get(key) != value
    ]
    if differences:
        hint = ""
        if saved.get("seed") != fingerprint.get("seed"):
            hint = " Build the object with an explicit `seed=` (a seed left to None is drawn anew in every run)."
        raise ValueError(
            "This state was saved from a different seqify object (" + "; ".join(differences) + "). "
            "Restoring it would silently change the data. Restore it into the object it came from "
            "(same class, source, number of batches and seed), or start without it (for "
            "seqify.callbacks.BackupAndRestore: delete its backup_dir)." + hint
        )


@dataclasses.dataclass
class Cursor:
    """Where the next pass starts: `position` within `epoch`."""

    epoch: int = 0
    position: int = 0


#: How many delivered batches a consumer that pulled ahead can give back:
#: more than tf.data's chunks (`tf_dataset.MAX_CHUNK`) plus the window plus
#: what tf.distribute or JAX prefetch (1-2 per device)...
GIVE_BACK_LIMIT = 160
#: ...but never more than this many bytes kept alive beyond the newest
#: `GIVE_BACK_MIN` batches (large batches cross one at a time, so few are
#: ever outstanding).
GIVE_BACK_BYTES = 64 << 20
GIVE_BACK_MIN = 32
#: Most batches in flight for a random-access source whose batches are tiny
#: and cheap (see seqify/engine/window.py, "elastic").
ELASTIC_WINDOW = 256


class Delivered:
    """The newest batches a pass delivered, as `(task, batch)`, newest last.

    A consumer that pulls ahead of its own consumer (tf.data's and
    tf.distribute's prefetch, JAX's look-ahead) passes one to `iter_epoch`
    and can later hand back what was pulled but never used
    (`EpochRunner.give_back`), so a stream loses nothing. Bounded by count
    and bytes (see `GIVE_BACK_LIMIT`).
    """

    def __init__(self):
        self.entries = collections.deque()
        self.count = 0
        self.plan = None
        self.given_back = 0
        self._sizes = collections.deque()
        self._bytes = 0

    def record(self, task, batch, item) -> None:
        """`item`: what is kept for giving back (the batch itself, the
        stream item it was built from, or None for index sources)."""
        self.entries.append((task, batch))
        self.count += 1
        size = _nbytes(item)
        self._sizes.append(size)
        self._bytes += size
        entries, sizes = self.entries, self._sizes
        while len(entries) > GIVE_BACK_LIMIT or (len(entries) > GIVE_BACK_MIN and self._bytes > GIVE_BACK_BYTES):
            entries.popleft()
            self._bytes -= sizes.popleft()


def _nbytes(item) -> int:
    if item is None:
        return 0
    return sum(getattr(leaf, "nbytes", 0) for leaf in tree.leaves(item))


class EpochRunner:
    """Runs passes of `source` under `settings` (see module docstring).

    Args:
        source: the object's `seqify.source.Source`.
        settings: the object's `seqify.settings.Settings`; replace it with
            `update_settings`.
        name: names the worker threads/processes.
    """

    def __init__(self, source: Source, settings: Settings, name: str = "seqify"):
        self.source = source
        self.settings = settings
        self.name = name
        self.lock = threading.RLock()
        self.cursor = Cursor()
        self.state = source.make_state()
        # Consumption, for get_state(): batches handed to consumers in this
        # process (plus the count a restored state started from), and the
        # latest pass as [plan, served, finished].
        self.delivered = 0
        self._last = None
        self._resume_shuffle = None  # (Cursor, shuffle) a restored mid-epoch pass keeps
        self._pass_limit = None  # batches the next pass may serve (a resumed Keras epoch)
        self.signatures = {}  # class_weight given (bool) -> tf.data signature; "large" -> one batch per crossing
        self._pool = None
        self._pool_key = None
        self._resolved = None  # (workers, use_multiprocessing) once "auto" is measured

    # -- settings and pool ---------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        with self.lock:
            if settings.pool_key() != self.settings.pool_key():
                self._resolved = None
            self.settings = settings

    def workers(self):
        """`(workers, use_multiprocessing)` in force (after "auto" is resolved).

        "auto" is measured once (`seqify.check.choose_workers`, on pools of
        its own, consuming nothing), logged once on the "seqify" logger, and
        kept until the settings change.
        """
        settings = self.settings
        if settings.workers != AUTO:
            return settings.workers, settings.uses_processes
        with self.lock:
            if self._resolved is None:
                from seqify.check import choose_workers

                workers, use_mp, reason = choose_workers(self)
                self._resolved = (workers, bool(use_mp) and workers > 0)
                logger.info(
                    "%s: workers=\"auto\" chose workers=%d, use_multiprocessing=%s: %s",
                    self.name, workers, self._resolved[1], reason,
                )
            return self._resolved

    @property
    def running_pool(self):
        return self._pool

    def pool(self):
        """The running pool for the current settings, started if needed."""
        with self.lock:
            workers, use_mp = self.workers()
            key = (workers, use_mp, self.settings.start_method, self.settings.max_queue_size)
            if self._pool is not None and self._pool_key != key:
                self._close_pool()
            if self._pool is None:
                job = self.source.make_job()
                if workers == 0:
                    pool = InlinePool(job)
                elif use_mp:
                    from seqify.engine.process_pool import ProcessPool
                    from seqify.start_methods import start_method_for

                    # Recycled result slots per worker: what can be in flight
                    # to it, plus the batch being consumed and one spare.
                    slots = min(MAX_SLOTS, -(-max(self.settings.max_queue_size, workers) // workers) + 2)
                    pool = ProcessPool(job, workers, start_method_for(self.settings.start_method), self.name, max_slots=slots)
                else:
                    pool = ThreadPool(job, workers, self.name)
                self._pool, self._pool_key = pool, key
            return self._pool

    def _close_pool(self):
        pool, self._pool, self._pool_key = self._pool, None, None
        if pool is not None:
            pool.close()

    def window(self) -> int:
        workers, _ = self.workers()
        if workers == 0:
            return 1  # inline: build each batch when it is asked for
        return max(self.settings.max_queue_size, workers)

    # -- passes ----------------------------------------------------------------
    def effective_shuffle(self, requested: Optional[bool], force: bool = False) -> bool:
        """The object's own `shuffle` if set, else the caller's (fit's), else False.

        `force`: the caller's choice wins (predict's natural order).
        """
        if not self.source.reorders:
            return False
        own = self.settings.shuffle
        if own is not None and not force:
            return own
        return bool(requested)

    def _claim_pass(self, shuffle: bool) -> Pass:
        with self.lock:
            cursor = self.cursor
            resolved = self.workers()  # resolves "auto" here even without workers, so obj.workers reports it
            workers = resolved[0] if self.source.parallel else 0
            if self._resume_shuffle is not None:
                # The rest of an interrupted epoch keeps that epoch's order.
                resumed_at, resumed_shuffle = self._resume_shuffle
                self._resume_shuffle = None
                if resumed_at == cursor and self.source.reorders:
                    shuffle = resumed_shuffle
            plan = Pass(cursor.epoch, cursor.position, shuffle, workers)
            self._last = [plan, 0, False]
            if self.source.num_batches() is not None:
                # A finite pass owns its epoch from the start, so that a
                # concurrent pass (validation on the same object) gets the next.
                self.cursor = Cursor(cursor.epoch + 1, 0)
            return plan

    def _finish_pass(self, plan: Pass, served: int, completed: bool) -> None:
        with self.lock:
            if self._last is not None and self._last[0] is plan:
                self._last[2] = True
            if self.source.num_batches() is None:
                # Infinite: the next pass continues with the next index.
                if self.cursor == Cursor(plan.epoch, plan.start):
                    self.cursor = Cursor(plan.epoch, plan.start + served)
            elif served == 0 and not completed and self.cursor == Cursor(plan.epoch + 1, 0):
                # Nothing was delivered: the epoch was not used.
                self.cursor = Cursor(plan.epoch, plan.start)

    def iter_epoch(self, shuffle: Optional[bool] = None, *, force: bool = False, delivered: Optional[Delivered] = None,
                   prepare: Optional[Callable] = None) -> Iterator:
        """One pass: the source's batches, in order, built by the workers.

        Args:
            shuffle: the caller's wish (fit's `shuffle`); the object's own
                `shuffle` wins when set, unless `force`.
            force: the caller's `shuffle` wins over the object's.
            delivered: records what the pass delivered, for `give_back`.
            prepare: the consumer's per-batch finishing step, for thread
                workers to run in parallel (`engine.window.ordered`); the
                consumer still applies its own to every batch, so it must
                pass a prepared batch through.
        """
        plan = self._claim_pass(self.effective_shuffle(shuffle, force))
        input_wait.note_runner(self)
        with self.lock:
            limit, self._pass_limit = self._pass_limit, None
        served = 0
        completed = False
        record = self._last
        if delivered is not None:
            delivered.plan = plan
        submitted = collections.deque()  # items in flight, in delivery order
        try:
            if limit is not None and limit <= 0:
                completed = True
                return
            if not self.source.parallel:
                batches = self._inline(plan, submitted)
            else:
                batches = self._parallel(plan, submitted, prepare)
            for batch in batches:
                served += 1
                task = submitted.popleft()
                if delivered is not None:
                    kept = batch if self.source.keeps_batches else None
                    delivered.record(task, kept, kept if kept is not None else task.payload)
                # Counted when handed over, not when built: batches read
                # ahead by the window are not consumed (see get_state).
                with self.lock:
                    self.delivered += 1
                    if record is self._last:
                        record[1] = served
                yield batch
                if limit is not None and served >= limit:
                    batches.close()  # a resumed epoch: only its remaining steps
                    break
            completed = True
        finally:
            self._finish_pass(plan, served, completed)

    def give_back(self, delivered: Delivered, count: int) -> int:
        """Hands the last `count` batches of a pass back to the source.

        For batches a consumer pulled but never used: a stream serves them
        again first, an infinite source's next pass starts at them. A finite
        random-access pass needs nothing (its epoch is over either way).
        Call it after the pass ended. Returns how many went back.
        """
        with self.lock:
            count = min(count, delivered.count - delivered.given_back)
            if count <= 0 or delivered.plan is None:
                return 0
            plan = delivered.plan
            if self.source.num_batches() is None and self.source.reorders:
                # An infinite index source continues where its consumer did:
                # its batches are rebuilt from their index, nothing is kept.
                delivered.given_back += count
                if self.cursor.epoch == plan.epoch and self.cursor.position >= plan.start + count:
                    self.cursor = Cursor(plan.epoch, self.cursor.position - count)
                return count
            if count > len(delivered.entries):
                logger.warning(
                    "seqify: %d batches pulled ahead were not used; only the last %d can be given back.",
                    count, len(delivered.entries),
                )
                count = len(delivered.entries)
            entries = [delivered.entries.pop() for _ in range(count)][::-1]
            delivered.given_back += count
            self.source.give_back(entries, self.state)
            return count

    def _parallel(self, plan: Pass, submitted, prepare=None):
        pool = self.pool()
        if getattr(pool, "use_multiprocessing", False) and self.source.reship():
            # Epoch hooks may have changed state that process workers hold
            # a copy of; re-ship it. Sources without hooks never pay this.
            pool.update(self.source.make_job())
        check = getattr(pool, "check", None)
        if check is not None:
            check()  # a worker that died between passes is reported as such
        try:
            # Read-ahead of random-access sources costs only memory: their
            # window may grow for tiny, cheap batches (see engine/window.py).
            elastic = ELASTIC_WINDOW if self.source.reorders else None
            # The window records each task it takes in `submitted` and times
            # getting it (a stream's next item) as input wait; with workers=0
            # (an inline pool) building the batch is input wait too.
            yield from ordered(pool, self.source.tasks(plan, self.state), self.window(), self._abandon, elastic, prepare,
                               track=submitted.append)
        except errors.WorkerDiedError:
            with self.lock:
                if self._pool is pool:
                    self._close_pool()
            raise

    def _inline(self, plan: Pass, submitted):
        # Nothing to parallelize (an untransformed stream): the window's
        # inline loop runs the job on this thread, no pool to keep.
        return ordered(InlinePool(self.source.make_job()), self.source.tasks(plan, self.state), 1, self._abandon,
                       track=submitted.append)

    def _abandon(self, pending) -> None:
        self.source.abandon(pending, self.state)

    # -- resumable state (see Sequence.get_state) ---------------------------
    def consumed(self, rewind: int = 0) -> Cursor:
        """Where the next batch a consumer receives comes from.

        Args:
            rewind: batches handed over but not used (a trainer's read-ahead)
                to count as not consumed.
        """
        with self.lock:
            last = self._last
            if last is None or (last[2] and rewind == 0):
                return Cursor(self.cursor.epoch, self.cursor.position)
            plan, served, _ = last
            if not 0 <= rewind <= served:
                raise ValueError(
                    f"cannot rewind {rewind} batches: the latest pass handed out {served}. "
                    "(Was the same seqify object also read by something else, such as validation_data?)"
                )
            position = plan.start + served - rewind
            n = self.source.num_batches()
            if n is not None and position >= n:
                return Cursor(plan.epoch + 1, 0)
            return Cursor(plan.epoch, position)

    def get_state(self, fingerprint: dict, rewind: int = 0) -> dict:
        """The consumption state (see `seqify.Sequence.get_state`)."""
        with self.lock:
            at = self.consumed(rewind)
            last = self._last
            shuffle = None
            if at.position > 0 and last is not None and last[0].epoch == at.epoch:
                shuffle = bool(last[0].shuffle)
            state = {
                "format": STATE_FORMAT,
                "object": dict(fingerprint),
                "epoch": at.epoch,
                "position": at.position,
                "shuffle": shuffle,
            }
            workers = max(self.workers()[0], 1) if self.source.parallel else 1
            source_state = getattr(self.source, "get_state", None)
            if source_state is not None:
                state["stream"] = source_state(self.state, self.delivered - rewind, workers)
            return state

    def set_state(self, state: dict, fingerprint: dict) -> None:
        """Makes the next batch served the one `state` says comes next."""
        check_state(state, fingerprint)
        epoch, position = int(state["epoch"]), int(state["position"])
        n = self.source.num_batches()
        if n is not None and not 0 <= position < n:
            raise ValueError(f"state position {position} is outside an epoch of {n} batches.")
        with self.lock:
            restore = getattr(self.source, "set_state", None)
            if restore is not None:
                stream = state.get("stream")
                if not isinstance(stream, dict):
                    raise ValueError("this state has no stream position (`state['stream']`): it was not saved from a stream.")
                workers = max(self.workers()[0], 1) if self.source.parallel else 1
                idle = self._last is None or self._last[2]
                moved = restore(self.state, stream, workers, self.delivered if idle else None)
                if moved and getattr(self.source, "samples_on_pool", False):
                    self._close_pool()  # shard generators restart at their restored positions
                self.delivered = int(stream["items"])
            self.cursor = Cursor(epoch, position)
            self._last = None
            shuffle = state.get("shuffle")
            self._resume_shuffle = (Cursor(epoch, position), bool(shuffle)) if position and shuffle is not None else None
            self._pass_limit = None

    def limit_next_pass(self, count: Optional[int]) -> None:
        """The next pass serves at most `count` batches (a resumed partial epoch)."""
        with self.lock:
            self._pass_limit = count

    def sample_batches(self, count: int) -> list:
        """The first `count` batches, consuming nothing.

        Built on this thread, except for sources whose samples must come
        from the workers (sharded streams keep them for the next pass).
        """
        with self.lock:
            # The pool first: a new one's job is made from the state before
            # these tasks claim their stream items (sharded streams skip
            # what their shards produced before).
            pool = self.pool() if self.source.samples_on_pool else None
            tasks = self.source.sample_tasks(count, self.state, self.workers()[0] if self.source.samples_on_pool else 0)
            if pool is None:
                pool = InlinePool(self.source.make_job())
            batches = [pool.submit(task).result() for task in tasks]
            self.source.sampled(tasks, batches, self.state)
            return batches

    def close(self) -> None:
        """Stops the pool and the source's threads; the runner stays usable."""
        with self.lock:
            self._close_pool()
            close = getattr(self.state, "close", None)
            if close is not None:
                close()  # streams keep what they buffered; none is lost
