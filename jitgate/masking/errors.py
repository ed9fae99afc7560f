"""The two ways masking can stop a result instead of masking it."""
from __future__ import annotations


class MaskingRefused(Exception):
    """The gateway cannot mask this result safely, so it refuses it; the message says why and
    what to do instead. The broker answers the statement with an ErrorResponse carrying
    ``sqlstate`` and never forwards the unmasked data."""

    sqlstate = "42501"  # insufficient_privilege: the caller may not see this data in this form


class MalformedRow(ValueError):
    """A DataRow that does not match its own framing or its RowDescription. The broker treats
    it like a codec ``ProtocolError`` (SQLSTATE 08P01, close the session): a backend that sends
    it is not speaking PostgreSQL, and masking cannot know which bytes are which column."""

    sqlstate = "08P01"
