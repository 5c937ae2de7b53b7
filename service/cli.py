"""pixelsync serve | check-config | import | export | worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import gctune, logs, metrics
from .batch.run import batch_redis, export_command, import_files, url_file, worker_command
from .config import ConfigError, Settings, find_config_path, load_settings
from .signing_keys import settings_key_check
from .store import EmbeddedValkey


def _load(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        sys.exit(2)


def check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    keys = settings_key_check(settings, listen_host=None)
    for line in keys.lines:
        print(line, file=sys.stderr)
    if keys.refused:
        return 2
    print(settings.summary())
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    keys = settings_key_check(settings, listen_host=args.host)
    if keys.refused:
        for line in keys.lines:
            print(line, file=sys.stderr)
        return 2
    logs.setup()
    if keys.lines:  # weak keys, accepted on loopback
        logging.getLogger(__name__).warning("weak secret keys", extra={"problems": keys.lines})
    gctune.tune()
    short = fit_open_files(settings.limits.max_concurrency)
    if short is not None:
        logging.getLogger(__name__).warning("open files limit below max_concurrency", extra=short)
    found = find_config_path(args.config, os.environ)
    if found is not None:
        os.environ["PIXELSYNC_CONFIG"] = str(found.resolve())
    os.environ["PIXELSYNC_SERVER"] = args.server  # app_from_env adapts to it
    embedded: EmbeddedValkey | None = None
    if not settings.redis_url:
        # One embedded server for all workers, owned by this (parent) process; its
        # URL noted for the batch commands run beside it.
        embedded = EmbeddedValkey(settings.data_dir)
        noted = url_file(settings)  # still there when the last serve was killed
        leftover = noted.read_text().strip() if noted.exists() else None
        os.environ["PIXELSYNC_REDIS_URL"] = embedded.start(leftover_url=leftover)
        noted.write_text(os.environ["PIXELSYNC_REDIS_URL"])
    if args.workers > 1:
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the
    # handler it found installed: this one, so that the embedded Valkey is stopped
    # and the exit code is 0. granian handles SIGTERM itself and returns.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        if args.server == "granian":
            _granian(args, settings)
        else:
            _uvicorn(args, settings)
    finally:
        if embedded is not None:
            url_file(settings).unlink(missing_ok=True)
            embedded.stop()
    return 0


# File descriptors a worker needs beyond its connections: Redis, partners, logs, the
# listening sockets, the embedded Valkey's pipes.
OPEN_FILES_MARGIN = 256


def fit_open_files(max_concurrency: int) -> dict[str, int] | None:
    """Each connection (an idle keep-alive one too) is a file descriptor: raise this
    process's soft RLIMIT_NOFILE (the workers inherit it) to max_concurrency plus a
    margin, as far as the hard limit allows. What falls short, else None."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_concurrency + OPEN_FILES_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < need:
        return {"max_concurrency": max_concurrency, "open_files": soft, "needed": need}
    return None


# uvicorn's httptools protocol, each response written in one send
# (service/replacements/uvicorn_protocol.py).
UVICORN_HTTP = "service.replacements.uvicorn_protocol:CoalescingHttpToolsProtocol"


def _uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .replacements.uvicorn_protocol import HeadLimits, LimitedConfig

    limits = settings.limits
    http = os.environ.get("PIXELSYNC_UVICORN_HTTP", UVICORN_HTTP)  # the env: A/B runs
    # Our protocol's body timer bounds a POST body: the app need not (app_from_env).
    os.environ["PIXELSYNC_BODY_TIMER"] = "server" if http == UVICORN_HTTP else "app"
    config = LimitedConfig(
        "service.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        # X-Forwarded-For/-Proto are believed from the configured proxies only.
        proxy_headers=bool(settings.server.trusted_proxies),
        forwarded_allow_ips=settings.server.trusted_proxies or None,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
        http=http,
        ws="none",  # no WebSocket endpoint: an Upgrade request is an ordinary request
        # The server's own limits ([limits]): per worker; the head's are our protocol's.
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_concurrency,
        h11_max_incomplete_event_size=limits.max_head_bytes,  # if run on h11 (A/B)
    )
    config.head_limits = HeadLimits(
        max_bytes=limits.max_head_bytes,
        max_headers=limits.max_headers,
        timeout_s=limits.head_timeout_s,
    )
    # What uvicorn.run does, with the admin listener's socket beside the public one.
    sockets = [config.bind_socket()]
    admin = settings.server.admin_address
    if admin is not None:
        if admin[1] == args.port:  # the app tells the listeners apart by their port
            _refuse(f"[server]: key 'admin_listen': port {admin[1]} is also --port's")
        sockets.append(_bind_admin(*admin))
    server = uvicorn.Server(config)
    if args.workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        config.load_app()
        server.run(sockets=sockets)
        if not server.started:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE


