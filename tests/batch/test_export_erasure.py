"""Erasures racing an `iter` export (SPEC §12, issue 19): whenever a visitor is erased
around an export, the partner is told the removal exactly once overall, in that export
or the next, and is never left holding segments. Real Valkey; the erasure is applied
from inside the store calls the export makes (no sleeps)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.batch.test_export import DAY, Case, case, read_back

__all__ = ["case"]  # the fixture, imported for these tests


def partner_view(lines: list[str], uid: str) -> tuple[set[str], int]:
    """What the partner holds for `uid` after these lines in order (each line says the
    visitor's current segments), and how many removals (no current segment) it got."""
    held: set[str] = set()
    removals = 0
    for line in lines:
        who, current, removed = line.split(" ")
        if who != uid:
            continue
        held = set(filter(None, current.split(",")))
        removals += not held and bool(removed)
    return held, removals


async def export(case: Case, out: Path) -> list[str]:
    result = await case.exporter.run(case.destination, "iter", out)
    return read_back(out, result.info)


async def test_back_after_erasure_then_exit_is_removed(case: Case, tmp_path: Path) -> None:
    """Erased, back with the same uuid and uid, exported unchanged (its tombstone folded
    into its line): the export keeps a mark, so that leaving the segment is sent."""
    v, u = await case.visitor(300)
    assert await export(case, tmp_path / "1") == [f"{u} buyers "]
    assert case.store.erase_visitor(v)
    await case.store.drain()
    case.store.writes._erased.clear()  # 10 minutes later, or another process
    case.store.put_mapping(v, case.dpid, u, DAY)  # the cookie and the partner uid kept
    await case.store.drain()
    await case.set_traits(v, 300)
    assert await export(case, tmp_path / "2") == []  # the partner holds buyers already
    await case.set_traits(v)  # leaves the segment
    assert await export(case, tmp_path / "3") == [f"{u}  buyers"]


async def test_erased_during_its_first_export(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No mark yet, erased between the scan and the staging: no line, no mark (the
    reviewer's case: the line went out, the mark was committed, then swept)."""
    v, u = await case.visitor(300)
    original = case.store.stage_marks

    async def stage(dest: int, marks: Any, removals: Any = (), folded: Any = None) -> set[str]:
        if v in marks:
            assert case.store.erase_visitor(v)
            await case.store.drain()
        return await original(dest, marks, removals, folded)

    monkeypatch.setattr(case.store, "stage_marks", stage)
    assert u not in " ".join(await export(case, tmp_path / "1"))
    monkeypatch.undo()
    assert await export(case, tmp_path / "2") == []
    assert (await case.store.sweep(DAY, duty=1.0))["marks"] == 0  # no mark left behind


POINTS = ("before scan", "after scan", "after stage", "after commit")


@pytest.mark.parametrize("sent_before", [False, True], ids=["first export", "exported before"])
@pytest.mark.parametrize("point", POINTS)
async def test_an_erasure_racing_an_export_is_sent_once(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, sent_before: bool
) -> None:
    v, u = await case.visitor(300)
    lines: list[str] = []
    if sent_before:
        lines += await export(case, tmp_path / "0")
        await case.set_traits(v, 300, 301)  # the export under way sends a change
    erased = False

    async def erase() -> None:
        nonlocal erased
        if not erased:
            erased = True
            assert case.store.erase_visitor(v)
            await case.store.drain()

    def after(name: str, concerns: Callable[[Any, Any], bool]) -> None:
        """Erase v once the store's `name` answered, in the round that holds v."""
        original: Callable[..., Awaitable[Any]] = getattr(case.store, name)

        async def then_erase(*args: Any, **kwargs: Any) -> Any:
            answer = await original(*args, **kwargs)
            if concerns(args, answer):
                await erase()
            return answer

        monkeypatch.setattr(case.store, name, then_erase)

    if point == "before scan":
        await erase()
    elif point == "after scan":
        after("scan_for_export", lambda _, rows: any(row.uuid == v for row in rows))
    elif point == "after stage":
        after("stage_marks", lambda args, _: v in args[1])
    else:
        after("commit_marks", lambda *_: True)
    lines += await export(case, tmp_path / "1")
    assert erased
    monkeypatch.undo()
    lines += await export(case, tmp_path / "2")
    assert await export(case, tmp_path / "3") == []

    told = any(line.startswith(f"{u} ") for line in lines)
    assert partner_view(lines, u) == (set(), 1 if told else 0), lines
    # Sent before, or written by the export under way before the erasure reached it.
    assert told == (sent_before or point in ("after stage", "after commit")), lines
