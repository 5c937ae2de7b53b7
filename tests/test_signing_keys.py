"""Which secret keys a service may run with (service/signing_keys.py, SPEC §2)."""

from __future__ import annotations

import base64
import random

import pytest

from service.config import ServerConfig
from service.signing_keys import (
    MAKE_A_KEY,
    PUBLISHED_KEYS,
    check_secret_keys,
    is_loopback_host,
    key_setting,
    weakness,
)

# Random keys as `secrets.token_urlsafe(48)` and `openssl rand -hex 32` make them, from
# a fixed seed: the same keys every run (a test is never refused by chance).
RANDOM = random.Random(18)


def urlsafe_key() -> str:
    return base64.urlsafe_b64encode(RANDOM.randbytes(48)).decode().rstrip("=")


STRONG = urlsafe_key()
STRONG_OLD = RANDOM.randbytes(32).hex()


@pytest.mark.parametrize(
    ("description", "key", "why"),
    [
        ("the built-in default", "dev-only-change-me", "published"),
        ("the built-in default, other case", "DEV-ONLY-CHANGE-ME", "published"),
        ("compose's former fallback", "CHANGE-ME-insecure-compose-default", "published"),
        ("k8s secret.yaml's former placeholder", "CHANGE-ME-previous-key", "published"),
        ("change-me, long", "please-change-me-" + STRONG, "'changeme'"),
        ("changeme", "CHANGEME" + STRONG, "'changeme'"),
        ("change_me", "key_Change_Me_" + STRONG, "'changeme'"),
        ("replace", "replace-with-a-real-key-" + STRONG, "'replace'"),
        ("example", STRONG + "Example", "'example'"),
        ("secret", "my-super-secret-key-for-pixelsync-1", "'secret'"),
        ("placeholder", "PLACEHOLDER" + STRONG, "'placeholder'"),
        ("insecure", "insecure-" + STRONG, "'insecure'"),
        ("default", "the-default-key-" + STRONG, "'default'"),
        ("password", STRONG + "_password", "'password'"),
        ("xxx as a part", "pixelsync-xxx-" + STRONG, "'xxx'"),
        ("XXXX as a part", "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "'xxx'"),
        ("TODO as a part", "TODO_" + STRONG, "'todo'"),
        ("empty", "", "shorter than 32 bytes (0)"),
        ("31 bytes", STRONG[:31], "shorter than 32 bytes (31)"),
        ("31 bytes of 2-byte characters", "é" * 15 + "a", "shorter than 32 bytes (31)"),
        ("one repeated character", "a" * 64, "repeats a unit shorter than 32 bytes (1)"),
        ("a repeated short unit", "0123456789" * 4, "repeats a unit shorter than 32 bytes (10)"),
        ("a repeated 31-byte unit", STRONG[:31] * 2, "repeats a unit shorter than 32 bytes (31)"),
        ("five distinct characters", "abcde" * 3 + "edcba" * 4, "fewer than 6 distinct"),
        ("an alphabet run", "abcdefghijklmnopqrstuvwxyz0123456789", "a run or a sequence"),
        ("a run of pairs", "aabbccddeeffgghhiijjkkllmmnnoopp", "a run or a sequence"),
    ],
)
def test_weak_keys_and_why(description: str, key: str, why: str) -> None:
    reason = weakness(key)
    assert reason is not None and why in reason, (description, reason)
    if len(key) > 4:
        assert key not in reason and key.lower() not in reason.lower()


@pytest.mark.parametrize(
    ("description", "key"),
    [
        ("token_urlsafe(48)", STRONG),
        ("openssl rand -hex 32", STRONG_OLD),
        ("exactly 32 bytes", STRONG[:32]),
        ("16 two-byte characters of variety", "äöüßéèêëàâîïôûçñ"),
        ("a repeated 32-byte unit", STRONG[:32] * 2),
    ],
)
def test_strong_keys(description: str, key: str) -> None:
    assert weakness(key) is None, description


def test_random_keys_are_not_refused() -> None:
    """The placeholder parts (`xxx`, `todo`) are matched whole and in one case, so a
    random key has one about once in a million (none in 1,000,000 token_urlsafe(48)
    keys tried); the words are long enough to be rarer still."""
    for _ in range(20_000):
        assert weakness(urlsafe_key()) is None
        assert weakness(RANDOM.randbytes(32).hex()) is None


def test_the_built_in_default_is_published() -> None:
    assert set(ServerConfig().secret_keys) <= PUBLISHED_KEYS
    assert all(weakness(key) for key in PUBLISHED_KEYS)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("sync.example.com", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


PUBLIC_URLS = {
    "loopback v4": ("http://127.0.0.1:8080", False),
    "loopback v4, other address": ("http://127.0.0.2:9000/", False),
    "loopback v6": ("http://[::1]:8080", False),
    "localhost": ("http://localhost:8080", False),
    "public host": ("https://sync.example.com", True),
    "public address": ("http://203.0.113.7:8080", True),
    "all addresses": ("http://0.0.0.0:8080", True),
}
KEY_SETS = {
    "published": (["dev-only-change-me"], [1]),
    "placeholder": (["change-me-" + STRONG], [1]),
    "short": ([STRONG[:31]], [1]),
    "31 then 32 bytes": ([STRONG[:31], STRONG[:32]], [1]),
    "32 bytes": ([STRONG[:32]], []),
    "strong": ([STRONG], []),
    "strong, old key strong": ([STRONG, STRONG_OLD], []),
    "strong, old key weak": ([STRONG, "old-key"], [2]),
    "strong, old key published": ([STRONG, "dev-only-change-me"], [2]),
    "both weak": (["a" * 40, "CHANGE-ME-newest-key"], [1, 2]),
}


@pytest.mark.parametrize("url_case", PUBLIC_URLS)
@pytest.mark.parametrize("key_case", KEY_SETS)
def test_keys_by_public_url(key_case: str, url_case: str) -> None:
    keys, weak_positions = KEY_SETS[key_case]
    public_url, reachable = PUBLIC_URLS[url_case]
    check = check_secret_keys(keys, setting="PIXELSYNC_SECRET_KEYS", public_url=public_url)
    assert check.refused is (reachable and bool(weak_positions))
    if not weak_positions:
        assert check.lines == ()
        return
    lines = "\n".join(check.lines)
    for position in weak_positions:
        signs = "signs" if position == 1 else "verifies"
        assert f"PIXELSYNC_SECRET_KEYS: key {position} of {len(keys)} ({signs}): it " in lines
    assert len(check.lines) == len(weak_positions) + 1  # then what to do
    assert all(line.startswith("PIXELSYNC_SECRET_KEYS: ") for line in check.lines)
    assert MAKE_A_KEY in check.lines[-1]
    if reachable:
        assert f"refused because public_url {public_url} is not a loopback address" in lines
    else:
        assert (
            f"accepted only because public_url {public_url} is a loopback address "
            "(serve also needs --host on loopback)"
        ) in lines
    for key in keys:
        assert key not in lines


@pytest.mark.parametrize(
    ("listen_host", "refused"),
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True), ("::", True)],
)
def test_a_loopback_public_url_is_exempt_only_when_serve_listens_on_loopback(
    listen_host: str, refused: bool
) -> None:
    """The image listens on 0.0.0.0: whatever its public_url says, others reach it."""
    check = check_secret_keys(
        ["dev-only-change-me"],
        setting="[server] secret_keys in x.toml",
        public_url="http://127.0.0.1:8080",
        listen_host=listen_host,
    )
    assert check.refused is refused
    if refused:
        assert f"serve listens on {listen_host}, which other machines can reach" in check.lines[-1]
    else:
        assert f"loopback address and serve listens on {listen_host};" in check.lines[-1]
    strong = check_secret_keys(
        [STRONG], setting="s", public_url="https://sync.example.com", listen_host=listen_host
    )
    assert strong.refused is False and strong.lines == ()


def test_the_setting_is_named_where_the_keys_come_from() -> None:
    assert key_setting("a.toml", from_env=True, is_default=False) == "PIXELSYNC_SECRET_KEYS"
    assert key_setting("a.toml", from_env=False, is_default=False) == (
        "[server] secret_keys in a.toml"
    )
    assert key_setting("a.toml", from_env=False, is_default=True) == (
        "[server] secret_keys in a.toml (or its built-in default)"
    )
    assert key_setting("<defaults>", from_env=False, is_default=True) == (
        "[server] secret_keys (the built-in default: no config file)"
    )