def _refuse(problem: str) -> NoReturn:
    print(problem, file=sys.stderr)
    sys.exit(2)


def _bind_admin(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        _refuse(f"[server]: key 'admin_listen': cannot listen on {host}:{port}: {exc.strerror}")
    sock.set_inheritable(True)
    return sock


def _granian(args: argparse.Namespace, settings: Settings) -> None:
    """granian (a Rust HTTP server): its workers build the app with app_from_env, which
    adds uvicorn's proxy-headers middleware for the trusted proxies."""
    import multiprocessing

    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    # Workers started afresh, as uvicorn's are: forked ones would keep this process's
    # prometheus_client, set up before PROMETHEUS_MULTIPROC_DIR was.
    multiprocessing.set_start_method("spawn", force=True)

    try:
        import uvloop  # noqa: F401

        loop = Loops.uvloop
    except ImportError:
        loop = Loops.asyncio
    if settings.server.admin_listen:
        _refuse(
            "[server]: key 'admin_listen': granian serves one address; use "
            '--server uvicorn for an admin listener, or admin_listen = "" (then '
            "/metrics, /readyz and /openapi.json need an admin API key)"
        )
    limits = settings.limits
    os.environ["PIXELSYNC_BODY_TIMER"] = "app"  # granian has no body timer (app_from_env)
    Granian(
        "service.app:app_from_env",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        loop=loop,
        websockets=False,
        log_dictconfig=logs.DICT_CONFIG,
        workers_kill_timeout=10,
        respawn_failed_workers=True,
        # [limits], as far as granian has them (deploy/README.md): a head's time and
        # size (its read buffer: hyper answers 431 beyond it), requests at once per
        # worker. No idle keep-alive timeout nor header count of its own.
        backpressure=limits.max_concurrency,
        http1_settings=HTTP1Settings(
            header_read_timeout=round(limits.head_timeout_s * 1000),
            max_buffer_size=limits.max_head_bytes,
        ),
    ).serve()


def _batch_process(args: argparse.Namespace) -> Settings:
    """A batch command's set-up: its settings, JSON logs, the collector tuned, and no
    Prometheus counting (it serves no /metrics)."""
    settings = _load(args.config)
    logs.setup()
    gctune.tune()
    metrics.not_served()
    return settings


def export(args: argparse.Namespace) -> int:
    settings = _batch_process(args)
    with batch_redis(settings) as url:
        out = Path(args.out) if args.out else None
        return asyncio.run(export_command(settings, url, args.destination, args.mode, out))


def worker(args: argparse.Namespace) -> int:
    settings = _batch_process(args)

    async def run(url: str) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # finish the job under way, then stop
            loop.add_signal_handler(sig, stop.set)
        return await worker_command(settings, url, stop)

    with batch_redis(settings) as url:
        return asyncio.run(run(url))


def import_command(args: argparse.Namespace) -> int:
    settings = _batch_process(args)
    with batch_redis(settings) as url:
        return asyncio.run(
            import_files(settings, url, [Path(f) for f in args.files], force=args.force)
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pixelsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the browser endpoints and the API")
    p.add_argument("--config")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the HTTP server (bench/README.md compares them) [uvicorn]",
    )
    p.set_defaults(run=serve)

    p = sub.add_parser("import", help="import inbound batch files (SPEC §9)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--config")
    p.add_argument("--force", action="store_true", help="re-import files imported before")
    p.set_defaults(run=import_command)

    p = sub.add_parser("export", help="export a file destination now (SPEC §9)")
    p.add_argument("--destination", type=int, required=True, metavar="ID")
    p.add_argument("--mode", choices=("iter", "full"), required=True)
    p.add_argument("--out", metavar="DIR", help="default: out_dir, or data_dir/outbound/ID")
    p.add_argument("--config")
    p.set_defaults(run=export)

    p = sub.add_parser("worker", help="run the scheduled exports and inbound imports")
    p.add_argument("--config")
    p.set_defaults(run=worker)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("--config")
    p.set_defaults(run=check_config)

    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
