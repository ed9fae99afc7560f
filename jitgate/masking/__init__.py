"""Inline masking of sensitive values in the PostgreSQL data path (pure: no I/O).

The broker builds one ``Masker`` per target from its ``MaskingConfig`` and a
secret HMAC key, asks it for a ``RowPlan`` at each RowDescription and runs every
DataRow through ``RowPlan.mask_row``. ``Masker.plan_copy`` does the same for
``COPY ... TO STDOUT``; ``Masker.mask_text`` masks ErrorResponse/NoticeResponse
fields, log lines and statement parameters before they are shown or recorded.
Callers in ``Target.masking.clear_groups`` (``Target.sees_clear_text``) skip all of it.

How rules combine, and how a column is matched: see ``masker.py``. What each
detector matches: see ``detectors.py``.

Strategies
==========

Detections inside text (detector rules), replaced in place; the rest of the
text is untouched:

=========  ================================================================
redact     a marker naming the kind: ``[email]`` ``[card]`` ``[iban]``
           ``[ssn]`` ``[phone]`` ``[secret]``
partial    letters and digits become ``*`` except the last ``keep_last``
           (never more than half of them), separators stay:
           ``4111 1111 1111 1111`` -> ``**** **** **** 1111``,
           ``123-45-6789`` -> ``***-**-6789``; an email keeps its domain:
           ``***@example.com``; a secret is redacted (no part of a
           credential is ever shown)
hash       ``h:`` + 16 hex digits of HMAC-SHA256(key, value); the value is
           taken without separators for card/iban/ssn/phone, so one card
           written two ways gives one token
null       the whole value becomes SQL NULL (in free text: redact)
=========  ================================================================

Whole values (column rules), by the column's type; text and binary formats
always give the same masked value:

==========================  ==========  ================  ==================  ======
type                        redact      partial           hash                null
==========================  ==========  ================  ==================  ======
text, varchar, name,        [redacted]  ``*`` for all     h:<16 hex>          NULL
unknown, citext & other                 but the last
user-defined types sent                 keep_last chars
as text                                 (email: ***@dom)
xml                         [redacted]  [redacted]        h:<16 hex>          NULL
bpchar(n)                   as text, then padded/truncated to the value's length n;
                            partial and hash ignore the padding blanks
varchar(n)                  as text, then truncated to n characters (a hash token
                            under 8 characters drops its ``h:`` prefix)
json, jsonb                 "[redacted]" (a JSON string) "[redacted]"  "h:<16 hex>"  NULL
int2, int4, int8            NULL        NULL              non-negative int    NULL
                                                          from the HMAC that
                                                          fits the width
uuid                        NULL        NULL              v4 uuid from the    NULL
                                                          HMAC
numeric(p, s)               NULL        NULL              integer from the    NULL
                                                          HMAC with at most
                                                          p - s digits, s
                                                          zero decimals
bytea                       NULL        NULL              the 32-byte HMAC    NULL
everything else (dates,     NULL        NULL              NULL                NULL
floats, bool, arrays,
binary user-defined types)
==========================  ==========  ================  ==================  ======

Hashes of non-text types are computed over the value's canonical text form, so
a binary and a text client, or a DataRow and a COPY row, get the same number.

Detectors scan text, varchar, bpchar, name, unknown, xml, json, jsonb, arrays
of those, and user-defined types sent as text (citext). JSON stays valid JSON:
only string values (and card numbers written as JSON numbers) are rewritten,
and the values of ``"private_key"`` / ``"private_key_id"`` are masked whole.
jsonb in binary is the version byte 0x01 and the JSON text; another version
gives NULL. Arrays and user-defined types in binary cannot be rewritten: when a
detector finds something in their bytes the value becomes NULL. Detectors do not
look at numbers stored in numeric or integer columns: use a column rule for them.

Text is assumed to be UTF-8 (client_encoding UTF8, which the broker should
insist on); bytes that are not valid UTF-8 are kept as they are around any mask.
"""
from jitgate.masking.copy import CopyPlan
from jitgate.masking.errors import MalformedRow, MaskingRefused
from jitgate.masking.masker import Masker
from jitgate.masking.rows import RowPlan, apply_result_formats

__all__ = ["CopyPlan", "MalformedRow", "Masker", "MaskingRefused", "RowPlan", "apply_result_formats"]
