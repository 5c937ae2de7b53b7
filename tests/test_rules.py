from __future__ import annotations

import math
import operator
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import ConfigError, parse_settings
from service.rules import (
    MAX_DEPTH,
    RuleError,
    Signals,
    TraitIndex,
    TraitRule,
    compile_segment_rule,
    compile_trait_rule,
)

# --- trait rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "signals", "expected"),
    [
        pytest.param('c_section == "sports"', {"c_section": ["sports"]}, True, id="equal"),
        pytest.param('c_section == "sports"', {"c_section": ["news"]}, False, id="not equal"),
        pytest.param('c_section == "sports"', {"section": ["sports"]}, False, id="exact key"),
        pytest.param('c_section == "sports"', {}, False, id="absent key"),
        pytest.param('c_section == "sports"', {"c_section": []}, False, id="no values"),
        pytest.param('c_s == "sports"', {"c_s": ["news", "sports"]}, True, id="any value"),
        pytest.param('k != "a"', {"k": ["a", "b"]}, True, id="!= any value"),
        pytest.param('k != "a"', {"k": ["a"]}, False, id="!= single"),
        pytest.param('k != "a"', {}, False, id="!= absent"),
        pytest.param('NOT c_x == "1"', {}, True, id="NOT absent"),
        pytest.param('NOT c_x == "1"', {"c_x": ["1"]}, False, id="NOT present"),
        pytest.param("c_price > 100", {"c_price": ["150"]}, True, id="number >"),
        pytest.param("c_price > 100", {"c_price": ["99.5"]}, False, id="number > decimal"),
        pytest.param("c_price > 100", {"c_price": ["99"]}, False, id="numeric not lexical"),
        pytest.param('c_price > "100"', {"c_price": ["99"]}, True, id="lexical not numeric"),
        pytest.param("c_price > 100", {"c_price": ["1e3"]}, True, id="exponent value"),
        pytest.param("c_price > 100", {"c_price": ["0150"]}, True, id="leading zero"),
        pytest.param("c_price > 100", {"c_price": ["abc", "200"]}, True, id="skips non-number"),
        pytest.param("c_price > 100", {"c_price": ["abc"]}, False, id="non-number"),
        pytest.param("c_price > 100", {"c_price": ["inf"]}, False, id="inf is no number"),
        pytest.param("c_price != 100", {"c_price": ["nan"]}, False, id="nan is no number"),
        pytest.param("c_price > 100", {"c_price": [" 150"]}, False, id="spaces: no number"),
        pytest.param("c_x == 1", {"c_x": ["1.0"]}, True, id="number =="),
        pytest.param('c_x == "1"', {"c_x": ["1.0"]}, False, id="string =="),
        pytest.param("c_x >= -2.5", {"c_x": ["-2.5"]}, True, id=">= negative"),
        pytest.param("c_x >= -2.5", {"c_x": ["-3"]}, False, id=">= negative false"),
        pytest.param("c_x <= 3", {"c_x": ["3"]}, True, id="<="),
        pytest.param("c_x < 3", {"c_x": ["3"]}, False, id="<"),
        pytest.param('c_x < "b"', {"c_x": ["a"]}, True, id="string <"),
        pytest.param('c_x >= "b"', {"c_x": ["B"]}, False, id="string >= code points"),
        pytest.param("p_age < 25", {"p_age": ["24"]}, True, id="private key"),
        pytest.param(
            'c_section == "sports" AND (c_price > 100 OR p_age < 25)',
            {"c_section": ["sports"], "p_age": ["24"]},
            True,
            id="spec example",
        ),
        pytest.param("a == 1 OR b == 1 AND c == 1", {"a": ["1"]}, True, id="AND before OR"),
        pytest.param("a == 1 OR b == 1 AND c == 1", {"b": ["1"]}, False, id="AND before OR 2"),
        pytest.param("(a == 1 OR b == 1) AND c == 1", {"a": ["1"]}, False, id="parentheses"),
        pytest.param("NOT a == 1 AND b == 1", {"b": ["1"]}, True, id="NOT before AND"),
        pytest.param("NOT a == 1 AND b == 1", {"a": ["1"], "b": ["1"]}, False, id="NOT 2"),
        pytest.param("NOT (a == 1 AND b == 1)", {"a": ["1"]}, True, id="NOT group"),
        pytest.param("NOT NOT a == 1", {"a": ["1"]}, True, id="double NOT"),
        pytest.param("((a == 1))", {"a": ["1"]}, True, id="redundant parentheses"),
        pytest.param(
            'a == 1 and not b CONTAINS "x" Or c StartsWith "y"',
            {"a": ["1"]},
            True,
            id="keywords any case",
        ),
        pytest.param(
            'a == 1 and not b CONTAINS "x" Or c StartsWith "y"',
            {"a": ["1"], "b": ["yxy"]},
            False,
            id="keywords any case 2",
        ),
        pytest.param(
            'h_user-agent contains "Firefox"',
            {"h_user-agent": ["Mozilla/5.0 Firefox/120.0"]},
            True,
            id="hyphenated key",
        ),
        pytest.param(
            'h_accept-language startswith "fr"',
            {"h_accept-language": ["fr-FR,fr;q=0.9"]},
            True,
            id="startswith",
        ),
        pytest.param('c_a.b endswith "z"', {"c_a.b": ["xyz"]}, True, id="dotted key, endswith"),
        pytest.param(
            'order == "1" AND notes == "2" AND contains contains "z" AND _and-or == "3"',
            {"order": ["1"], "notes": ["2"], "contains": ["xzy"], "_and-or": ["3"]},
            True,
            id="keyword-looking keys",
        ),
        pytest.param('c_x contains "Sport"', {"c_x": ["sports"]}, False, id="case-sensitive"),
        pytest.param("c_x contains 10", {"c_x": ["a10b"]}, True, id="contains number text"),
        pytest.param("c_x startswith 1.50", {"c_x": ["1.500"]}, True, id="number source text"),
        pytest.param('c_x matchesregex "^spo+rts?$"', {"c_x": ["spooort"]}, True, id="regex"),
        pytest.param('c_x MATCHESREGEX "rt"', {"c_x": ["sports"]}, True, id="regex searches"),
        pytest.param('c_x matchesregex "^rt"', {"c_x": ["sports"]}, False, id="regex anchored"),
        pytest.param(r'c_x matchesregex "\d{3}"', {"c_x": ["ab123"]}, True, id="regex escape"),
        pytest.param(r'c_x matchesregex "\\d{3}"', {"c_x": ["ab123"]}, True, id="escaped \\"),
        pytest.param(r'c_x matchesregex "a\\\\b"', {"c_x": ["a\\b"]}, True, id="regex \\"),
        pytest.param(r'c_x == "say \"hi\""', {"c_x": ['say "hi"']}, True, id="escaped quote"),
        pytest.param(r'c_x == "a\\b"', {"c_x": ["a\\b"]}, True, id="escaped backslash"),
        pytest.param('c_x == ""', {"c_x": [""]}, True, id="empty string"),
        pytest.param('c_x=="a"AND(c_y>=2)', {"c_x": ["a"], "c_y": ["2"]}, True, id="no spaces"),
        pytest.param("a == 1\n\tAND\r\nb == 2", {"a": ["1"], "b": ["2"]}, True, id="newlines"),
    ],
)
def test_trait_rule(rule: str, signals: Signals, expected: bool) -> None:
    assert compile_trait_rule(rule)(signals) is expected


