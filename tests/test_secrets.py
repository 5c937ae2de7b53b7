"""Secret keys that ship in the repository (issue 18, class 3; SPEC §2 `secret_keys`).

- Every key written in the tracked files (config `secret_keys = [...]`,
  `PIXELSYNC_SECRET_KEYS=` / `: ` values, compose fallbacks, k8s `value:`) is refused,
  so a new example key cannot slip in unnoticed.
- compose, the image and the k8s manifests carry no key and no fallback.
- `pixelsync serve` and `check-config` as processes: refused with a public public_url
  (exit 2, the setting and the key's position named, the key never printed), served
  on loopback, from the config file and from PIXELSYNC_SECRET_KEYS.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # PyYAML: installed with schemathesis (the test extras)

from service.identity import CookieSigner
from service.signing_keys import MAKE_A_KEY, weakness
from tests.services import Config, Services, free_port, start_service

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "pixelsync.example.toml"
EXAMPLE_KEY = "dev-only-change-me"
PUBLIC = "https://sync.example.com"

# Strong keys as `secrets.token_urlsafe(48)` makes them, from a fixed seed (the same
# every run, so never refused by chance); no key literal in this file.
_RANDOM = random.Random(318)
STRONG = base64.urlsafe_b64encode(_RANDOM.randbytes(48)).decode().rstrip("=")
STRONG_OLD = _RANDOM.randbytes(32).hex()

# --------------------------------------------------------------- repository scan

_SKIP_DIRS = {".git", "node_modules", "__pycache__", "var", "data"}


def tracked_files() -> list[Path]:
    """`git ls-files` in a checkout; otherwise (an unpacked archive) the tree, without
    virtualenvs, caches and data."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        listed = ""
    if listed:
        return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    found: list[Path] = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith((".venv", "."))]
        found += [Path(folder, f) for f in files]
    return found


_QUOTED = r"\"[^\"\n]*\"|'[^'\n]*'"
# Where a key is written: each pattern's group 1 is one value (or a list, below).
_KEY_PATTERNS = (
    # TOML (and Python building TOML): secret_keys = ["new", "old"]
    re.compile(r"secret_keys\s*=\s*\[([^\]]*)\]"),
    # shell, Dockerfile ENV/ARG, .env, --from-literal: PIXELSYNC_SECRET_KEYS=value
    re.compile(rf"PIXELSYNC_SECRET_KEYS=({_QUOTED}|[^\s\"'`;)]+)"),
    # YAML, JSON, Python dicts: PIXELSYNC_SECRET_KEYS: value
    re.compile(rf"PIXELSYNC_SECRET_KEYS[\"']?\s*:(?=[\s\"'])\s*({_QUOTED}|[^\s\"'#,}}]+)"),
    # compose and shell fallbacks: ${PIXELSYNC_SECRET_KEYS:-value} or ${...-value}
    re.compile(r"\$\{PIXELSYNC_SECRET_KEYS:?-([^}]*)\}"),
    # a Kubernetes env entry: - name: PIXELSYNC_SECRET_KEYS / value: ...
    re.compile(rf"name:\s*[\"']?PIXELSYNC_SECRET_KEYS[\"']?\s*\n\s*value:\s*({_QUOTED}|\S+)"),
    # Dockerfile ENV without '=': ENV PIXELSYNC_SECRET_KEYS value
    re.compile(r"^\s*ENV\s+PIXELSYNC_SECRET_KEYS\s+(\S+)", re.MULTILINE),
)


