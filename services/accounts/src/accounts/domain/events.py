"""Events accounts keeps to itself: reservations that enforce uniqueness rules."""

from __future__ import annotations

from ispbill_core.events import DomainEvent, event_type


@event_type("RadiusUsernameReserved", 1)
class RadiusUsernameReserved(DomainEvent):
    """The case-folded key of a RADIUS username, taken by a subscription: written first, with
    "no stream", to radius-username-key-<key>, so that `Alice` and `alice` cannot both be
    assigned. The claim that rating reads (RadiusUsernameAssigned) follows."""

    key: str
    username: str
    customer_id: str
    subscription_id: str
