"""rayinit's one rule for starting Ray, as pipeline/, serving/ and training/ use it: no
address means a new local Ray, started again when it misses Ray's 30 s start-up window;
an address that was given (argument or RAY_ADDRESS) is joined and never retried."""
from __future__ import annotations

import pytest
import ray

import rayinit

TIMEOUT = Exception("The current node timed out during startup. This could happen because ...")


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.init recording its calls and failing the first `failures` of them with Ray's
    start-up timeout; ray.shutdown counted."""
    state = {"calls": [], "shutdowns": 0, "failures": 0}

    def init(**kwargs):
        state["calls"].append(kwargs)
        if len(state["calls"]) <= state["failures"]:
            raise TIMEOUT

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: state.__setitem__("shutdowns", state["shutdowns"] + 1))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return state


def test_a_local_start_that_times_out_is_tried_again(fake_ray) -> None:
    fake_ray["failures"] = rayinit.START_ATTEMPTS - 1
    assert rayinit.start_or_join(local_options={"num_cpus": 2}, include_dashboard=False) is True  # owns it
    assert [c["address"] for c in fake_ray["calls"]] == ["local"] * rayinit.START_ATTEMPTS
    assert all(c == {"address": "local", "num_cpus": 2, "include_dashboard": False} for c in fake_ray["calls"])
    assert fake_ray["shutdowns"] == rayinit.START_ATTEMPTS - 1  # each failed start cleaned up

    fake_ray.update(calls=[], failures=rayinit.START_ATTEMPTS)  # the last try's error reaches the caller
    with pytest.raises(Exception, match="timed out during startup"):
        rayinit.start_or_join()
    assert len(fake_ray["calls"]) == rayinit.START_ATTEMPTS


def test_a_given_address_is_joined_and_never_retried(fake_ray, monkeypatch) -> None:
    fake_ray["failures"] = 1
    with pytest.raises(Exception, match="timed out during startup"):
        rayinit.start_or_join("ray://head:10001", local_options={"num_cpus": 2})
    assert fake_ray["calls"] == [{"address": "ray://head:10001"}]  # once, without local resources

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as `ray job submit` sets it
    fake_ray.update(calls=[], failures=0)
    assert rayinit.start_or_join(local_options={"num_cpus": 2}) is False  # joined: not ours to stop
    assert fake_ray["calls"] == [{"address": "10.0.0.1:6379"}]


def test_other_start_errors_are_not_retried(fake_ray, monkeypatch) -> None:
    def init(**kwargs):
        fake_ray["calls"].append(kwargs)
        raise ValueError("object_store_memory is too large")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ValueError, match="too large"):
        rayinit.start_or_join()
    assert len(fake_ray["calls"]) == 1
