"""Every masking test runs twice: on the pure-Python reference row core and on the compiled one."""
from __future__ import annotations

import pytest

from jitgate.masking import rows


@pytest.fixture(autouse=True, params=rows.IMPLEMENTATIONS)
def row_core(request, monkeypatch):
    """Plans made during the test use this core (``rows.implementation``)."""
    if request.param == "compiled":
        assert rows._rowcore is not None, "the compiled row core is not built (tests/rowcore_build.py)"
    monkeypatch.setattr(rows, "implementation", request.param)
    return request.param
