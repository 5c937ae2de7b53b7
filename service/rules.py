"""Trait and segment rules (SPEC §6): parsed once with lark, compiled into closures.

Trait rules compare signals: ``c_section == "sports" AND (c_price > 100 OR p_age < 25)``.
- A comparison holds when ANY value of its key satisfies it; an absent key (or one with
  no values) makes it false, so ``NOT c_x == "1"`` holds when c_x is absent, and
  ``k != "a"`` holds for ``k=a,b`` (use ``NOT k == "a"`` for "no value is a").
- Against a number literal the value must be a finite ASCII decimal (sign, fraction and
  exponent allowed, no spaces) of at most MAX_NUMBER_CHARS characters, and compares
  numerically; anything else fails. Against a string literal, ordering operators compare
  code points. ``contains``, ``startswith``, ``endswith`` are case-sensitive on the
  literal's text (a number's source text).
- ``matchesregex`` searches the value (anywhere, like ``re.search``) with RE2
  (google-re2), whose time is linear in the value whatever the pattern: a pattern of
  Python's ``re`` could backtrack for seconds on a browser's value. RE2's dialect is
  Python's without what needs backtracking: no backreferences (``\\1``), lookarounds
  (``(?=``, ``(?<=``, ...), possessive or atomic groups, ``\\Z`` (write ``\\z``) nor
  repeat counts over 1000, which are configuration errors; ``\\d``, ``\\w``, ``\\s``, ``\\b``
  are ASCII-only; ``$`` matches only at the very end (not before a last newline).
  Linear is not free: a pattern whose matcher must track many positions at once (such
  as ``a[ab]{20}c``) costs about a microsecond per byte of value.
- String literals: double quotes, ``\\"`` and ``\\\\`` are escapes; any other backslash is
  kept as written so regexes read naturally (``"\\d+"``).
- Keys are ``[A-Za-z_][A-Za-z0-9_.-]*``; ``AND``, ``OR``, ``NOT`` (any case) are reserved,
  other keyword-looking names (``contains``, ``order``, ``notes``) are ordinary keys.

Segment rules read a visitor's history through `History`:
- ``100T`` is ``count([100], None) >= 1``;
  ``FREQUENCY([100T, 101T] <= 7D) >= 3`` is ``count([100, 101], 7) >= 3``.
- ``RECENCY(L) <= nD`` is ``count(L, n) >= 1``: "the latest realization is within n days"
  counting today as one of them, so it is exactly ``FREQUENCY(L <= nD) >= 1``.
- Windows are at least 1 day; a listed trait counts once even when repeated.
Keywords and the T and D suffixes are case-insensitive.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar, cast

import re2
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedToken

Signals = Mapping[str, Sequence[str]]
T = TypeVar("T")
Predicate = Callable[[T], bool]

MAX_DEPTH: Final = 64  # deeper rules would overflow the stack when compiled or evaluated
# A value compared with a number: longer ones are no number (the longest float written
# out, such as 2.2250738585072014e-308, has 23 characters; this leaves room for zeros).
MAX_NUMBER_CHARS: Final = 100
_WORD_END: Final = r"(?![A-Za-z0-9_.\-])"  # a keyword must not be the start of a key

_COMMON: Final = rf"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT not_expr -> negation
    | atom
_AND.2: /and{_WORD_END}/i
_OR.2: /or{_WORD_END}/i
NOT.2: /not{_WORD_END}/i
_LPAR: "("
_RPAR: ")"
%ignore /\s+/
"""

_TRAIT_GRAMMAR: Final = (
    _COMMON
    + rf"""
?atom: KEY OP (STRING | NUMBER) -> comparison
    | _LPAR or_expr _RPAR
KEY: /(?!(?i:and|or|not){_WORD_END})[A-Za-z_][A-Za-z0-9_.\-]*/
OP: /==|!=|<=|>=|<|>/ | /(contains|startswith|endswith|matchesregex){_WORD_END}/i
STRING: /"(?:[^"\\]|\\[\s\S])*"/
NUMBER: /-?[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.])/
"""
)

