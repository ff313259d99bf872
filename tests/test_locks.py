"""`seqify.locks`: one RLock per key per process; keys pickle, locks are fresh after fork."""

import multiprocessing
import pickle
import threading

import cloudpickle
import pytest

import seqify
from seqify import locks

RLOCK_TYPE = type(threading.RLock())


class HoldsAKey:
    """What seqify objects do: keep a lock *key*, ask for the lock when needed."""

    def __init__(self):
        self.key = locks.new_key("holder")
        self.count = 0

    def bump(self):
        with locks.get_lock(self.key):
            self.count += 1
            return self.count


def _in_forked_child(target, *args, timeout=20):
    """Runs target(*args) in a forked child; returns what it sent back."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def main():
        try:
            sender.send(("ok", target(*args)))
        except BaseException as exc:  # report, never hang the parent
            sender.send(("error", f"{type(exc).__name__}: {exc}"))

    process = context.Process(target=main, daemon=True)
    process.start()
    try:
        assert receiver.poll(timeout), "the forked child sent nothing back (deadlocked?)"
        return receiver.recv()
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


class _HeldByAnotherThread:
    """Holds `lock` on a background thread until `release()`."""

    def __init__(self, lock):
        self._acquired = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(lock,), daemon=True)
        self._thread.start()
        assert self._acquired.wait(5)

    def _hold(self, lock):
        with lock:
            self._acquired.set()
            self._release.wait(30)

    def release(self):
        self._release.set()
        self._thread.join(5)


def test_locks_module_is_reachable_from_the_package():
    assert seqify.locks is locks


def test_same_key_gives_the_same_rlock():
    key = locks.new_key()
    assert locks.get_lock(key) is locks.get_lock(key)
    assert isinstance(locks.get_lock(key), RLOCK_TYPE)


def test_different_keys_give_different_locks():
    a, b = locks.new_key(), locks.new_key()
    assert a != b
    assert locks.get_lock(a) is not locks.get_lock(b)
    with locks.get_lock(a):
        # Holding one key's lock does not block another key, even from another thread.
        result = []

        def other_thread():
            lock = locks.get_lock(b)
            result.append(lock.acquire(timeout=2))
            lock.release()

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert result == [True]


def test_lock_is_reentrant_on_the_same_thread():
    lock = locks.get_lock(locks.new_key())
    with lock:
        assert lock.acquire(blocking=False)
        lock.release()


def test_same_key_serializes_threads():
    key = locks.new_key("counter")
    holder = _HeldByAnotherThread(locks.get_lock(key))
    try:
        assert not locks.get_lock(key).acquire(timeout=0.05)
    finally:
        holder.release()
    assert locks.get_lock(key).acquire(timeout=2)
    locks.get_lock(key).release()


def test_new_keys_are_unique_and_keep_the_prefix():
    keys = [locks.new_key("reader") for _ in range(1000)]
    assert len(set(keys)) == 1000
    assert all(key.startswith("reader-") for key in keys)


def test_non_string_key_is_a_type_error():
    with pytest.raises(TypeError, match=r"`key` must be a str"):
        locks.get_lock(123)


def test_concurrent_first_use_of_a_key_creates_one_lock():
    key = locks.new_key()
    barrier = threading.Barrier(8)
    seen = []

    def grab():
        barrier.wait()
        seen.append(locks.get_lock(key))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(lock) for lock in seen}) == 1


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)], ids=["pickle", "cloudpickle"])
def test_object_holding_a_key_pickles_and_its_copy_gets_a_working_lock(dumps, loads):
    original = HoldsAKey()
    original.bump()
    copy = loads(dumps(original))
    assert copy.key == original.key
    assert copy.bump() == 2
    # In the same process the copy shares the original's lock (same key).
    assert locks.get_lock(copy.key) is locks.get_lock(original.key)


@pytest.mark.timeout(60)
def test_unpickled_in_a_child_process_the_key_gives_a_fresh_unheld_lock():
    original = HoldsAKey()
    payload = pickle.dumps(original)
    holder = _HeldByAnotherThread(locks.get_lock(original.key))
    try:

        def child():
            copy = pickle.loads(payload)
            lock = locks.get_lock(copy.key)
            got = lock.acquire(timeout=2)
            return got, copy.bump()

        assert _in_forked_child(child) == ("ok", (True, 1))
    finally:
        holder.release()


@pytest.mark.timeout(60)
def test_after_fork_the_child_gets_fresh_locks_even_if_the_parent_held_one():
    key = locks.new_key("held-at-fork")
    parent_lock = locks.get_lock(key)
    holder = _HeldByAnotherThread(parent_lock)
    try:
        assert not parent_lock.acquire(blocking=False)  # really held while we fork

        def child():
            lock = locks.get_lock(key)
            return lock is not parent_lock, lock.acquire(timeout=2)

        assert _in_forked_child(child) == ("ok", (True, True))
    finally:
        holder.release()
    assert parent_lock.acquire(timeout=2)  # the parent's lock is untouched by the child
    parent_lock.release()


@pytest.mark.timeout(60)
def test_after_fork_keys_made_in_the_child_do_not_collide_with_the_parents():
    parent_keys = {locks.new_key() for _ in range(3)}

    def child():
        return [locks.new_key() for _ in range(3)]

    status, child_keys = _in_forked_child(child)
    assert status == "ok"
    assert not parent_keys & set(child_keys)
