"""`livepost`: serve, worker, migrate, and user and post commands through the same services."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import Any

from app.cli.errors import CommandError, invalid_fields
from app.config import ConfigError, Settings

# `user create` reads the password from here when --password is not given.
PASSWORD_VARIABLE = "LIVEPOST_PASSWORD"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    settings = Settings()
    try:
        return int(args.run(settings, args) or 0)
    except ConfigError as error:
        print(f"livepost: {error}", file=sys.stderr)
        return 2
    except CommandError as error:
        print(f"livepost: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livepost", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="apply migrations, then run uvicorn")
    serve.add_argument("--host", help="default: HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: PORT or 8000")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-migrate", action="store_true", help="skip `alembic upgrade head`")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", help="one worker, no migrations (the Dockerfile's CMD; migrate runs once)"
    )
    worker.add_argument("--host", help="default: HOST or 127.0.0.1")
    worker.add_argument("--port", type=int, help="default: PORT or 8000")
    worker.set_defaults(run=_worker)

    cluster = commands.add_parser(
        "cluster", help="N workers on loopback ports behind a local nginx (needs REDIS_URL)"
    )
    cluster.add_argument("--workers", type=int, default=2)
    cluster.add_argument("--port", type=int, help="nginx port (default: PORT or 8000)")
    cluster.add_argument(
        "--worker-port", type=int, help="first worker port (default: nginx port + 1)"
    )
    cluster.add_argument("--no-nginx", action="store_true", help="workers only")
    cluster.set_defaults(run=_cluster)

    migrate = commands.add_parser("migrate", help="alembic upgrade head")
    migrate.set_defaults(run=_migrate)

    user = commands.add_parser("user", help="manage users").add_subparsers(title="user commands")
    create_user = user.add_parser("create", help="register a user")
    create_user.add_argument("username")
    create_user.add_argument(
        "--password",
        help="default: LIVEPOST_PASSWORD, else asked in the terminal, else one line of stdin",
    )
    create_user.add_argument("--admin", action="store_true", help="may sign in at /admin")
    create_user.set_defaults(run=_user_create)
    make_admin = user.add_parser("admin", help="let an existing user sign in at /admin")
    make_admin.add_argument("username")
    make_admin.set_defaults(run=_user_admin)
    token = user.add_parser("token", help="print a bearer token for a user")
    token.add_argument("username")
    token.set_defaults(run=_user_token)

    post = commands.add_parser("post", help="write posts").add_subparsers(title="post commands")
    create = post.add_parser("create", help="create a post as --user")
    create.add_argument("--user", required=True)
    create.add_argument("--body", required=True)
    create.set_defaults(run=_post_write, operation="create")
    edit = post.add_parser("edit", help="replace the body of your post")
    edit.add_argument("--user", required=True)
    edit.add_argument("--pk", type=int, required=True)
    edit.add_argument("--body", required=True)
    edit.set_defaults(run=_post_write, operation="edit")
    delete = post.add_parser("delete", help="delete your post")
    delete.add_argument("--user", required=True)
    delete.add_argument("--pk", type=int, required=True)
    delete.set_defaults(run=_post_write, operation="delete")
    listing = post.add_parser("list", help="newest posts first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--contains", default=None)
    listing.set_defaults(run=_post_list)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from app import worker

    if args.workers > 1 and not settings.redis_url:
        raise CommandError(
            f"--workers {args.workers} needs REDIS_URL: with the in-process broker each worker "
            "would only see its own writes, and subscribers would miss the others' events."
        )
    settings.secret  # noqa: B018  (fail now, not in every worker, when no secret is set)
    if not args.no_migrate:
        _migrate(settings, args)
    worker.run(
        settings,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
    )
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from app import worker

    settings.secret  # noqa: B018  (fail before uvicorn starts when no secret is set)
    worker.run(settings, host=args.host or settings.host, port=args.port or settings.port)
    return 0


def _cluster(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import time

    from app.cli.cluster import Cluster
    from app.cli.supervise import Supervisor

    if not settings.redis_url:
        raise CommandError("a cluster needs REDIS_URL: workers share their events through Redis")
    settings.secret  # noqa: B018  (fail before starting anything when no secret is set)
    port = args.port or settings.port
    first = args.worker_port or port + 1
    cluster = Cluster(
        args.workers,
        {"REDIS_URL": settings.redis_url},
        worker_ports=[first + index for index in range(args.workers)],
        lb_port=port,
        nginx=not args.no_nginx,
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster.start()
        for url in cluster.worker_urls:
            print(f"worker  {url}  ws{url[4:]}/ws")
        if not args.no_nginx:
            print(
                f"nginx   {cluster.lb_url}  ws{cluster.lb_url[4:]}/ws   (logs: {cluster.run_dir})"
            )
        sys.stdout.flush()  # up and running: say so now, also when the output is a file
        supervisor = Supervisor(cluster)
        while not stop:
            supervisor.check()
            time.sleep(0.2)  # how soon a dead worker is noticed
    finally:
        cluster.stop()
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from app.migrations import upgrade_to_head

    upgrade_to_head(settings.database_url)
    return 0


def _user_create(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from pydantic import ValidationError

    from app.models import UserCreate

    password = args.password or os.environ.get(PASSWORD_VARIABLE) or _read_password()
    try:
        user = UserCreate(username=args.username, password=password)
    except ValidationError as error:
        raise CommandError(invalid_fields(error.errors())) from None
    user_id = asyncio.run(
        _user_create_async(settings, user.username, user.password, is_admin=args.admin)
    )
    _print({"id": user_id, "username": user.username, "is_admin": args.admin})
    return 0


def _read_password() -> str:
    """Ask in the terminal; without one (a script, CI) take the first line of standard input."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            return getpass.getpass()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            raise CommandError("no password given") from None
    line = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
    if not line:
        raise CommandError(
            f"no password: pass --password, set {PASSWORD_VARIABLE}, or give it on standard "
            "input (there is no terminal to ask in)"
        )
    return line


