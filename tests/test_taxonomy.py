"""The taxonomy (SPEC §6, §10 /v1/taxonomy): folders of traits and segments."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from service.config import Segment, Trait
from service.taxonomy import taxonomy


def trait(sid: int, folder: str, type_: Literal["rule", "onboarded"] = "rule") -> Trait:
    rule = 'c == "1"' if type_ == "rule" else ""
    return Trait(sid=sid, name=f"t{sid}", folder=folder, type=type_, rule=rule)


def segment(sid: int, folder: str) -> Segment:
    return Segment(sid=sid, name=f"s{sid}", folder=folder, rule=f"{sid}T")


def folders(doc: dict[str, Any]) -> dict[str, tuple[list[int], list[int]]]:
    return {f["path"]: (f["traits"], f["segments"]) for f in doc["folders"]}


def test_nothing_configured() -> None:
    assert taxonomy([], []) == {"folders": [], "traits": [], "segments": []}


def test_root_only() -> None:
    doc = taxonomy([trait(100, "")], [segment(500, "")])
    assert doc["folders"] == [{"path": "", "traits": [100], "segments": [500]}]


def test_folders_with_ancestors() -> None:
    doc = taxonomy(
        [
            trait(101, "Interests/Sports"),
            trait(100, "Interests/Sports"),
            trait(102, "Interests"),
            trait(200, "Partners/Acme/Autos", "onboarded"),
        ],
        [segment(501, "Interests/Sports"), segment(500, "")],
    )
    assert folders(doc) == {
        "": ([], [500]),
        "Interests": ([102], []),
        "Interests/Sports": ([100, 101], [501]),
        "Partners": ([], []),
        "Partners/Acme": ([], []),
        "Partners/Acme/Autos": ([200], []),
    }
    # Folders are listed sorted by path, the root first.
    assert [f["path"] for f in doc["folders"]] == sorted(folders(doc))
    assert doc["folders"][0]["path"] == ""


def test_root_is_present_even_when_empty() -> None:
    doc = taxonomy([trait(100, "a/b")], [])
    assert folders(doc) == {"": ([], []), "a": ([], []), "a/b": ([100], [])}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        pytest.param("/a//b/", "a/b", id="slashes everywhere"),
        pytest.param("a/b", "a/b", id="clean already"),
        pytest.param("/a", "a", id="leading"),
        pytest.param("a/", "a", id="trailing"),
        pytest.param("a///b", "a/b", id="doubled"),
        pytest.param("/", "", id="only a slash"),
        pytest.param("//", "", id="only slashes"),
        pytest.param("", "", id="root"),
    ],
)
def test_slashes_normalized(raw: str, clean: str) -> None:
    doc = taxonomy([trait(100, raw), trait(101, clean)], [segment(500, raw)])
    assert folders(doc)[clean] == ([100, 101], [500])
    assert [f["path"] for f in doc["folders"]].count(clean) == 1
    assert all(
        "//" not in f["path"] and not f["path"].startswith("/") and not f["path"].endswith("/")
        for f in doc["folders"]
    )
    assert doc["traits"][0]["folder"] == clean
    assert doc["segments"][0]["folder"] == clean


def test_trait_and_segment_lists() -> None:
    doc = taxonomy(
        [trait(101, "/x/"), trait(100, "", "onboarded")],
        [segment(502, "y"), segment(500, "")],
    )
    # In configuration order, with their (clean) folders and trait types.
    assert doc["traits"] == [
        {"sid": 101, "name": "t101", "folder": "x", "type": "rule"},
        {"sid": 100, "name": "t100", "folder": "", "type": "onboarded"},
    ]
    assert doc["segments"] == [
        {"sid": 502, "name": "s502", "folder": "y"},
        {"sid": 500, "name": "s500", "folder": ""},
    ]
    assert folders(doc) == {"": ([100], [500]), "x": ([101], []), "y": ([], [502])}


def test_same_name_in_different_parents() -> None:
    doc = taxonomy([trait(1, "a/sports"), trait(2, "b/sports")], [])
    assert folders(doc) == {
        "": ([], []),
        "a": ([], []),
        "a/sports": ([1], []),
        "b": ([], []),
        "b/sports": ([2], []),
    }