def test_trait_rule_exposes_keys_and_text() -> None:
    text = 'c_section == "sports" AND (c_price > 100 OR NOT h_user-agent contains "bot")'
    rule = compile_trait_rule(text)
    assert rule.keys == {"c_section", "c_price", "h_user-agent"}
    assert rule.text == text


def test_error_message() -> None:
    with pytest.raises(RuleError) as caught:
        compile_trait_rule("c_x ==")
    error = caught.value
    assert (error.line, error.column) == (1, 7)
    assert error.message == "expected a value after '==', found the end of the rule"
    assert str(error) == f"{error.message} at line 1, column 7"


@pytest.mark.parametrize(
    ("rule", "line", "column", "says"),
    [
        ("c_x ==", 1, 7, "expected a value"),
        ('c_x == "a" AND', 1, 15, "expected a signal name, NOT or '('"),
        ('== "a"', 1, 1, "found '=='"),
        ("c_x ~ 1", 1, 5, "expected an operator after 'c_x', found '~'"),
        ("c_x = 1", 1, 5, "expected an operator"),
        ("c_x >> 1", 1, 6, "expected a value after '>'"),
        ('c_x == "abc', 1, 8, "unterminated string"),
        ('c_x == "abc\\"', 1, 8, "unterminated string"),
        ('c_x matchesregex "("', 1, 18, "invalid regular expression"),
        ('c_x matchesregex "\\p{L}{1000}"', 1, 18, "regular expression too large"),
        # RE2's dialect (the module's docstring): what needs backtracking is refused.
        ('c_x matchesregex "a{1001}"', 1, 18, "invalid repetition size"),
        ('c_x matchesregex "(a)\\1"', 1, 18, "invalid regular expression"),
        ('c_x matchesregex "(?=a)b"', 1, 18, "invalid regular expression"),
        ('c_x matchesregex "(?<!a)b"', 1, 18, "invalid regular expression"),
        ('c_x matchesregex "a++"', 1, 18, "invalid regular expression"),
        ("(c_x == 1", 1, 10, "expected AND, OR or ')' after '1', found the end"),
        ("c_x == 1)", 1, 9, "expected AND, OR or the end of the rule"),
        ("c_x == 1 c_y == 2", 1, 10, "found 'c_y'"),
        ("c_x == 1 andy == 2", 1, 10, "found 'andy'"),
        ('c_x containsx "a"', 1, 5, "found 'containsx'"),
        ("AND == 1", 1, 1, "found 'AND'"),
        ("not == 1", 1, 5, "expected a signal name"),
        ("1c == 2", 1, 1, "expected a signal name"),
        ("c_x == 1e5", 1, 8, "expected a value"),
        ("c_x == 1.", 1, 8, "found '1.'"),
        ("c_x == abc", 1, 8, "expected a value"),
        ("c_x == 1\nAND", 2, 4, "found the end of the rule"),
        ("c_x == 1\n  OR c_y >", 2, 11, "expected a value after '>'"),
        ("c_x == " + "9" * 400, 1, 8, "number out of range"),
        ("NOT " * 1000 + "c_x == 1", 1, 4 * (MAX_DEPTH + 1) + 1, "nests deeper"),
        ("", 1, 1, "empty rule"),
        (" \n\t ", 1, 1, "empty rule"),
    ],
)
def test_invalid_trait_rule(rule: str, line: int, column: int, says: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_trait_rule(rule)
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert says in caught.value.message


def test_reasonable_nesting_compiles() -> None:
    rule = compile_trait_rule("NOT " * (MAX_DEPTH - 1) + "(" * 99 + "c_x == 1" + ")" * 99)
    assert rule({}) and not rule({"c_x": ["1"]})


# --- segment rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ages:
    """Live realizations as their ages in days (0 = today), by trait sid."""

    by_sid: Mapping[int, Sequence[int]]

    def count(self, sids: Sequence[int], within_days: int | None) -> int:
        return sum(
            1
            for sid in sids
            for age in self.by_sid.get(sid, ())
            if within_days is None or age < within_days
        )


HISTORY = Ages({100: [0, 3, 10], 101: [20], 102: []})


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("100T", True),
        ("102T", False),
        ("999T", False),
        ("100T AND 101T", True),
        ("100T AND 102T", False),
        ("102T OR 101T", True),
        ("NOT 102T", True),
        ("NOT 100T OR 102T", False),
        ("NOT 102T AND 999T", False),
        ("NOT (102T AND 999T)", True),
        ("(100T OR 102T) AND NOT (101T AND 102T)", True),
        ("FREQUENCY([100T]) == 3", True),
        ("FREQUENCY([100T]) != 3", False),
        ("FREQUENCY([100T]) > 2", True),
        ("FREQUENCY([100T]) < 3", False),
        ("FREQUENCY([100T]) >= 3", True),
        ("FREQUENCY([100T]) <= 2", False),
        ("FREQUENCY([102T]) == 0", True),
        ("FREQUENCY([100T] <= 7D) == 2", True),
        ("FREQUENCY([100T] <= 4D) == 2", True),
        ("FREQUENCY([100T] <= 3D) == 1", True),  # n days counting today: ages 0..n-1
        ("FREQUENCY([100T] <= 1D) == 1", True),
        ("FREQUENCY([100T, 101T]) == 4", True),
        ("FREQUENCY([100T, 100T]) == 3", True),  # a repeated trait counts once
        ("FREQUENCY([100T, 101T] <= 21D) == 4", True),
        ("FREQUENCY([100T, 101T] <= 20D) == 3", True),
        ("FREQUENCY([ 100T ,101T ]<=20D)>=3", True),
        ("RECENCY([101T]) <= 21D", True),
        ("RECENCY([101T]) <= 20D", False),
        ("RECENCY([102T, 100T]) <= 1D", True),
        ("RECENCY([102T]) <= 100D", False),
        ("frequency([100t] <= 7d) >= 2 and recency([101T]) <= 30D", True),
        ("FREQUENCY([100T] <= 7D) >= 3 OR 101T", True),
    ],
)
def test_segment_rule(rule: str, expected: bool) -> None:
    assert compile_segment_rule(rule)(HISTORY) is expected


