"""``ReadAhead``: batch inference reads the next series in a thread while the model runs."""

import threading
import time

import pytest

from medtl.deploy.batch import ReadAhead


def _counted(n: int, produced: list):
    """0..n-1, noting in ``produced`` each item as it is read."""
    for i in range(n):
        produced.append(i)
        yield i


def test_items_arrive_in_order_and_the_thread_ends():
    items = list(ReadAhead(iter(range(100)), depth=4))
    assert items == list(range(100))
    assert not [t for t in threading.enumerate() if t.name == "medtl-read-ahead"]


def test_reads_run_at_most_depth_ahead():
    produced = []
    it = iter(ReadAhead(_counted(50, produced), depth=3))
    assert next(it) == 0
    time.sleep(0.3)  # the thread fills the queue and then waits
    # consumed 1, queued 3, and one more read that waits for room
    assert len(produced) <= 1 + 3 + 1
    assert list(it) == list(range(1, 50))


def test_an_error_in_the_reader_reaches_the_consumer():
    def source():
        yield 1
        raise ValueError("unreadable")

    it = iter(ReadAhead(source(), depth=2))
    assert next(it) == 1
    with pytest.raises(ValueError, match="unreadable"):
        next(it)


def test_leaving_the_loop_early_stops_the_reader():
    produced = []
    ahead = ReadAhead(_counted(10_000, produced), depth=2)
    for item in ahead:
        if item == 5:
            break
    ahead.close()  # what the generator's finally does when the loop is left
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n < 10  # stopped, not reading the rest
    assert not [t for t in threading.enumerate() if t.name == "medtl-read-ahead"]


def test_a_read_still_in_flight_removes_what_it_wrote_after_the_consumer_left(tmp_path):
    """A read waiting on a PACS when the run stops: closing does not wait for it (Ctrl-C took minutes), and the
    folder reads write into is removed when no read can write there any more (a read that finished after an
    early removal had recreated the folder with patient DICOMs in it)."""
    import shutil

    folder = tmp_path / ".tmp-1"
    folder.mkdir()
    release = threading.Event()

    def reads():
        yield 0
        release.wait(5)  # a retrieve still in flight
        folder.mkdir(parents=True, exist_ok=True)  # as a fetch does: the folder is back
        (folder / "000000.dcm").write_bytes(b"pixels")
        yield 1

    ahead = ReadAhead(reads(), depth=1)
    it = iter(ahead)
    assert next(it) == 0
    start = time.monotonic()
    ahead.close(lambda: shutil.rmtree(folder, ignore_errors=True))
    # not waited for, and removed now: the command line's exit ends the thread before it could remove anything
    assert time.monotonic() - start < 3 and not folder.exists()
    release.set()
    ahead._thread.join(5)  # the read ends: it recreated the folder and wrote into it, then removed it
    assert not ahead._thread.is_alive() and not folder.exists()
    ahead2 = ReadAhead(iter(range(3)), depth=1)
    assert list(ahead2) == [0, 1, 2]
    done = []
    ahead2.close(lambda: done.append(True))  # nothing in flight: the cleanup runs at once
    assert done == [True]
