"""A file destination whose partner's [[partners.privacy]] rules deny `export`
(service/activities.py): the export is skipped, says why, writes no file and moves no
mark; the worker does not run it again that day."""

from __future__ import annotations

import secrets
import time
import tomllib
from pathlib import Path

from service.batch.exporter import Exporter
from service.batch.run import running
from service.config import parse_settings
from service.profiles import Profile
from tests.configs import file_config

DAY = int(time.time() // 86400)
DENY = '[[partners.privacy]]\ndeny = ["export"]\ngdpr = true\n\n[[traits]]'


async def test_an_export_denied_by_a_rule_is_skipped(redis_url: str, tmp_path: Path) -> None:
    dpid, dest = 7000 + secrets.randbelow(10**6), 1 + secrets.randbelow(10**6)
    base = file_config(dpid, dest).replace("[[traits]]", DENY, 1)
    for gdpr_default, skipped in ((1, True), (0, False)):
        toml = f"[privacy]\ngdpr_default = {gdpr_default}\n{base}"
        settings = parse_settings(tomllib.loads(toml))
        (destination,) = settings.destinations
        async with running(settings, redis_url) as (store, domain):
            uuid = f"{secrets.randbelow(10**38):038d}"
            store.put_mapping(uuid, dpid, "x-1", DAY)
            state = await store.visitor_state(uuid)
            state.profile = Profile()
            domain.qualifier.qualify(state.profile, [300], DAY)
            store.save_profile(uuid, state, lambda current: current.profile)
            await store.drain()
            out = tmp_path / str(gdpr_default)
            exporter = Exporter(store, domain.qualifier, domain.export_allowed)
            result = await exporter.run(destination, "iter", out)
            state_after = await store.export_state(dest)
            if skipped:
                assert result.skipped == f"partner {dpid}'s [[partners.privacy]] rules deny export"
                assert result.files == [] and result.lines == 0
                assert not out.exists() or list(out.iterdir()) == []
                assert state_after["state"] == "skipped" and state_after["last_day"] == str(DAY)
                counts = store.tally.take()
                assert counts.get(f"p:{dpid}:deny_export_rule") == 1
            else:  # GDPR does not apply to exports: the rule does not match
                assert result.skipped == "" and result.lines == 1