_SEGMENT_GRAMMAR: Final = (
    _COMMON
    + r"""
?atom: TRAIT -> trait
    | FREQUENCY _LPAR traits [_LE DAYS] _RPAR CMP COUNT -> frequency
    | RECENCY _LPAR traits _RPAR _LE DAYS -> recency
    | _LPAR or_expr _RPAR
traits: _LSQB TRAIT (_COMMA TRAIT)* _RSQB
FREQUENCY.2: /frequency(?![A-Za-z0-9_])/i
RECENCY.2: /recency(?![A-Za-z0-9_])/i
TRAIT: /[0-9]+t(?![A-Za-z0-9_])/i
DAYS: /[0-9]+d(?![A-Za-z0-9_])/i
COUNT: /[0-9]+(?![A-Za-z0-9_.])/
CMP: /==|!=|<=|>=|<|>/
_LE: "<="
_LSQB: "["
_RSQB: "]"
_COMMA: ","
"""
)

_TRAIT_PARSER: Final = Lark(_TRAIT_GRAMMAR, parser="lalr", propagate_positions=True)
_SEGMENT_PARSER: Final = Lark(_SEGMENT_GRAMMAR, parser="lalr", propagate_positions=True)

# What each terminal is called in error messages, in the order they are listed.
_NAMES: Final = {
    "KEY": "a signal name",
    "OP": "an operator",
    "STRING": "a value",
    "NUMBER": "a value",
    "TRAIT": "a trait like 100T",
    "FREQUENCY": "FREQUENCY",
    "RECENCY": "RECENCY",
    "NOT": "NOT",
    "_LPAR": "'('",
    "_LSQB": "'['",
    "CMP": "a comparison operator",
    "COUNT": "a count",
    "_LE": "'<='",
    "DAYS": "a number of days like 7D",
    "_COMMA": "','",
    "_RSQB": "']'",
    "_AND": "AND",
    "_OR": "OR",
    "_RPAR": "')'",
    "$END": "the end of the rule",
}
# Possessive quantifiers, and a dot that cannot be skipped between two digit runs: one
# way to match any text, so a failing value costs one pass (the former `[0-9]+\.?[0-9]*`
# tried every split of a digit run: 21 s for 32 KiB of digits and a letter).
_NUMERIC: Final = re.compile(r"[+-]?+(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][+-]?+[0-9]++)?+")
_ESCAPE: Final = re.compile(r'\\(["\\])')
_WORD: Final = re.compile(r"[A-Za-z0-9_.\-]+|\S")
_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


