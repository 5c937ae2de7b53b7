"""The taxonomy (SPEC §6, §10 /v1/taxonomy): folders of traits and segments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import Segment, Trait


def _ancestors(path: str) -> list[str]:
    """ "a/b/c" -> ["", "a", "a/b", "a/b/c"]: every folder on the way, the root first."""
    parts = [p for p in path.split("/") if p]
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _clean(path: str) -> str:
    return "/".join(p for p in path.split("/") if p)


def taxonomy(traits: Sequence[Trait], segments: Sequence[Segment]) -> dict[str, Any]:
    folders: dict[str, dict[str, list[int]]] = {}

    def folder(path: str) -> dict[str, list[int]]:
        for p in _ancestors(path):
            folders.setdefault(p, {"traits": [], "segments": []})
        return folders[_clean(path)]

    for t in traits:
        folder(t.folder)["traits"].append(t.sid)
    for s in segments:
        folder(s.folder)["segments"].append(s.sid)
    return {
        "folders": [
            {"path": path, "traits": sorted(f["traits"]), "segments": sorted(f["segments"])}
            for path, f in sorted(folders.items())
        ],
        "traits": [
            {"sid": t.sid, "name": t.name, "folder": _clean(t.folder), "type": t.type}
            for t in traits
        ],
        "segments": [{"sid": s.sid, "name": s.name, "folder": _clean(s.folder)} for s in segments],
    }
