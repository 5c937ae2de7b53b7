"""The contract's error codes (SPEC §13), raised as exceptions and answered in one place:
web/pipeline.py for the browser endpoints, web/api.py for /v1."""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OPTED_OUT = 171
    COOKIES_BLOCKED = 172
    MALFORMED = 311
    CONSENT_UNPARSABLE = 313
    CONSENT_REFUSED = 314
    CONSENT_MISSING = 315
    UNKNOWN_DPID = 320
    REDIRECT_NOT_ALLOWED = 321
    INVALID_UID = 322
    INVALID_TOKEN = 323

    @property
    def is_consent(self) -> bool:
        """Refusals for want of consent: no visitor cookie is set with them."""
        return self in (Code.CONSENT_UNPARSABLE, Code.CONSENT_REFUSED, Code.CONSENT_MISSING)

    @property
    def is_policy(self) -> bool:
        """Refusals by policy answer 200; malformed input answers 400."""
        return self in _POLICY


_POLICY = frozenset(
    {Code.OPTED_OUT, Code.COOKIES_BLOCKED, Code.CONSENT_REFUSED, Code.CONSENT_MISSING}
)


class RequestError(Exception):
    """A request refused with one of the contract's codes."""

    def __init__(self, code: Code, msg: str, *, status: int | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status if status is not None else (200 if code.is_policy else 400)
