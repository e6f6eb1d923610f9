"""A backend's payload limit is enforced before anything is submitted, with the limit named."""

from __future__ import annotations

import pytest
from gpuflex_local import LocalBackend

from gpuflex.client._session import get_session
from gpuflex.errors import PayloadTooLarge
from gpuflex.testing import _endpoints as ep
from gpuflex.testing import backend_in_use


class SmallLimitBackend(LocalBackend):
    name = "small-limit"
    max_payload_bytes = 1 << 20


def test_oversize_payload_is_refused_before_submitting():
    with backend_in_use(SmallLimitBackend):
        accepted = get_session().accepted
        with pytest.raises(PayloadTooLarge) as info:
            ep.echo(b"x" * (2 << 20))
        assert "1,048,576" in str(info.value) and "small-limit" in str(info.value)
        assert get_session().accepted == accepted, "an oversize call must not be accepted"
        assert ep.echo(b"small") == b"small"