def test_segment_rule_exposes_traits() -> None:
    text = "FREQUENCY([100T, 101T] <= 7D) >= 3 OR NOT 102T AND RECENCY([103T]) <= 1D"
    rule = compile_segment_rule(text)
    assert rule.traits == {100, 101, 102, 103}
    assert rule.windows == {7, 1}
    assert rule.text == text
    assert compile_segment_rule("FREQUENCY([1T]) > 2 OR 2T").windows == set()


@pytest.mark.parametrize(
    ("rule", "line", "column", "says"),
    [
        ("100", 1, 1, "expected a trait like 100T, FREQUENCY, RECENCY, NOT or '('"),
        ("100Tx", 1, 1, "found '100Tx'"),
        ("FREQUENCY(100T) >= 3", 1, 11, "expected '['"),
        ("RECENCY([100T]) >= 3D", 1, 17, "expected '<='"),
        ("RECENCY([100T])", 1, 16, "expected '<='"),
        ("FREQUENCY([100T] <= 7) >= 1", 1, 21, "expected a number of days like 7D"),
        ("FREQUENCY([100T] < 7D) >= 1", 1, 18, "expected '<=' or ')'"),
        ("FREQUENCY([100T]) >= 3D", 1, 22, "expected a count"),
        ("FREQUENCY([100T])", 1, 18, "expected a comparison operator"),
        ("FREQUENCY([]) > 1", 1, 12, "expected a trait"),
        ("RECENCY([100T]) <= 0D", 1, 20, "at least 1 day"),
        ("100T AND", 1, 9, "found the end of the rule"),
        ("100T 101T", 1, 6, "expected AND, OR or the end of the rule"),
        ("100T)", 1, 5, "found ')'"),
        ("(100T OR\n101T", 2, 5, "expected AND, OR or ')'"),
        ("1234567890123456789T", 1, 1, "number too large"),
        ('c_x == "1"', 1, 1, "expected a trait"),
        ("", 1, 1, "empty rule"),
    ],
)
def test_invalid_segment_rule(rule: str, line: int, column: int, says: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_segment_rule(rule)
    assert (caught.value.line, caught.value.column) == (line, column), str(caught.value)
    assert says in caught.value.message


# --- the trait index ---------------------------------------------------------------------

INDEXED = [
    (1, 'c_section == "sports"'),
    (2, 'NOT c_x == "1"'),
    (3, "c_price > 100 OR p_age < 25"),
    (4, 'h_user-agent contains "Firefox"'),
    (5, 'NOT (c_section == "news" OR c_y == "2")'),
    (6, 'c_section != "sports"'),
]


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ({}, [2, 5]),
        ({"other": ["1"]}, [2, 5]),
        ({"c_section": ["sports"]}, [1, 2, 5]),
        ({"c_section": ["news"]}, [2, 6]),
        ({"c_section": ["news", "sports"], "c_x": ["1"]}, [1, 6]),
        ({"c_x": ["1"], "p_age": ["20"]}, [3, 5]),
        ({"h_user-agent": ["Firefox"], "c_y": ["2"], "c_price": ["7"]}, [2, 4]),
    ],
)
def test_index_realizes_the_rules_that_hold(signals: Signals, expected: list[int]) -> None:
    rules = [(sid, compile_trait_rule(text)) for sid, text in INDEXED]
    assert TraitIndex(rules).realized(signals) == expected
    assert [sid for sid, rule in rules if rule(signals)] == expected


