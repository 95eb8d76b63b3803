"""The suite's xdist groups take effect (tests/conftest.py `_join_group`).

Under `-n N --dist loadgroup` (the README's test command) tests that share a Ray, Serve or
cluster fixture must run on one worker, or each worker starts its own and CI runs over its
time budget. The grouping reaches xdist through the test's id, by a private field of pytest
that changed once already (pytest 9): if it changes again, this test fails instead of the
suite silently slowing down."""
from __future__ import annotations

import pytest


def test_under_loadgroup_this_test_carries_its_group(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("only meaningful on an xdist worker under --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@test_xdist_groups.py"), request.node.nodeid
