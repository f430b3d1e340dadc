"""The thread rule: parsing, the chosen count, the start-up line. No timing here (see minipost/bench/threads.py)."""
import pytest
import torch

from minipost import threads


@pytest.fixture(autouse=True)
def keep_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the other tests run on one thread (conftest.py)


def test_parse():
    assert threads.parse_threads("auto") is None
    assert threads.parse_threads(" AUTO ") is None
    assert threads.parse_threads("1") == 1
    assert threads.parse_threads(3) == 3


@pytest.mark.parametrize("bad", ["0", "-2", "two", "", "1.5", "auto2"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="--threads"):
        threads.parse_threads(bad)


def test_auto_is_within_the_cores():
    n, why = threads.choose_threads("auto")
    assert 1 <= n <= threads.usable_cores()
    assert "auto" in why


def test_auto_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads("auto") == (1, "auto: OMP_NUM_THREADS=1")
    monkeypatch.setenv("OMP_NUM_THREADS", "nonsense")  # ignored, as libgomp ignores it
    assert threads.choose_threads("auto")[0] == threads.usable_cores()


def test_explicit_count_wins_and_says_so():
    n, why = threads.choose_threads(str(threads.usable_cores() + 1))
    assert n == threads.usable_cores() + 1 and "more than" in why


def test_configure_sets_torch_and_names_the_setting():
    line = threads.configure("1")
    assert torch.get_num_threads() == 1
    assert line.startswith("threads: 1 (--threads 1") and "\n" not in line
    line = threads.configure("auto")
    assert torch.get_num_threads() == threads.usable_cores()
    assert line.startswith(f"threads: {threads.usable_cores()} (auto")


def test_configure_rejects_before_touching_torch():
    torch.set_num_threads(1)
    with pytest.raises(ValueError):
        threads.configure("zero")
    assert torch.get_num_threads() == 1


def test_wait_policy_line(monkeypatch):
    import minipost
    monkeypatch.setattr(minipost, "TORCH_IMPORTED_FIRST", False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert "sleep" in threads.wait_policy()
    monkeypatch.setattr(minipost, "TORCH_IMPORTED_FIRST", True)  # torch loaded first: the default came too late
    monkeypatch.setattr(minipost, "WAIT_POLICY_FROM_USER", False)
    assert "too late" in threads.wait_policy()
