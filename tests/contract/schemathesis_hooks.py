"""What schemathesis is taught before it runs against the API (SCHEMATHESIS_HOOKS): the one
format the OpenAPI document names that no JSON Schema tool knows, `unicast-ip`."""

from __future__ import annotations

import ipaddress

import schemathesis
from hypothesis import strategies as st

from ispbill_core.input_policy import unicast_address


def _unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return unicast_address(str(address)) == str(address)
    except ValueError:
        return False


#: Addresses a NAS may have (ispbill_core.input_policy.unicast_address), in the one spelling
#: it keeps them in.
schemathesis.openapi.format(
    "unicast-ip",
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(_unicast).map(str),
)
