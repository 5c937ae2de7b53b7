"""/ibs (SPEC §5, §3): a partner-initiated ID sync, in the DMP path form
(`/ibs:dpid=…&dpuuid=…`) and the query form (`/ibs?dpid=…`)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from ..activities import Activity, PrivacyGate, Reason
from ..consent import Privacy
from ..errors import Code, RequestError
from ..identity import VisitorKind, today
from ..redirects import normalize_domains
from ..signals import consent_params, first_values, parse_pairs
from ..store import Store
from ..sync import PartnerRules, parse_ibs, redirect_target
from .common import SyncCounters
from .pipeline import BOUNCED, BrowserEndpoint, Call, Opening, refusal_headers
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Scope, send

PATH_FORM = "/ibs:"
_PATH_FORM = PATH_FORM.encode()


class IbsEndpoint(BrowserEndpoint[dict[str, str]]):
    name = "ibs"
    too_long = "request too long"

    def __init__(
        self,
        opening: Opening,
        store: Store,
        partners: dict[int, PartnerRules],
        *,
        bounce: bool,
        public_url: str,
        gate: PrivacyGate,
    ) -> None:
        super().__init__(opening)
        self.gate = gate
        host = urlsplit(public_url).hostname or ""
        self.own_chain = (f"{public_url}/sync/chain?", normalize_domains([host]))
        self.store = store
        self.partners = partners
        self.bounce = bounce
        self.counters = SyncCounters(store.tally, partners)

    def params(self, scope: Scope) -> bytes:
        # Path form: the parameters are the rest of the path, still percent-encoded.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        params = raw_path[len(_PATH_FORM) :] if raw_path.startswith(_PATH_FORM) else b""
        query: bytes = scope["query_string"]
        if query:
            params = params + b"&" + query if params else query
        return params

    def bounce_location(self, scope: Scope) -> bytes:
        # The path form without a query takes d_bounce=1 as one more of its parameters.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path.startswith(_PATH_FORM) and not scope["query_string"]:
            return raw_path + b"&" + BOUNCED
        return super().bounce_location(scope)

    def parse(self, call: Call, params: bytes, body: bytes) -> dict[str, str]:
        return first_values(parse_pairs(params))

    def consent(self, req: dict[str, str]) -> Mapping[str, str]:
        return consent_params(req)

    async def answer(self, call: Call, req: dict[str, str], privacy: Privacy | None) -> str:
        assert privacy is not None
        sync = parse_ibs(req, self.partners, self.own_chain, privacy.partner_allowed)
        visitor = call.visitor
        allowed, why = self.gate.decide(sync.partner.dpid, Activity.SYNC, privacy)
        if not allowed:  # an opt-out of sale or sharing, or the partner's rules
            return await self._not_synced(call, sync.redir, why)
        if visitor.kind is VisitorKind.NEW and self.bounce:
            if sync.bounced:
                raise RequestError(Code.COOKIES_BLOCKED, "the browser refuses cookies")
            return await self.cookie_bounce(call)
        assert visitor.uuid is not None
        self.store.put_mapping(visitor.uuid, sync.partner.dpid, sync.uid, today())
        self.counters.completed(sync.partner.dpid)
        cookie = self.cookies.set_header(visitor)
        if sync.redir is not None:
            await _redirect(call, redirect_target(sync.redir, visitor.uuid), cookie)
        else:
            await call.send(
                {"type": "http.response.start", "status": 200, "headers": [*GIF_HEADERS, cookie]}
            )
            await call.send({"type": "http.response.body", "body": b"" if call.head else GIF})
        return "ok"

    async def _not_synced(self, call: Call, redir: str | None, why: Reason) -> str:
        """SPEC §12: an opt-out of sale or sharing (us_privacy, Sec-GPC, a GPP US
        section), or the partner's own rules, store nothing and issue no cookie; a
        `redir` is still followed, so that the partner's page flow goes on, with
        ${DD_UUID} empty. X-Privacy says why; an opt-out also answers X-Error 171."""
        headers: Headers = [(b"x-privacy", why.value.encode())]
        if why is not Reason.RULE:
            refused = RequestError(Code.OPTED_OUT, f"opted out of sale or sharing ({why})")
            headers += refusal_headers(refused, call.visitor, self.cookies)
        elif call.visitor.kind is not VisitorKind.NEW:
            headers.append(self.cookies.set_header(call.visitor))
        if redir is None:
            await send(call.send, 200, [*GIF_HEADERS, *headers], GIF, head=call.head)
        else:
            await _redirect(call, redirect_target(redir, ""), *headers)
        return f"denied_{why.value}"


async def _redirect(call: Call, location: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers: Headers = [(b"location", location), (b"content-length", b"0"), *NO_CACHE, *extra]
    await send(call.send, 302, headers, b"")