def test_index_skips_rules_without_a_present_key() -> None:
    calls: list[int] = []

    def counted(sid: int, text: str) -> TraitRule:
        rule = compile_trait_rule(text)

        def predicate(signals: Signals) -> bool:
            calls.append(sid)
            return rule(signals)

        return TraitRule(text, rule.keys, predicate)

    index = TraitIndex([(sid, counted(sid, text)) for sid, text in INDEXED])
    calls.clear()  # building evaluates each rule once against no signals
    assert index.realized({"c_x": ["1"], "unrelated": ["2"]}) == [5]
    assert calls == [2]
    calls.clear()
    assert index.realized({}) == [2, 5]
    assert calls == []


# --- properties against a reference evaluator --------------------------------------------

KEYS = ["c_a", "b", "h_user-agent", "p.x", "order", "notes", "contains", "_1"]
OPS = ["==", "!=", ">", "<", ">=", "<=", "contains", "startswith", "endswith", "matchesregex"]
WORDS = ["", "1", "-2.5", "10", "007", "1e3", "1.", ".5", "nan", "inf", " 1", "abc", 'a"b', "a\\b"]
PATTERNS = ["a", "^a", "b$", "[0-9]+", r"\d", "a|1", "^$", r"\\", '"', r"\."]
SIDS = [7, 100, 101, 102]
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Cmp:
    key: str
    op: str
    literal: str  # a number's source text, or a string's unescaped text
    number: bool


