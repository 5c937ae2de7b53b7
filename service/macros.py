"""Partner URL templates (SPEC §5): parsed and checked once, at start-up; filled on
every use with each value URL-encoded once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from .consent import consent_string

# ${NAME}: case-sensitive. %name%: DMP-style aliases, any case.
_TOKEN: Final = re.compile(r"\$\{([^}]*)\}|%([A-Za-z_]+)%")
_CONSENT_N: Final = re.compile(r"GDPR_CONSENT_\d+")
# The fixed head a URL template's first macro must come after: "scheme://authority"
# ended by the path, query or fragment. A macro before it would let a value from the
# request (a uid, a consent string) choose the scheme, userinfo, host or port: SSRF
# by configuration.
_HEAD: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*[/?#]")

MACROS: Final = frozenset(
    {
        "DD_UUID",  # the visitor's uuid
        "DP_UUID",  # the partner's uid for the visitor, when known
        "CALLBACK",  # <public_url>/ibs:dpid=<dpid>&dpuuid=<callback_uid_macro>
        "GDPR",
        "GDPR_CONSENT",
        "US_PRIVACY",
        "GPP",
        "GPP_SID",
        "DD_RAND",  # cache buster
        "ALIAS",  # destinations (SPEC §7)
        "ACK_URL",  # destinations (SPEC §7)
        "HTTP_PROTO",  # http or https, as the request came
    }
)
ALIASES: Final = {"did": "DD_UUID", "rnd": "DD_RAND", "http_proto": "HTTP_PROTO", "alias": "ALIAS"}


class TemplateError(ValueError):
    """A configured URL uses a macro pixelsync does not know, or a macro where the
    request's values would choose where the URL leads."""


@dataclass(frozen=True)
class Template:
    """A URL split into literal text and macro names, ready to fill."""

    parts: tuple[str, ...]  # literal, macro, literal, macro, ..., literal

    @classmethod
    def parse(cls, url: str) -> Template:
        parts: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(url):
            name = match.group(1)
            if name is None and match.group(2).lower() not in ALIASES:
                continue  # a literal percent sequence, e.g. an encoded %2F...
            if not parts and not _HEAD.match(url, 0, match.start()):
                raise TemplateError(
                    f"macro {match.group(0)} before the path: the scheme, userinfo, host "
                    "and port must be fixed text (macros go in the path, query or fragment)"
                )
            if name is None:
                name = ALIASES[match.group(2).lower()]
            elif name not in MACROS and not _CONSENT_N.fullmatch(name):
                raise TemplateError(f"unknown macro ${{{name}}}")
            parts += [url[pos : match.start()], name]
            pos = match.end()
        parts.append(url[pos:])
        return cls(tuple(parts))

    @property
    def macros(self) -> frozenset[str]:
        return frozenset(self.parts[1::2])

    def render(self, values: Mapping[str, str]) -> str:
        """Fill the macros; a value not given renders empty. Each value is URL-encoded
        once (so ${CALLBACK} appears encoded once inside the partner's URL)."""
        out = list(self.parts)
        for i in range(1, len(out), 2):
            name = out[i]
            value = values.get(name)
            if value is None and _CONSENT_N.fullmatch(name):
                value = values.get("GDPR_CONSENT")  # the string, read for vendor <n>
            out[i] = quote(value or "", safe="")
        return "".join(out)


def consent_values(consent: Mapping[str, str], *, gdpr: int) -> dict[str, str]:
    """The consent macros of a request (SPEC §5, §12). While GDPR applies, a GPP-only
    request's TCF string (its section 2) is the GDPR_CONSENT, as Prebid Server fills it."""
    return {
        "GDPR": str(gdpr),
        "GDPR_CONSENT": consent_string(consent) if gdpr else consent.get("gdpr_consent", ""),
        "US_PRIVACY": consent.get("us_privacy", ""),
        "GPP": consent.get("gpp", ""),
        "GPP_SID": consent.get("gpp_sid", ""),
    }
