"""Per-partner privacy policy (service/activities.py): the decisions, table-driven, and
the [[partners.privacy]] configuration that compiles into them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.activities import ALLOW, Activity, Policies, PrivacyGate, Reason, denials
from service.config import ConfigError, parse_settings
from service.consent import OptOut, Privacy, TCString
from service.tally import Tally

# dpid 1: sync denied where gpp_sid names 7 or 8, except that 8 with GDPR allows it;
# fire always denied. dpid 2: no rules. dpid 3: export denied while GDPR applies.
RULES = """
[[partners]]
dpid = 1
name = "guarded"
gvl_id = 50

[[partners.privacy]]
allow = ["sync"]
gpp_sid = [8]
gdpr = true

[[partners.privacy]]
deny = ["sync"]
gpp_sid = [7, 8]

[[partners.privacy]]
deny = ["fire"]

[[partners]]
dpid = 2
name = "open"
gvl_id = 60

[[partners]]
dpid = 3
name = "exported"
gvl_id = 70

[[partners.privacy]]
deny = ["export", "s2s"]
gdpr = true
"""
PLAIN = """
[[partners]]
dpid = 1
name = "guarded"
gvl_id = 50

[[partners]]
dpid = 2
name = "open"
gvl_id = 60
"""
POLICIES = Policies(parse_settings(tomllib.loads(RULES)).partners)


def privacy(
    *sections: int, gdpr: bool = False, opt_out: OptOut | None = None, consented: bool = True
) -> Privacy:
    tcf = None
    if gdpr and consented:
        tcf = TCString(2, 0, 0, 0, 0, 0, "EN", 0, 0, frozenset({1}), frozenset({50, 60, 70}))
    return Privacy(gdpr, tcf, frozenset(sections), opt_out)


@dataclass(frozen=True)
class Case:
    description: str
    partner: int | None
    activity: Activity
    privacy: Privacy
    want: tuple[bool, Reason]


CASES = [
    Case("no rule names the activity: allowed", 1, Activity.S2S, privacy(), ALLOW),
    Case("a partner without rules: allowed", 2, Activity.SYNC, privacy(7), ALLOW),
    Case("gpp_sid 7 matches the deny rule", 1, Activity.SYNC, privacy(7), (False, Reason.RULE)),
    Case("any listed section matches", 1, Activity.SYNC, privacy(2, 8), (False, Reason.RULE)),
    Case("no section named: the deny rule does not match", 1, Activity.SYNC, privacy(), ALLOW),
    Case("another section: no match", 1, Activity.SYNC, privacy(6, 9), ALLOW),
    Case(
        "the allow rule first matches 8 with GDPR", 1, Activity.SYNC, privacy(8, gdpr=True), ALLOW
    ),
    Case(
        "the allow rule's gdpr condition fails: the deny rule decides",
        1,
        Activity.SYNC,
        privacy(8),
        (False, Reason.RULE),
    ),
    Case(
        "a rule without conditions always matches",
        1,
        Activity.FIRE,
        privacy(),
        (False, Reason.RULE),
    ),
    Case("gdpr = true: not while GDPR does not apply", 3, Activity.S2S, privacy(), ALLOW),
    Case(
        "gdpr = true: while GDPR applies", 3, Activity.S2S, privacy(gdpr=True), (False, Reason.RULE)
    ),
    Case(
        "an opt-out comes before the rules, with its reason",
        1,
        Activity.FIRE,
        privacy(opt_out=OptOut.GPC),
        (False, Reason.GPC),
    ),
    Case(
        "us_privacy opt-out of a partner without rules",
        2,
        Activity.SYNC,
        privacy(opt_out=OptOut.US_PRIVACY),
        (False, Reason.US_PRIVACY),
    ),
    Case(
        "a GPP US opt-out",
        2,
        Activity.S2S,
        privacy(opt_out=OptOut.GPP_US),
        (False, Reason.GPP_US),
    ),
    Case(
        "GDPR without consent for the gvl_id comes before the rules",
        1,
        Activity.SYNC,
        privacy(8, gdpr=True, consented=False),
        (False, Reason.GDPR_CONSENT),
    ),
    Case(
        "gvl_id 0 (here: a partner not configured) is never consented while GDPR applies",
        99,
        Activity.SYNC,
        privacy(gdpr=True),
        (False, Reason.GDPR_CONSENT),
    ),
    Case("a destination of no partner, GDPR not applying", None, Activity.FIRE, privacy(), ALLOW),
    Case(
        "a destination of no partner while GDPR applies",
        None,
        Activity.FIRE,
        privacy(gdpr=True),
        (False, Reason.GDPR_CONSENT),
    ),
    Case("an unknown partner: no rules", 99, Activity.SYNC, privacy(7), ALLOW),
]


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_allowed(case: Case) -> None:
    assert POLICIES.allowed(case.partner, case.activity, case.privacy) == case.want


def test_no_rules_decides_as_opt_out_and_consent_did() -> None:
    plain = Policies(parse_settings(tomllib.loads(PLAIN)).partners)
    assert not plain.has_rules and POLICIES.has_rules
    for p in (privacy(), privacy(7), privacy(gdpr=True), privacy(opt_out=OptOut.GPC)):
        for dpid in (1, 2, None):
            allowed, _ = plain.allowed(dpid, Activity.SYNC, p)
            gvl = {1: 50, 2: 60}.get(dpid or 0, 0)
            assert allowed == (p.outbound_allowed and p.partner_allowed(gvl))


def test_export_rules_read_gdpr_default() -> None:
    assert POLICIES.export_allowed(3, gdpr_default=0)
    assert not POLICIES.export_allowed(3, gdpr_default=1)
    assert POLICIES.export_allowed(1, gdpr_default=1)


def test_the_gate_counts_denials_by_partner_activity_and_reason() -> None:
    tally = Tally()
    gate = PrivacyGate(POLICIES, tally)
    assert not gate.permits(1, Activity.SYNC, privacy(7))
    assert not gate.permits(1, Activity.SYNC, privacy(7))
    assert gate.permits(2, Activity.SYNC, privacy(7))
    assert not gate.permits(2, Activity.FIRE, privacy(opt_out=OptOut.US_PRIVACY))
    assert not gate.export_permits(3, gdpr_default=1)
    counts = tally.take()
    assert counts == {
        "p:1:deny_sync_rule": 2,
        "p:2:deny_fire_us_privacy": 1,
        "p:3:deny_export_rule": 1,
    }
    rows = denials(counts, {1: "guarded", 2: "open", 3: "exported", 4: "quiet"})
    assert [(r["dpid"], r["total"]) for r in rows] == [(1, 2), (2, 1), (3, 1)]
    assert rows[0]["reasons"] == {
        "gdpr_consent": 0,
        "us_privacy": 0,
        "gpc": 0,
        "gpp_us": 0,
        "rule": 2,
    }
    assert rows[1]["activities"] == {"fire": 1}


# --------------------------------------------------------------------------- configuration

PARTNER = '[[partners]]\ndpid = 7\nname = "acme"\n'
WHERE = "[[partners]] entry 1 (dpid 7): [[partners.privacy]] entry 1"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ('deny = ["sync", "fyre"]', f"{WHERE}: key 'deny': unknown activity 'fyre'"),
        ("deny = []", f"{WHERE}: key 'deny': must not be empty"),
        ('allow = ["teleport"]', f"{WHERE}: key 'allow': unknown activity 'teleport'"),
        ("gdpr = true", f"{WHERE}: key 'deny': one of deny or allow is required"),
        ('deny = ["sync"]\nallow = ["fire"]', f"{WHERE}: key 'deny': one of deny or allow"),
        ('deny = ["sync"]\ngpp_sid = [0]', f"{WHERE}: key 'gpp_sid': 0: not a GPP section id"),
        ('deny = ["sync"]\ngpp_sid = [3, 7]', f"{WHERE}: key 'gpp_sid': 3: not a GPP section id"),
        ('deny = ["sync"]\ngpp_sid = []', f"{WHERE}: key 'gpp_sid': must not be empty"),
        ('deny = ["sync"]\ngpp_sid = ["7"]', f"{WHERE}: key 'gpp_sid': must be a list of integers"),
        ('deny = ["sync"]\ngdpr = 1', f"{WHERE}: key 'gdpr': must be true or false"),
        ('deny = ["sync"]\nregion = "us"', f"{WHERE}: key 'region': unknown key"),
        (
            'deny = ["sync", "export"]\ngpp_sid = [7]',
            f"{WHERE}: key 'gpp_sid': not allowed on a rule naming export: a batch export has "
            "no request",
        ),
    ],
)
def test_bad_rules_are_reported_naming_the_key(rule: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(f"{PARTNER}[[partners.privacy]]\n{rule}\n"))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_privacy_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(f"{PARTNER}privacy = ['sync']\n"))
    assert caught.value.problems == [
        "[[partners]] entry 1 (dpid 7): key 'privacy': must be an array of tables "
        "([[partners.privacy]])"
    ]


def test_rules_are_read_in_order() -> None:
    settings = parse_settings(tomllib.loads(RULES))
    rules = settings.partners[0].privacy
    assert [(r.allows, r.activities, r.gpp_sid, r.gdpr) for r in rules] == [
        (True, ["sync"], [8], True),
        (False, ["sync"], [7, 8], None),
        (False, ["fire"], None, None),
    ]
    assert settings.partners[1].privacy == []


def test_export_may_have_a_gdpr_condition() -> None:
    """Accepted (unlike gpp_sid), and it decides by [privacy] gdpr_default."""
    settings = parse_settings(
        tomllib.loads(f'{PARTNER}[[partners.privacy]]\ndeny = ["export"]\ngdpr = true\n')
    )
    rules = settings.partners[0].privacy
    assert [(r.allows, r.activities, r.gpp_sid, r.gdpr) for r in rules] == [
        (False, ["export"], None, True)
    ]
    policies = Policies(settings.partners)
    assert not policies.export_allowed(7, gdpr_default=1)
    assert policies.export_allowed(7, gdpr_default=0)
    assert policies.allowed(7, Activity.SYNC, privacy()) == ALLOW  # the rule names export only


def test_check_config_reports_bad_rules(tmp_path: Path) -> None:
    path = tmp_path / "pixelsync.toml"
    path.write_text(
        f'{PARTNER}[[partners.privacy]]\ndeny = ["export"]\ngpp_sid = [7]\n'
        '[[partners.privacy]]\ndeny = ["sink"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{WHERE}: key 'gpp_sid': not allowed on a rule naming export" in done.stderr
    assert "[[partners.privacy]] entry 2: key 'deny': unknown activity 'sink'" in done.stderr
    path.write_text(f'{PARTNER}[[partners.privacy]]\ndeny = ["sync"]\ngpp_sid = [7]\n')
    ok = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "1 partners" in ok.stdout


def test_the_example_partner_and_its_rules_parse() -> None:
    """deploy/pixelsync.example.toml's commented [[partners]] block, uncommented."""
    text = (Path(__file__).parent.parent / "deploy" / "pixelsync.example.toml").read_text()
    block = text[text.index("# [[partners]]") : text.index("# API keys")]
    keys = [
        line[2:].split("  #")[0]
        for line in block.splitlines()
        if re.match(r"# (\[|\w+ =)", line) and "realtime" not in line
    ]
    (partner,) = parse_settings(tomllib.loads("\n".join(keys))).partners
    assert [(r.allows, r.activities, r.gpp_sid) for r in partner.privacy] == [
        (True, ["sync"], [8]),
        (False, ["sync", "fire", "s2s"], [7, 8]),
    ]
