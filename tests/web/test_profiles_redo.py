"""Profiles' redo (service/visits.py): a request whose read failed acts on what it
finds when its write is applied; a redo that has to run again (another writer got in
between) must not act twice on the same entry."""

from __future__ import annotations

import tomllib
from typing import Any, cast

from prometheus_client import REGISTRY

from service.activities import Policies, PrivacyGate
from service.config import parse_settings
from service.consent import Privacy
from service.destinations import DestinationRules, Tokens
from service.identity import Visitor, VisitorKind, new_uuid
from service.qualification import Qualifier
from service.store import VisitorState
from service.tally import Tally
from service.visits import Profiles, loss_counters
from tests.configs import SPORTS


def entered(sid: int) -> float:
    labels = {"segment": str(sid), "change": "entered"}
    return REGISTRY.get_sample_value("pixelsync_segment_changes_total", labels) or 0.0


def test_a_redo_run_again_acts_on_each_entry_once() -> None:
    settings = parse_settings(tomllib.loads(SPORTS))
    profiles = Profiles(
        cast(Any, None),  # the redo reads nothing: it is given what is stored
        Qualifier(settings.traits, settings.segments),
        DestinationRules(settings.destinations),
        Tokens(["k"], "http://127.0.0.1"),
        loss_counters(Tally()),
        s2s=None,
        gate=PrivacyGate(Policies([]), Tally()),
        region=0,
    )
    visitor = Visitor(new_uuid(), VisitorKind.KNOWN)
    privacy = Privacy(gdpr_applies=False, tcf=None)
    redo = profiles._redo(visitor, [100], 20000, 20000 * 86400.0, privacy, [], set(), act=True)
    before = entered(500)

    first = redo(VisitorState())
    again = redo(VisitorState())  # the compare-and-set lost: run on the same

    assert entered(500) == before + 1  # counted (and sent to s2s) once
    assert [(p.destination, p.segment) for p in first.pending] == [(9, 500)]
    assert again.pending == first.pending  # the fire found the first time is kept
    assert 500 in again.segments