class RuleError(ValueError):
    """A rule that does not parse or compile, with the 1-based position of the culprit."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"{self.message} at line {self.line}, column {self.column}"


class History(Protocol):
    def count(self, sids: Sequence[int], within_days: int | None) -> int:
        """Live (unexpired) realizations of any of these traits; within_days=n counts only the
        n most recent days including today (age in days 0..n-1); None counts all live ones."""
        ...


@dataclass(frozen=True, slots=True)
class TraitRule:
    text: str
    keys: frozenset[str]
    predicate: Predicate[Signals] = field(repr=False, compare=False)

    def __call__(self, signals: Signals) -> bool:
        return self.predicate(signals)


@dataclass(frozen=True, slots=True)
class SegmentRule:
    text: str
    traits: frozenset[int]
    windows: frozenset[int]  # the n of every "<= nD": how many days of history it reads
    predicate: Predicate[History] = field(repr=False, compare=False)

    def __call__(self, history: History) -> bool:
        return self.predicate(history)


class TraitIndex:
    """Evaluates only the rules that could hold: those naming a key that is present, and
    those that hold with none of their keys present (a rule is then constant, e.g. NOT)."""

    def __init__(self, rules: Iterable[tuple[int, TraitRule]]) -> None:
        pairs = list(rules)
        self._sids = [sid for sid, _ in pairs]
        self._predicates = [rule.predicate for _, rule in pairs]
        self._by_key: dict[str, list[int]] = {}
        for index, (_, rule) in enumerate(pairs):
            for key in rule.keys:
                self._by_key.setdefault(key, []).append(index)
        # With no key of a rule present, every comparison is false: the rule is constant.
        empty: Signals = {}
        self._keyless = frozenset(i for i, (_, rule) in enumerate(pairs) if rule(empty))
        self._keyless_sids = [self._sids[i] for i in sorted(self._keyless)]

    @property
    def keys(self) -> frozenset[str]:
        """Every signal key a rule names: no other key can change what is realized."""
        return frozenset(self._by_key)

    def realized(self, signals: Signals) -> list[int]:
        """The sids whose rule holds, in the order given."""
        touched: set[int] = set()
        for key in signals:
            found = self._by_key.get(key)
            if found is not None:
                touched.update(found)
        if not touched:
            return list(self._keyless_sids)
        return [
            self._sids[i]
            for i in sorted(touched | self._keyless)
            if i not in touched or self._predicates[i](signals)
        ]


def compile_trait_rule(text: str) -> TraitRule:
    keys: set[str] = set()
    predicate = _compile(_parse(_TRAIT_PARSER, text), 0, lambda node: _comparison(node, keys))
    return TraitRule(text, frozenset(keys), predicate)


def compile_segment_rule(text: str) -> SegmentRule:
    traits: set[int] = set()
    windows: set[int] = set()
    predicate = _compile(
        _parse(_SEGMENT_PARSER, text), 0, lambda node: _history_test(node, traits, windows)
    )
    return SegmentRule(text, frozenset(traits), frozenset(windows), predicate)


def _compile(
    node: Tree[Token], depth: int, leaf: Callable[[Tree[Token]], Predicate[T]]
) -> Predicate[T]:
    """AND, OR and NOT are shared by both languages; `leaf` compiles the rest."""
    if depth > MAX_DEPTH:
        raise RuleError(f"rule nests deeper than {MAX_DEPTH} levels", *_start(node))
    if node.data == "negation":
        inner = _compile(cast("Tree[Token]", node.children[1]), depth + 1, leaf)
        return lambda subject: not inner(subject)
    if node.data in ("and_expr", "or_expr"):
        parts = [_compile(cast("Tree[Token]", c), depth + 1, leaf) for c in node.children]
        return _all(parts) if node.data == "and_expr" else _any(parts)
    return leaf(node)


def _all(parts: list[Predicate[T]]) -> Predicate[T]:
    if len(parts) == 2:
        first, second = parts
        return lambda subject: first(subject) and second(subject)
    return lambda subject: all(part(subject) for part in parts)


def _any(parts: list[Predicate[T]]) -> Predicate[T]:
    if len(parts) == 2:
        first, second = parts
        return lambda subject: first(subject) or second(subject)
    return lambda subject: any(part(subject) for part in parts)


def _comparison(node: Tree[Token], keys: set[str]) -> Predicate[Signals]:
    key, op, literal = cast("list[Token]", node.children)
    keys.add(str(key))
    test = _value_test(op.value.lower(), literal)

    def holds(signals: Signals) -> bool:
        values = signals.get(key.value)
        return any(map(test, values)) if values else False

    return holds


def _value_test(op: str, literal: Token) -> Callable[[str], bool]:
    source = literal.value
    text = _ESCAPE.sub(r"\1", source[1:-1]) if literal.type == "STRING" else source
    if op == "contains":
        return lambda value: text in value
    if op == "startswith":
        return lambda value: value.startswith(text)
    if op == "endswith":
        return lambda value: value.endswith(text)
    if op == "matchesregex":
        search = _regex(text, literal)
        return lambda value: search(value.encode("utf-8", "surrogatepass")) is not None
    compare = _COMPARE[op]
    if literal.type == "STRING":
        return lambda value: compare(value, text)
    target = float(source)
    if not math.isfinite(target):
        raise RuleError("number out of range", *_start(literal))

    def numeric(value: str) -> bool:
        number = _number(value)
        return number is not None and compare(number, target)

    return numeric


def _regex(text: str, literal: Token) -> Callable[[bytes], object]:
    """RE2's search for a pattern, or a RuleError for one RE2 cannot run (SPEC §6's
    "re.search", in a dialect that cannot backtrack: see the module's docstring)."""
    options = re2.Options()
    options.never_capture = True  # only whether it matches is wanted
    options.log_errors = False  # the error is the configuration's, reported by it
    try:
        pattern = re2.compile(text, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        if "too large" in reason or "too big" in reason:
            raise RuleError("regular expression too large", *_start(literal)) from None
        raise RuleError(f"invalid regular expression ({reason})", *_start(literal)) from None
    search: Callable[[bytes], object] = pattern.search
    return search


def _number(value: str) -> float | None:
    if len(value) > MAX_NUMBER_CHARS or _NUMERIC.fullmatch(value) is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _history_test(node: Tree[Token], traits: set[int], windows: set[int]) -> Predicate[History]:
    if node.data == "trait":
        single = (_sid(cast(Token, node.children[0]), traits),)
        return lambda history: history.count(single, None) >= 1
    if node.data == "frequency":
        _, listed, window, op, count = node.children
        sids = _sids(cast("Tree[Token]", listed), traits)
        days = _days(cast(Token, window), windows) if window is not None else None
        compare, bound = _COMPARE[str(op)], _int(cast(Token, count))
        return lambda history: compare(history.count(sids, days), bound)
    # recency: the only other leaf the grammar produces
    _, listed, window = node.children
    sids = _sids(cast("Tree[Token]", listed), traits)
    days = _days(cast(Token, window), windows)
    return lambda history: history.count(sids, days) >= 1


def _sids(listed: Tree[Token], traits: set[int]) -> tuple[int, ...]:
    # dict.fromkeys: a repeated trait counts once, order kept for the History.
    return tuple(dict.fromkeys(_sid(cast(Token, t), traits) for t in listed.children))


def _sid(token: Token, traits: set[int]) -> int:
    sid = _int(token, token.value[:-1])
    traits.add(sid)
    return sid


def _days(token: Token, windows: set[int]) -> int:
    days = _int(token, token.value[:-1])
    if days < 1:
        raise RuleError("a window needs at least 1 day", *_start(token))
    windows.add(days)
    return days


def _int(token: Token, digits: str | None = None) -> int:
    digits = token.value if digits is None else digits
    if len(digits) > 18:  # also keeps int() clear of its digit limit
        raise RuleError("number too large", *_start(token))
    return int(digits)


def _parse(parser: Lark, text: str) -> Tree[Token]:
    """Parse token by token, so that an error can say what came before the culprit."""
    if not text.strip():
        raise RuleError("empty rule", 1, 1)
    interactive = parser.parse_interactive(text)
    seen: list[Token] = []
    try:
        for token in interactive.iter_parse():  # yields each token, then feeds it
            seen.append(token)
        return cast(
            "Tree[Token]", interactive.feed_token(Token.new_borrow_pos("$END", "", seen[-1]))
        )
    except UnexpectedToken as exc:
        # The parser refused the last token seen, or the lexer the one after it.
        fed = seen[:-1] if seen and exc.token is seen[-1] else seen
        found, at = _found(exc.token, fed)
    except UnexpectedCharacters as exc:
        fed, pos = seen, exc.pos_in_stream or 0
        if text[pos] == '"':
            raise RuleError("unterminated string", exc.line, exc.column) from None
        word = _WORD.match(text, pos)
        found, at = _show(word.group() if word else text[pos]), (exc.line, exc.column)
    after = f" after {_show(fed[-1].value)}" if fed else ""
    expected = _describe(_expected(parser, fed))
    raise RuleError(f"expected {expected}{after}, found {found}", *at)


def _found(token: Token, fed: list[Token]) -> tuple[str, tuple[int, int]]:
    if token.type != "$END":
        return _show(token.value), _start(token)
    # The end of input is reported just past the last token.
    last = fed[-1] if fed else None
    at = (last.end_line or 1, last.end_column or 1) if last is not None else (1, 1)
    return "the end of the rule", at


def _expected(parser: Lark, fed: list[Token]) -> set[str]:
    """What may follow `fed`: lark's own sets are taken after LALR reductions, or from a
    lexer state merged with others, and can miss or add a terminal."""
    probe = parser.parse_interactive("")
    for token in fed:
        probe.feed_token(token)
    accepts = cast("Callable[[], set[str]]", probe.accepts)  # untyped in lark
    return accepts()


def _describe(terminals: Iterable[str]) -> str:
    wanted = set(terminals)
    names = list(dict.fromkeys(name for t, name in _NAMES.items() if t in wanted))
    names += sorted(
        t for t in wanted if t not in _NAMES
    )  # unnamed terminals: shown raw, not dropped
    if not names:
        return "nothing more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _show(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:21] + "...")


def _start(item: Token | Tree[Token]) -> tuple[int, int]:
    if isinstance(item, Tree):
        return item.meta.line, item.meta.column
    return item.line or 1, item.column or 1
