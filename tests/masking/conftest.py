"""Every masking test runs twice: on the pure-Python reference row core and on the compiled one."""
from __future__ import annotations

import pytest

from broker.pg import lineage_step
from jitgate.masking import rows


@pytest.fixture(autouse=True, params=rows.IMPLEMENTATIONS)
def row_core(request, monkeypatch):
    """Plans made during the test use this core (``rows.implementation``)."""
    if request.param == "compiled":
        assert rows._rowcore is not None, "the compiled row core is not built (tests/rowcore_build.py)"
    monkeypatch.setattr(rows, "implementation", request.param)
    return request.param


@pytest.fixture(autouse=True)
def catalog_answers_do_not_expire(monkeypatch):
    """Tests here count catalog lookups and cache hits; on a loaded machine a worker's answer can
    take longer than the catalog TTL. The TTL and the epoch have their own tests, which set it."""
    monkeypatch.setattr(lineage_step, "CATALOG_TTL_SECONDS", 3600.0)