def keys_in(text: str, *, python: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, key) for every key written in `text`. A `$…` value is a reference
    to the environment, not a key; in Python an unquoted value is a name."""
    for index, pattern in enumerate(_KEY_PATTERNS):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            raw = match.group(1)
            if index == 0:  # a list: its quoted strings
                values = [v[1:-1] for v in re.findall(_QUOTED, raw)]
            elif raw[:1] in "\"'":
                values = [raw[1:-1]]
            elif python:
                continue
            else:
                values = [raw]
            for value in values:
                for key in value.split(","):
                    if key.strip() and not key.strip().startswith("$"):
                        yield line, key.strip()


def repository_keys() -> list[tuple[str, str]]:
    found = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for line, key in keys_in(text, python=path.suffix == ".py"):
            found.append((f"{path.relative_to(ROOT)}:{line}", key))
    return found


def test_the_scan_finds_keys_wherever_they_are_written() -> None:
    # Weak samples only: this file is scanned as well.
    text = """
        [server]
        secret_keys = ["sample-new", 'sample-old']
        secret_keys = [
            "sample-multi-line",
        ]
        export PIXELSYNC_SECRET_KEYS="sample-a,sample-b"
        docker run -e PIXELSYNC_SECRET_KEYS=sample-bare pixelsync
        ENV PIXELSYNC_SECRET_KEYS sample-docker
          PIXELSYNC_SECRET_KEYS: ${PIXELSYNC_SECRET_KEYS:-sample-fallback}
          PIXELSYNC_SECRET_KEYS: sample-yaml-plain
          PIXELSYNC_SECRET_KEYS: ${PIXELSYNC_SECRET_KEYS:?required, no fallback}
          PIXELSYNC_SECRET_KEYS: "$(python3 -c 'import secrets')"
          stringData: {"PIXELSYNC_SECRET_KEYS": "sample-json"}
            - name: PIXELSYNC_SECRET_KEYS
              value: sample-k8s
            - name: PIXELSYNC_SECRET_KEYS
              valueFrom: {secretKeyRef: {name: s, key: PIXELSYNC_SECRET_KEYS}}
    """
    found = [key for _, key in keys_in(text)]
    expected = "new old multi-line a b bare docker fallback yaml-plain json k8s"
    assert sorted(found) == sorted(f"sample-{name}" for name in expected.split())
    python = 'env = {"PIXELSYNC_SECRET_KEYS": KEY, "PIXELSYNC_SECRET_KEYS": "sample-py"}'
    assert [key for _, key in keys_in(python, python=True)] == ["sample-py"]


def test_every_key_in_the_repository_is_refused() -> None:
    """Keys in the tracked files are public: each one must be weak by the rules, which
    a new example key (of 32 random-looking bytes) is not until it is added to
    PUBLISHED_KEYS in service/signing_keys.py."""
    found = repository_keys()
    places = {key: where for where, key in found}
    assert places.get(EXAMPLE_KEY, "").startswith("deploy/pixelsync.example.toml:"), found
    assert len(places) >= 5, found  # tests' and benchmarks' keys as well
    accepted = [(where, key) for where, key in found if weakness(key) is None]
    assert not accepted, f"add these published keys to PUBLISHED_KEYS: {accepted}"


# --------------------------------------------------------------- deploy files


def _secret_name(name: str) -> bool:
    return re.search(r"SECRET|KEY|PASSWORD|TOKEN", name.upper()) is not None


def test_compose_requires_the_key_with_no_fallback() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    checked = []
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for var, value in env.items():
            if _secret_name(var):
                # ${VAR:?message}: compose stops when VAR is unset or empty.
                assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", str(value)), (name, var, value)
                checked.append(var)
        assert "env_file" not in service, name
    assert checked == ["PIXELSYNC_SECRET_KEYS"]


def _k8s_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "k8s").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def test_k8s_reads_the_key_from_a_secret_it_does_not_ship() -> None:
    docs = list(_k8s_documents())
    kinds = {doc.get("kind") for _, doc in docs}
    assert "Deployment" in kinds and "Secret" not in kinds
    kustomization = dict(docs)["kustomization.yaml"]
    assert "secretGenerator" not in kustomization
    assert all((DEPLOY / "k8s" / r).exists() for r in kustomization["resources"])
    refs = []
    for name, doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for entry in container.get("env", []):
                if _secret_name(entry["name"]):
                    assert "value" not in entry, (name, entry)
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref.get("optional") is not True, (name, entry)
                    refs.append((entry["name"], ref["name"], ref["key"]))
    assert refs == [("PIXELSYNC_SECRET_KEYS", "pixelsync-secrets", "PIXELSYNC_SECRET_KEYS")]
    # ...and the mounted configuration leaves the keys to it.
    config_map = next(doc for _, doc in docs if doc.get("kind") == "ConfigMap")
    config = tomllib.loads(config_map["data"]["pixelsync.toml"])
    assert "secret_keys" not in config["server"]


def test_the_image_sets_no_key() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    instructions = re.findall(r"^\s*(?:ENV|ARG)\b.*(?:\\\n.*)*", dockerfile, re.MULTILINE)
    assert instructions and not any("SECRET" in i for i in instructions), instructions
    # Its configuration is the example's, whose key serve refuses: see below.
    assert "COPY deploy/pixelsync.example.toml /etc/pixelsync/pixelsync.toml" in dockerfile


# --------------------------------------------------------------- the processes


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELSYNC_", "REDIS_URL"))}
    return {**env, **extra}


def _assert_names_the_problem(output: str, setting: str, line: str) -> None:
    assert f"{setting}: {line}" in output, output
    assert MAKE_A_KEY in output, output
    assert EXAMPLE_KEY not in output and STRONG not in output, output
    assert "Traceback" not in output, output


def test_the_image_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    """The Dockerfile's own command, run here: `serve --host 0.0.0.0` with the example
    config it copies and no PIXELSYNC_SECRET_KEYS exits 2 before it listens."""
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert entrypoint
    argv = json.loads(entrypoint.group(1))
    assert argv[:2] == ["pixelsync", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    config = tmp_path / "pixelsync.toml"
    config.write_text(EXAMPLE.read_text())
    argv[argv.index("--config") + 1] = str(config)
    argv[argv.index("--port") + 1] = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "service", *argv[1:]],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # if it did start: its embedded Valkey is stopped too
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 2, stderr
    _assert_names_the_problem(
        stderr,
        f"[server] secret_keys in {config} (or its built-in default)",
        "key 1 of 1 (signs): it is published in the pixelsync repository",
    )
    assert "serve listens on 0.0.0.0, which other machines can reach" in stderr
    assert stdout == "" and not (tmp_path / "var").exists()  # nothing started


def test_serve_refuses_the_example_key_with_a_public_url(tmp_path: Path, redis_url: str) -> None:
    service = start_service(
        tmp_path,
        EXAMPLE.read_text(),
        redis_url=redis_url,
        extra_env={"PIXELSYNC_PUBLIC_URL": PUBLIC},
        wait=False,
    )
    try:
        assert service.process.wait(60) == 2
    finally:
        service.stop()
    _assert_names_the_problem(
        service.log(),
        f"[server] secret_keys in {service.config} (or its built-in default)",
        "key 1 of 1 (signs): it is published in the pixelsync repository",
    )
    assert f"refused because public_url {PUBLIC} is not a loopback address" in service.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(service.url + "/healthz", timeout=2)


def test_serve_takes_the_example_key_on_loopback_with_a_warning(
    tmp_path: Path, redis_url: str
) -> None:
    """`make run`: the example config, public_url http://127.0.0.1:…, --host 127.0.0.1."""
    port = free_port()
    service = start_service(
        tmp_path,
        EXAMPLE.read_text(),
        redis_url=redis_url,
        extra_env={"PIXELSYNC_PUBLIC_URL": f"http://127.0.0.1:{port}"},
        port=port,
    )
    try:
        answer = httpx.get(service.url + "/event", timeout=10)
        assert answer.status_code == 200
        assert CookieSigner([EXAMPLE_KEY]).verify(answer.cookies["uuid"]) is not None
    finally:
        assert service.stop() == 0, service.log()
    warnings = [
        doc
        for line in service.log().splitlines()
        if line.startswith("{") and (doc := json.loads(line))["msg"] == "weak secret keys"
    ]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", service.log()
    problems = "\n".join(warnings[0]["problems"])
    assert "key 1 of 1 (signs): it is published in the pixelsync repository" in problems
    assert "accepted only because public_url http://127.0.0.1:" in problems
    assert EXAMPLE_KEY not in problems


