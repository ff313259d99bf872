"""How a dead worker is described."""

import signal

from seqify.engine import diagnostics
from seqify.engine.messages import Task, TaskKind


def _message(exitcode, held=(), started=True, start_method="fork", report=None):
    return diagnostics.death_message(1, 4242, exitcode, list(held), started, start_method, report)


def test_sigkill_points_at_the_out_of_memory_killer():
    text = _message(-signal.SIGKILL, [Task(TaskKind.FETCH, 0, 5), Task(TaskKind.FETCH, 0, 3)])
    assert "worker process 1 (pid 4242) was killed by signal SIGKILL while building batch 3 (epoch 0), batch 5 (epoch 0)" in text
    assert "out-of-memory" in text and "max_queue_size" in text


def test_sigbus_points_at_shared_memory_and_its_size():
    text = _message(-signal.SIGBUS)
    assert "SIGBUS" in text and "/dev/shm" in text and "MiB" in text
    assert "docker run --shm-size=" in text


def test_a_worker_that_never_started_under_spawn_names_the_main_guard():
    text = _message(1, started=False, start_method="spawn")
    assert "exited with code 1 while starting" in text
    assert 'if __name__ == "__main__":' in text and "re-imports the main module" in text


def test_a_start_up_report_replaces_the_generic_hint():
    text = _message(1, started=False, start_method="forkserver", report="RuntimeError: no bootstrapping here")
    assert "Its start-up error:\nRuntimeError: no bootstrapping here" in text
    assert "re-imports" not in text


def test_exit_after_start_blames_user_code():
    assert "os._exit()/sys.exit()" in _message(3, started=True)


def test_a_report_is_written_only_inside_a_bootstrapping_worker():
    assert diagnostics.report_startup_failure(RuntimeError("x")) is False
