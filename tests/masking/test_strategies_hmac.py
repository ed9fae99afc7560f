"""The hash strategy is exactly HMAC-SHA256 with the masking key (tokens stay stable across versions)."""
import hmac

from hypothesis import given, strategies as st

from jitgate.masking.strategies import Hasher


@given(st.binary(min_size=16, max_size=200), st.binary(max_size=300))
def test_digest_is_rfc2104_hmac_sha256(key, data):
    assert Hasher(key).digest(data) == hmac.digest(key, data, "sha256")