async def _user_create_async(
    settings: Settings, username: str, password: str, *, is_admin: bool
) -> int:
    from app.accounts.service import UsernameTaken
    from app.runtime import Runtime

    runtime = await Runtime.start(settings)
    try:
        return await runtime.accounts.register(username, password, is_admin=is_admin)
    except UsernameTaken:
        raise CommandError(f"username {username!r} is taken") from None
    finally:
        await runtime.close()


def _user_admin(settings: Settings, args: argparse.Namespace) -> int:
    async def grant() -> int:
        from app.runtime import Runtime

        runtime = await Runtime.start(settings)
        try:
            user_id = await runtime.accounts.user_id_by_name(args.username)
            if user_id is None:
                raise CommandError(f"no user {args.username!r}")
            await runtime.accounts.set_flags(user_id, is_admin=True)
            return user_id
        finally:
            await runtime.close()

    _print({"id": asyncio.run(grant()), "username": args.username, "is_admin": True})
    return 0


def _user_token(settings: Settings, args: argparse.Namespace) -> int:
    async def token() -> str:
        from app.runtime import Runtime

        runtime = await Runtime.start(settings)
        try:
            user_id = await runtime.accounts.user_id_by_name(args.username)
            if user_id is None:
                raise CommandError(f"no user {args.username!r}")
            return runtime.accounts.token_for(user_id)
        finally:
            await runtime.close()

    print(asyncio.run(token()))
    return 0


def _post_write(settings: Settings, args: argparse.Namespace) -> int:
    from app.cli.writes import write_post

    pk = None if args.operation == "create" else args.pk
    result = asyncio.run(
        write_post(settings, args.operation, args.user, pk, getattr(args, "body", None))
    )
    if result is not None:
        _print(result)
    return 0


def _post_list(settings: Settings, args: argparse.Namespace) -> int:
    async def listing() -> list[dict[str, Any]]:
        from app.runtime import Runtime

        runtime = await Runtime.start(settings)
        try:
            return await runtime.posts.list(body_contains=args.contains, limit=args.limit)
        finally:
            await runtime.close()

    for post in asyncio.run(listing()):
        _print(post)
    return 0


def _print(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


if __name__ == "__main__":
    raise SystemExit(main())