@dataclass(frozen=True)
class Trait:
    sid: int


@dataclass(frozen=True)
class Frequency:
    sids: tuple[int, ...]
    window: int | None
    op: str
    count: int


@dataclass(frozen=True)
class Recency:
    sids: tuple[int, ...]
    days: int


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


Node = Cmp | Trait | Frequency | Recency | Not | And | Or


def _number(value: str) -> float | None:
    """Written differently from the module on purpose: float() minus what it tolerates."""
    if not value.isascii() or value != value.strip() or "_" in value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _compare(node: Cmp, value: str) -> bool:
    if node.op == "contains":
        return node.literal in value
    if node.op == "startswith":
        return value.startswith(node.literal)
    if node.op == "endswith":
        return value.endswith(node.literal)
    if node.op == "matchesregex":
        return re.search(node.literal, value) is not None
    if not node.number:
        return COMPARE[node.op](value, node.literal)
    number = _number(value)
    return number is not None and COMPARE[node.op](number, float(node.literal))


def evaluate(node: Node, signals: Signals, ages: Ages) -> bool:
    if isinstance(node, Cmp):
        return any(_compare(node, value) for value in signals.get(node.key, ()))
    if isinstance(node, Trait):
        return bool(ages.by_sid.get(node.sid))
    if isinstance(node, Frequency):
        window = node.window if node.window is not None else math.inf
        found = [age for sid in set(node.sids) for age in ages.by_sid.get(sid, ())]
        return COMPARE[node.op](sum(1 for age in found if age < window), node.count)
    if isinstance(node, Recency):
        ages_found = [age for sid in node.sids for age in ages.by_sid.get(sid, ())]
        return bool(ages_found) and min(ages_found) <= node.days - 1
    if isinstance(node, Not):
        return not evaluate(node.inner, signals, ages)
    if isinstance(node, And):
        return all(evaluate(part, signals, ages) for part in node.parts)
    return any(evaluate(part, signals, ages) for part in node.parts)


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(node: Node, rnd: random.Random) -> str:
    """Rule text for `node`: random spacing and keyword case, parentheses where needed."""

    def word(keyword: str) -> str:
        return rnd.choice([keyword.upper(), keyword.lower(), keyword.title()])

    def space() -> str:
        return rnd.choice([" ", "  ", "\n", "\t "])

    def traits(sids: tuple[int, ...]) -> str:
        return "[" + ", ".join(f"{sid}{word('t')}" for sid in sids) + "]"

    def child(part: Node, loose: tuple[type, ...]) -> str:
        text = render(part, rnd)
        if isinstance(part, loose) or rnd.random() < 0.1:
            return f"({space()}{text}{space()})"
        return text

    if isinstance(node, Cmp):
        literal = node.literal if node.number else _string(node.literal)
        return f"{node.key}{space()}{word(node.op) if node.op.isalpha() else node.op} {literal}"
    if isinstance(node, Trait):
        return f"{node.sid}{word('t')}"
    if isinstance(node, Frequency):
        window = f" <= {node.window}{word('d')}" if node.window is not None else ""
        return f"{word('frequency')}({traits(node.sids)}{window}) {node.op} {node.count}"
    if isinstance(node, Recency):
        return f"{word('recency')}({traits(node.sids)}) <= {node.days}{word('d')}"
    if isinstance(node, Not):
        return f"{word('not')}{space()}{child(node.inner, (And, Or))}"
    if isinstance(node, And):
        return f"{space()}{word('and')}{space()}".join(child(p, (Or,)) for p in node.parts)
    return f"{space()}{word('or')}{space()}".join(child(p, ()) for p in node.parts)