def test_serve_refuses_a_weak_old_key_from_the_environment(tmp_path: Path, redis_url: str) -> None:
    """PIXELSYNC_SECRET_KEYS overrides the file's keys; an old key verifies, so a weak
    one is refused as a weak signing key is."""
    service = start_service(
        tmp_path,
        EXAMPLE.read_text(),
        redis_url=redis_url,
        extra_env={"PIXELSYNC_PUBLIC_URL": PUBLIC, "PIXELSYNC_SECRET_KEYS": f"{STRONG},old"},
        wait=False,
    )
    try:
        assert service.process.wait(60) == 2
    finally:
        service.stop()
    log = service.log()
    _assert_names_the_problem(
        log, "PIXELSYNC_SECRET_KEYS", "key 2 of 2 (verifies): it is shorter than 32 bytes (3)"
    )
    assert "key 1 of 2" not in log and "secret_keys in" not in log  # the file's key unused


def test_serve_runs_with_strong_keys_from_the_environment(services: Services) -> None:
    service = services.start(
        Config(EXAMPLE.read_text(), keys=(STRONG, STRONG_OLD), env={"PIXELSYNC_PUBLIC_URL": PUBLIC})
    )
    answer = httpx.get(service.url + "/event", timeout=10)
    assert answer.status_code == 200
    assert CookieSigner([STRONG]).verify(answer.cookies["uuid"]) is not None
    assert CookieSigner([EXAMPLE_KEY]).verify(answer.cookies["uuid"]) is None
    assert "weak secret keys" not in service.log()


