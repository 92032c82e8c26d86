"""DataWatch: a metric file's change wakes the supervisor (issue 23: guards react to the data, not the timer)."""
import threading

from runner.checkpoints.watch import DataWatch


def test_a_flush_into_a_folder_that_appears_late_wakes_the_supervisor(tmp_path):
    wake = threading.Event()
    logdir = tmp_path / "tb"
    watch = DataWatch([logdir], wake)
    try:
        watch.ensure()  # the trainer has not made its logdir yet: nothing watched, nothing created
        assert not logdir.exists()
        (logdir / "run1").mkdir(parents=True)
        watch.ensure()  # the next timer poll starts watching it
        wake.clear()
        (tmp_path / "elsewhere").write_text("unrelated")
        assert not wake.wait(0.5)  # outside the metric folders: no wake (checked before any event under the logdir)
        with open(logdir / "run1" / "events.out.tfevents.1", "ab") as f:  # a writer's flush, in a subfolder
            f.write(b"x" * 10)
            f.flush()
        assert wake.wait(5), "a write under the logdir did not wake the supervisor"
    finally:
        watch.stop()