def _tree(leaves: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    def branches(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        parts = st.lists(children, min_size=2, max_size=3).map(tuple)
        return st.one_of(children.map(Not), parts.map(And), parts.map(Or))

    return st.recursive(leaves, branches, max_leaves=6)


_numbers = st.builds(
    lambda whole, fraction: f"{whole}.{fraction}" if fraction is not None else str(whole),
    st.integers(-20, 20),
    st.none() | st.integers(0, 99),
)
_texts = st.sampled_from(WORDS) | st.text(alphabet='ab1.-e+_ "\\', max_size=4)
comparisons = st.one_of(
    st.builds(Cmp, st.sampled_from(KEYS), st.sampled_from(OPS[:-1]), _numbers, st.just(True)),
    st.builds(Cmp, st.sampled_from(KEYS), st.sampled_from(OPS[:-1]), _texts, st.just(False)),
    st.builds(
        Cmp,
        st.sampled_from(KEYS),
        st.just("matchesregex"),
        st.sampled_from(PATTERNS),
        st.just(False),
    ),
)
signal_sets = st.dictionaries(st.sampled_from(KEYS), st.lists(_texts, max_size=3), max_size=5)
_sid_lists = st.lists(st.sampled_from(SIDS), min_size=1, max_size=3).map(tuple)
history_atoms = st.one_of(
    st.builds(Trait, st.sampled_from(SIDS)),
    st.builds(
        Frequency,
        _sid_lists,
        st.none() | st.integers(1, 30),
        st.sampled_from(list(COMPARE)),
        st.integers(0, 4),
    ),
    st.builds(Recency, _sid_lists, st.integers(1, 30)),
)
histories = st.builds(
    Ages, st.dictionaries(st.sampled_from(SIDS), st.lists(st.integers(0, 40), max_size=5))
)
NO_HISTORY = Ages({})


def _traits_of(node: Node) -> set[int]:
    if isinstance(node, Trait):
        return {node.sid}
    if isinstance(node, Frequency | Recency):
        return set(node.sids)
    if isinstance(node, Not):
        return _traits_of(node.inner)
    if isinstance(node, And | Or):
        return set().union(*(_traits_of(part) for part in node.parts))
    return set()


def _windows_of(node: Node) -> set[int]:
    if isinstance(node, Frequency) and node.window is not None:
        return {node.window}
    if isinstance(node, Recency):
        return {node.days}
    if isinstance(node, Not):
        return _windows_of(node.inner)
    if isinstance(node, And | Or):
        return set().union(*(_windows_of(part) for part in node.parts))
    return set()


@settings(max_examples=100, deadline=None)
@given(_tree(comparisons), st.lists(signal_sets, min_size=1, max_size=4), st.randoms())
def test_trait_rules_agree_with_reference(
    node: Node, signals: list[Signals], rnd: random.Random
) -> None:
    text = render(node, rnd)
    rule = compile_trait_rule(text)
    for case in signals:
        assert rule(case) is evaluate(node, case, NO_HISTORY), (text, case)


@settings(max_examples=100, deadline=None)
@given(_tree(history_atoms), st.lists(histories, min_size=1, max_size=4), st.randoms())
def test_segment_rules_agree_with_reference(
    node: Node, cases: list[Ages], rnd: random.Random
) -> None:
    text = render(node, rnd)
    rule = compile_segment_rule(text)
    assert rule.traits == _traits_of(node)
    assert rule.windows == _windows_of(node)
    for ages in cases:
        assert rule(ages) is evaluate(node, {}, ages), (text, ages)


@settings(max_examples=50, deadline=None)
@given(st.lists(_tree(comparisons), max_size=6), st.lists(signal_sets, max_size=4), st.randoms())
def test_index_agrees_with_reference(
    nodes: list[Node], signals: list[Signals], rnd: random.Random
) -> None:
    index = TraitIndex([(sid, compile_trait_rule(render(n, rnd))) for sid, n in enumerate(nodes)])
    for case in [{}, *signals]:
        expected = [sid for sid, node in enumerate(nodes) if evaluate(node, case, NO_HISTORY)]
        assert index.realized(case) == expected


TRAIT_TOKENS = [*KEYS, *OPS, "AND", "or", "Not", "(", ")", '"a"', '"', "1", "-2.5", "\\", "\n"]
SEGMENT_TOKENS = ["100T", "7D", "FREQUENCY", "recency", "[", "]", ",", "<=", ">=", "3", "(", ")"]
SEGMENT_TOKENS += ["AND", "OR", "NOT", "0D", "T", "-1"]
_token_texts = st.builds(
    lambda tokens, glue: glue.join(tokens),
    st.lists(st.sampled_from(TRAIT_TOKENS + SEGMENT_TOKENS), max_size=14),
    st.sampled_from([" ", ""]),
)


@settings(max_examples=250, deadline=None)
@given(st.text(max_size=40) | _token_texts)
def test_parsers_fail_only_with_rule_error(text: str) -> None:
    try:
        trait_rule = compile_trait_rule(text)
    except RuleError as exc:
        assert exc.line >= 1 and exc.column >= 1
    else:
        trait_rule({"c_a": ["1", "a"], "contains": ['"']})
    try:
        segment_rule = compile_segment_rule(text)
    except RuleError as exc:
        assert exc.line >= 1 and exc.column >= 1
    else:
        segment_rule(HISTORY)


# --- hostile values (issue 18) ---------------------------------------------------------

HOSTILE_PATTERNS = [
    "(a+)+b",  # each is exponential in Python's re on a run of a's (or x's) without a match
    "(x+x+)+y",
    "(.*a){20}",
    "^(([a-z])+.)+[A-Z]([a-z])+$",
    "(a|aa)+$",
    "(\\w+\\s?)+$",
]


@pytest.mark.parametrize("pattern", HOSTILE_PATTERNS)
def test_matchesregex_is_linear(pattern: str) -> None:
    """RE2: 32 KiB of the value each pattern backtracks on longest, the best of three
    under 50 ms (Python's re took 103 s for "(a+)+b" on 30 characters)."""
    rule = compile_trait_rule(f'c_x matchesregex "{pattern}"')
    for value in ("a" * 32768 + "!", "x" * 32768, "ab" * 16384 + "!", "a" * 32767 + "\n"):
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            rule({"c_x": [value]})
            best = min(best, time.perf_counter() - started)
        assert best < 0.05, (pattern, value[:4], best)


def test_matchesregex_keeps_search_semantics() -> None:
    """A search anywhere in the value, in Unicode: RE2 with the value's UTF-8."""
    assert compile_trait_rule('c_x matchesregex "é+t"')({"c_x": ["été"]})
    assert compile_trait_rule('c_x matchesregex "^.$"')({"c_x": ["é"]})  # one code point
    assert compile_trait_rule('c_x matchesregex "(?i)SPORT"')({"c_x": ["my sports"]})
    assert not compile_trait_rule('c_x matchesregex "^sport"')({"c_x": ["my sports"]})
    assert compile_trait_rule('c_x matchesregex "b\\\\z"')({"c_x": ["ab"]})


def test_a_pattern_re2_refuses_names_its_trait() -> None:
    """check-config and load_settings refuse it, naming the trait, key and position."""
    doc = {"traits": [{"sid": 7, "name": "t", "rule": 'c_x matchesregex "(a)\\\\1"'}]}
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc)
    (problem,) = caught.value.problems
    assert "sid 7" in problem and "key 'rule'" in problem
    assert "invalid regular expression (invalid escape sequence: \\1)" in problem
    assert "line 1, column 18" in problem


@pytest.mark.parametrize(
    "value",
    ["1" * 32767 + "x", "1." * 16384, "1e" * 16384, "." * 32768, "+" * 32768, "9" * 32768],
)
def test_numeric_comparisons_are_linear(value: str) -> None:
    """The number regex was quadratic: 21 s for 32 KiB of digits and a letter."""
    rule = compile_trait_rule("c_price > 100")
    started = time.perf_counter()
    assert rule({"c_price": [value]}) is False
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("101", True),
        ("1e3", True),
        ("+1.5E+2", True),
        (".5e3", True),
        ("1000.", True),
        ("1" + "0" * 97 + ".5", True),  # 100 characters
        ("1" + "0" * 98 + ".5", False),  # 101: not a number (MAX_NUMBER_CHARS)
        ("0" * 120 + "101", False),
        ("1e", False),
        ("1.2.3", False),
        ("--101", False),
        ("\u0661\u0660\u0661", False),  # float() reads other scripts' digits: the rule does not
    ],
)
def test_numeric_values(value: str, expected: bool) -> None:
    assert compile_trait_rule("c_price > 100")({"c_price": [value]}) is expected