def _check_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(EXAMPLE)],
        cwd=tmp_path,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_reports_weak_keys(tmp_path: Path) -> None:
    setting = f"[server] secret_keys in {EXAMPLE} (or its built-in default)"
    published = "key 1 of 1 (signs): it is published in the pixelsync repository"

    public = _check_config(tmp_path, PIXELSYNC_PUBLIC_URL=PUBLIC)
    assert public.returncode == 2 and public.stdout == "", public
    _assert_names_the_problem(public.stderr, setting, published)
    assert f"refused because public_url {PUBLIC} is not a loopback address" in public.stderr

    loopback = _check_config(tmp_path)  # the example's http://127.0.0.1:8080
    assert loopback.returncode == 0 and " ok — " in loopback.stdout, loopback
    _assert_names_the_problem(loopback.stderr, setting, published)
    assert "accepted only because public_url http://127.0.0.1:8080" in loopback.stderr

    env_keys = _check_config(
        tmp_path, PIXELSYNC_PUBLIC_URL=PUBLIC, PIXELSYNC_SECRET_KEYS=f"{STRONG}, {STRONG_OLD}"
    )
    assert env_keys.returncode == 0 and env_keys.stderr == "", env_keys
    assert env_keys.stdout.startswith(f"{EXAMPLE}: ok — ")

    placeholder = _check_config(
        tmp_path, PIXELSYNC_PUBLIC_URL=PUBLIC, PIXELSYNC_SECRET_KEYS="replace-me-" + STRONG
    )
    assert placeholder.returncode == 2, placeholder
    assert (
        "PIXELSYNC_SECRET_KEYS: key 1 of 1 (signs): it looks like a placeholder "
        "(it contains 'replace')" in placeholder.stderr
    )
    assert STRONG not in placeholder.stderr


def test_an_app_started_by_another_command_refuses_weak_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """`uvicorn --factory service.app:app_from_env` (or granian's own CLI) skips
    `serve`: the app factory judges the keys itself, by public_url (it cannot know the
    address the server listens on), before it builds anything."""
    from service.app import app_from_env
    from service.config import ConfigError

    config = tmp_path / "pixelsync.toml"
    config.write_text(EXAMPLE.read_text())
    for name in [k for k in os.environ if k.startswith("PIXELSYNC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIXELSYNC_CONFIG", str(config))
    monkeypatch.setenv("PIXELSYNC_PUBLIC_URL", PUBLIC)
    monkeypatch.setenv("PIXELSYNC_REDIS_URL", redis_url)
    with pytest.raises(ConfigError) as refused:
        app_from_env()
    assert "key 1 of 1 (signs): it is published in the pixelsync repository" in str(refused.value)
    assert EXAMPLE_KEY not in str(refused.value)
    monkeypatch.setenv("PIXELSYNC_SECRET_KEYS", STRONG)
    assert callable(app_from_env())  # a strong key: the app is built
