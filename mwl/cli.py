"""The ``mwl`` command: composition root that reads settings and starts the services."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import getpass
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl import __version__
from mwl.config import Settings, load_settings
from mwl.descriptors import raise_open_file_limit
from mwl.errors import MwlError, SettingsError, UserError
from mwl.logs import ContextFilter, make_formatter, route_stray_output
from mwl.store.engine import make_engine, make_session_factory
from mwl.tls import ReloadingContext, TlsFiles

if TYPE_CHECKING:
    # The adapters load only with the command that needs them (start-up of `mwl user`
    # and friends stays quick).
    from flask import Flask

    from mwl.admin.overrides import LiveSettings
    from mwl.audit.auditor import Auditor
    from mwl.dicom.scp import WorklistScp
    from mwl.domain import WorklistItem
    from mwl.hl7.server import Hl7Server
    from mwl.orders.history import AttributeRow
    from web.server import WebServer

logger = logging.getLogger("mwl.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

ROLES = ["viewer", "editor", "admin"]


def configure_logging(settings: Settings) -> None:
    """Log to standard error; the only place that installs handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    # The adapters' correlation context (association, MSH-10, request id): mwl.logs.
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    route_stray_output()
    # Alembic announces its context on every start; the CLI says what it did instead.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The broker's association layer uses pynetdicom's encoders only, which log
    # decoded datasets (patient data) at DEBUG: they speak only when log_phi asks.
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG
        if settings.log_phi and settings.log_level.upper() == "DEBUG"
        else logging.WARNING
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwl",
        description="Modality Worklist broker: HL7 v2 orders in, DICOM Modality Worklist out.",
    )
    parser.add_argument("--version", action="version", version=f"mwl {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings file (MWL_* environment variables override it)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser(
        "serve", help="run the HL7 listener, the DICOM worklist SCP and the web page"
    )
    commands.add_parser("settings", help="print the effective settings (secrets hidden)")

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser("upgrade", help="migrate the database to the newest schema")

    backup = commands.add_parser(
        "backup",
        help="copy the database to FILE while the broker runs (SQLite: online backup;"
        " PostgreSQL: pg_dump custom format)",
    )
    backup.add_argument("file", type=Path, metavar="FILE")

    purge = commands.add_parser(
        "purge", help="delete finished and stale steps, old MPPS and sent RIS messages now"
    )
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    user = commands.add_parser("user", help="web users")
    user_commands = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = user_commands.add_parser(
        "add",
        help="create a user; the password (15 or more characters, not a common one, not"
        " containing the user name) is prompted for, or read from standard input",
    )
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="viewer")
    passwd = user_commands.add_parser(
        "passwd",
        help="set a new password (the rules of `user add`); prompted for, or read from"
        " standard input",
    )
    passwd.add_argument("name")
    user_commands.add_parser("list", help="list the users with their role")
    remove = user_commands.add_parser("remove", help="delete a user and their API tokens")
    remove.add_argument("name")
    role = user_commands.add_parser("role", help="give a user another role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)

    token = commands.add_parser("token", help="API tokens (bearer tokens for /api/v1)")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    token_add = token_commands.add_parser(
        "add", help="create a token acting as USER; it is printed once, only its hash is kept"
    )
    token_add.add_argument("user")
    token_add.add_argument("--name", default="", help="what the token is for, e.g. 'RIS import'")
    token_commands.add_parser("list", help="list the tokens (never their values)")
    revoke = token_commands.add_parser("revoke", help="delete a token by its ID (see list)")
    revoke.add_argument("id", type=int)

    hl7 = commands.add_parser("hl7", help="HL7 tools")
    hl7_commands = hl7.add_subparsers(dest="hl7_command", metavar="ACTION", required=True)
    send = hl7_commands.add_parser("send", help="send HL7 message files over MLLP")
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, help="default: the hl7_port setting")

    samples = commands.add_parser("samples", help="the sample HL7 messages (samples/hl7)")
    samples_commands = samples.add_subparsers(
        dest="samples_command", metavar="ACTION", required=True
    )
    samples_send = samples_commands.add_parser(
        "send",
        help="send the samples dated today: new orders, then patient updates, then cancels",
    )
    samples_send.add_argument("--host", default="127.0.0.1")
    samples_send.add_argument("--port", type=int, help="default: the hl7_port setting")
    samples_send.add_argument(
        "--date",
        type=dt.date.fromisoformat,
        help="schedule them on this day (YYYY-MM-DD), not today",
    )
    samples_send.add_argument(
        "--dir", type=Path, help="the template files (default: samples/hl7 of the source tree)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mwl`` console script; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"mwl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings)
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "settings":
            for key, value in settings.redacted().items():
                print(f"{key} = {value!r}")
            return EXIT_OK
        if args.command == "db":
            return db_upgrade(settings)
        if args.command == "backup":
            return backup_now(settings, args.file)
        if args.command == "purge":
            return purge_now(settings, dry_run=args.dry_run)
        if args.command == "user":
            return user_command(settings, args)
        if args.command == "token":
            return token_command(settings, args)
        if args.command == "hl7":
            from mwl.hl7.client import send_files

            port = args.port if args.port is not None else settings.hl7_port
            return send_files(args.host, port, args.files, progress=sys.stderr.isatty())
        if args.command == "samples":
            return send_samples(settings, args)
    except MwlError as exc:
        print(f"mwl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except SQLAlchemyError as exc:
        print(
            f"mwl: database error: {exc.__class__.__name__}: {exc.args[0] if exc.args else ''}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_USAGE


def send_samples(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl samples send``: the sample messages, dated today, in a working order."""
    from mwl.hl7.client import send_batch
    from mwl.hl7.samples import sample_batch, samples_directory

    day = args.date or dt.date.today()
    batch = sample_batch(args.dir or samples_directory(), day)
    port = args.port if args.port is not None else settings.hl7_port
    code = send_batch(args.host, port, batch, progress=sys.stderr.isatty())
    if code == 0:
        print(
            f"{len(batch)} sample messages sent; their steps are scheduled on {day:%Y-%m-%d}",
            file=sys.stderr,
        )
    return code


def db_upgrade(settings: Settings) -> int:
    """``mwl db upgrade``: migrate the configured database to the newest schema."""
    from mwl.store.migrate import current_revision, known_revision, upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        found = current_revision(engine) or ""
    finally:
        engine.dispose()
    if known_revision(found):
        print("database is at the newest schema")
    else:
        print(f"database is at {found}, newer than this release: left as it is")
    return EXIT_OK


def backup_now(settings: Settings, target: Path) -> int:
    """``mwl backup FILE``: a consistent copy of the database (mwl.store.backup)."""
    from mwl.store.backup import backup

    done = backup(settings.database_url, target)
    how = "pg_restore restores it" if done.method == "pg_dump" else "integrity_check ok"
    print(
        f"backup written to {done.path} ({done.bytes / 1e6:.1f} MB in {done.seconds:.1f} s; {how})"
    )
    return EXIT_OK


def purge_now(settings: Settings, *, dry_run: bool) -> int:
    """``mwl purge [--dry-run]``: apply the retention settings once, with a progress bar."""
    from mwl.operations.retention import RetentionPolicy, purge
    from mwl.store.migrate import upgrade

    bar = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if bar and total:
            filled = int(30 * done / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        counts = purge(
            make_session_factory(engine, writer=True),
            RetentionPolicy.from_settings(settings),
            batch_size=settings.retention_batch_size,
            dry_run=dry_run,
            progress=progress,
        )
    finally:
        engine.dispose()
    if bar and counts.total:
        sys.stderr.write("\n")
    verb = "would delete" if dry_run else "deleted"
    print(
        f"{verb} {counts.steps} scheduled step(s), {counts.performed_steps} performed"
        f" step(s), {counts.outbox_messages} outbox message(s)"
        + ("" if dry_run else f"; {counts.procedures} emptied requested procedure(s)")
    )
    return EXIT_OK


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Repeat password: ") != first:
            raise MwlError("the passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def user_add(settings: Settings, name: str, role: str) -> int:
    """``mwl user add NAME --role ROLE``: create a web user with a hashed password."""
    from mwl.admin.users import add_user
    from mwl.store.migrate import upgrade

    password = _read_password(name)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with make_session_factory(engine, writer=True).begin() as session:
            add_user(session, name, password, role)
            _audit_user_change(settings, session, name, f"user created with role {role}")
    finally:
        engine.dispose()
    print(f"user {name} added with role {role}")
    return EXIT_OK


@contextlib.contextmanager
def _writer(settings: Settings) -> Iterator[Session]:
    """One unit of work on the migrated database, for the user and token commands."""
    from mwl.store.migrate import upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        with make_session_factory(engine, writer=True).begin() as session:
            yield session
    finally:
        engine.dispose()


def _audit_user_change(
    settings: Settings, session: Session, name: str, text: str, *, roles: bool = False
) -> None:
    """ATNA 110113 for a user or token change made with the CLI, in its transaction.

    The actor is the operating-system account that ran the command: the CLI has no
    web login, and that account is what the site's own logs can trace.
    """
    from mwl.admin.users import normalize_username
    from mwl.audit import messages as audit_messages
    from mwl.audit.auditor import Auditor

    auditor = Auditor(settings)
    if not auditor.enabled:
        return
    event_type = (
        audit_messages.SECURITY_ROLES_CHANGED
        if roles
        else audit_messages.USER_SECURITY_ATTRIBUTES_CHANGED
    )
    actor = audit_messages.Participant(f"os:{getpass.getuser()}", True)
    auditor.record(
        session,
        audit_messages.security_change(
            auditor.source,
            event_type,
            actor,
            audit_messages.user_object(normalize_username(name)),
            f"{text} (mwl command)",
        ),
    )


def _utc_text(value: dt.datetime | None) -> str:
    # Stored as naive UTC; shown in the local time of whoever runs the command.
    if value is None:
        return "never"
    return value.replace(tzinfo=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M")


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in (headers, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def user_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl user add|passwd|list|remove|role``: manage the web users."""
    from mwl.admin import users

    action = args.user_command
    if action == "add":
        return user_add(settings, args.name, args.role)
    if action == "passwd":
        # Checked before the prompt (and outside the write transaction, which must
        # not wait for someone typing), so nobody types a password for a typo.
        with _writer(settings) as session:
            if users.find_user(session, args.name) is None:
                name = users.normalize_username(args.name)
                raise UserError(f"no user {name!r}", name)
        password = _read_password(args.name)
        with _writer(settings) as session:
            user = users.set_password(session, args.name, password)
            name = user.username
            _audit_user_change(settings, session, name, "password changed")
        print(f"password of {name} changed")
    elif action == "list":
        with _writer(settings) as session:
            rows = [(u.username, u.role, u.created_at) for u in users.list_users(session)]
        _print_table(
            ("NAME", "ROLE", "CREATED"),
            [(name, role, _utc_text(created)) for name, role, created in rows],
        )
    elif action == "remove":
        with _writer(settings) as session:
            users.remove_user(session, args.name)
            _audit_user_change(settings, session, args.name, "user removed", roles=True)
        print(f"user {users.normalize_username(args.name)} removed")
    elif action == "role":
        with _writer(settings) as session:
            name = users.set_role(session, args.name, args.role).username
            _audit_user_change(settings, session, name, f"role set to {args.role}", roles=True)
        print(f"user {name} now has role {args.role}")
    return EXIT_OK


def token_command(settings: Settings, args: argparse.Namespace) -> int:
    """``mwl token add|list|revoke``: the bearer tokens of the JSON API."""
    from mwl.admin import tokens

    action = args.token_command
    if action == "add":
        with _writer(settings) as session:
            token = tokens.create_token(session, args.user, args.name)
            _audit_user_change(settings, session, args.user, "API token created")
        # The token on stdout alone, so that scripts can capture it; the advice on stderr.
        print(token)
        print("This token is shown only once; store it now.", file=sys.stderr)
    elif action == "list":
        with _writer(settings) as session:
            rows = tokens.list_tokens(session)
        _print_table(
            ("ID", "USER", "NAME", "CREATED", "LAST USED"),
            [
                (
                    str(t.key),
                    t.username,
                    t.name or "-",
                    _utc_text(t.created_at),
                    _utc_text(t.last_used_at),
                )
                for t in rows
            ],
        )
    elif action == "revoke":
        with _writer(settings) as session:
            info = tokens.revoke_token(session, args.id)
            _audit_user_change(settings, session, info.username, "API token revoked")
        print(f"token {info.key} of {info.username} revoked")
    return EXIT_OK


def web_app(
    settings: Settings,
    readers: sessionmaker[Session],
    writers: sessionmaker[Session],
    live: LiveSettings,
    listener_status: Callable[[], Mapping[str, bool]] | None = None,
    auditor: Auditor | None = None,
) -> Flask:
    """The admin web page, lent the HL7 and DICOM services it shows and drives.

    The web package never imports the other adapters; this composition root hands it
    their functions (see :mod:`web.store`).
    """
    from mwl.dicom.dicomweb import DicomWebService
    from mwl.dicom.listing import item_attributes
    from mwl.dicom.preview import WorklistPreviewer
    from mwl.hl7.describe import describe_message
    from mwl.hl7.reprocess import ChainRunner, reprocess_message
    from web import create_app

    def list_item(item: WorklistItem) -> list[AttributeRow]:
        return item_attributes(item, live.current())

    return create_app(
        settings,
        readers,
        writer_factory=writers,
        hl7_reprocessor=functools.partial(reprocess_message, live.current, writers),
        chain_reprocessor=ChainRunner(live.current, writers),
        hl7_describer=describe_message,
        query_previewer=WorklistPreviewer(live, readers),
        item_lister=list_item,
        listener_status=listener_status,
        auditor=auditor,
        dicomweb_service=DicomWebService(live, readers, writers, auditor),
    )


def web_tls(settings: Settings) -> ReloadingContext | None:
    """The web port's certificate (HTTPS), or None while ``web_tls_cert`` is not set.

    Raises
    ------
    ssl.SSLError, OSError
        The files do not load (then the broker does not start).
    """
    if not settings.web_tls_cert:
        return None
    files = TlsFiles(Path(settings.web_tls_cert), Path(settings.web_tls_key))
    return ReloadingContext(files, service="web")


def _audit_application(auditor: Auditor, writers: sessionmaker[Session], *, start: bool) -> None:
    """Queue ATNA 110100 Application Start or Stop (its own unit of work)."""
    from sqlalchemy.exc import SQLAlchemyError

    from mwl.audit.messages import application_activity

    try:
        with writers.begin() as session:
            auditor.record(session, application_activity(auditor.source, start=start))
    except SQLAlchemyError as exc:
        logger.error(
            "could not queue the Application %s audit message: %s",
            "Start" if start else "Stop",
            exc,
        )


def _print_summary(
    settings: Settings,
    hl7: Hl7Server,
    scp: WorklistScp,
    web: WebServer,
    readers: sessionmaker[Session],
) -> None:
    """The start-up summary: where each service listens, the database, the first login."""
    from mwl.admin.users import list_users

    lines = [f"HL7 MLLP listening on {hl7.address[0]}:{hl7.address[1]}"]
    if hl7.tls_address is not None:
        lines.append(f"HL7 MLLP over TLS listening on {hl7.tls_address[0]}:{hl7.tls_address[1]}")
    for host, port, tls in scp.server.addresses:
        over = " over TLS" if tls else ""
        lines.append(
            f"DICOM worklist SCP {settings.dicom_ae_title}{over} listening on {host}:{port}"
        )
    host, port = web.address[:2]
    # 0.0.0.0 is where it listens, not an address a browser can open.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    lines.append(f"web page on {web.scheme}://{shown}:{port}/")
    lines.append(f"database {settings.redacted()['database_url']}")
    try:
        with readers() as session:
            no_users = not list_users(session)
    except SQLAlchemyError:
        no_users = False
    if no_users and not (settings.oidc_issuer or settings.ldap_url):
        lines.append(
            "no web user yet: create the first with `mwl user add NAME --role admin`,"
            " then log in on the web page"
        )
    lines.append("all settings: `mwl settings` (or log_level = DEBUG logs them at start)")
    for line in lines:
        print(line, flush=True)


def serve(settings: Settings) -> int:
    """``mwl serve``: migrate, start HL7, DICOM and web, run until SIGTERM or SIGINT."""
    from mwl.admin.overrides import LiveSettings
    from mwl.audit.auditor import Auditor
    from mwl.audit.sender import AuditSender
    from mwl.dicom.scp import WorklistScp
    from mwl.hl7.sender import OutboxSender
    from mwl.hl7.server import Hl7Server
    from mwl.operations import metrics
    from mwl.operations.notify import notify
    from mwl.operations.retention import Housekeeper
    from mwl.operations.watchdog import Watchdog
    from mwl.store.migrate import upgrade
    from mwl.worklist.device import failing_counts
    from web.server import WebServer

    # The whole list only at DEBUG (`mwl settings` prints it any time); the start-up
    # summary below says what a newcomer needs.
    for key, value in settings.redacted().items():
        logger.debug("setting %s = %r", key, value)
    # Every connection costs a descriptor: as many as the system allows (mwl.descriptors).
    raise_open_file_limit()
    engine = make_engine(settings.database_url)
    metrics.configure(enabled=settings.metrics_enabled)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    upgrade(engine)
    readers = make_session_factory(engine)
    writers = make_session_factory(engine, writer=True)
    metrics.watch_database(engine, readers)
    # Settings changed on the admin page reach every service through one LiveSettings;
    # it reads with a reader session, so it never waits for SQLite's write lock.
    live = LiveSettings(settings, readers)
    live.current()
    # The profile gauge checks against the settings in force at each scrape.
    metrics.watch_profile_checks(lambda session: failing_counts(session, live.current()))
    services: list[
        Hl7Server | WorklistScp | WebServer | OutboxSender | Housekeeper | AuditSender | Watchdog
    ] = []
    # ATNA audit: the sender starts first and stops last, so it delivers the
    # Application Start and Stop messages around everything else.
    auditor = Auditor(settings)
    try:
        if auditor.enabled:
            audit_sender = AuditSender(settings, writers)
            audit_sender.start()
            services.append(audit_sender)
            _audit_application(auditor, writers, start=True)
        hl7 = Hl7Server(settings, writers, live_settings=live, auditor=auditor)
        hl7.start()
        services.append(hl7)
        scp = WorklistScp(settings, readers, writers, live_settings=live, auditor=auditor)
        scp.start()
        services.append(scp)
        web = WebServer(
            web_app(
                settings,
                readers,
                writers,
                live,
                lambda: {"hl7": hl7.serving, "dicom": scp.serving},
                auditor,
            ),
            settings.bind_address,
            settings.web_port,
            tls=web_tls(settings),
        )
        web.start()
        services.append(web)
        # Background work starts once every listener is up, and stops first.
        if settings.ris_host:
            sender = OutboxSender(settings, writers)
            sender.start()
            services.append(sender)
            print(f"RIS status messages to {settings.ris_host}:{settings.ris_port}", flush=True)
        if settings.retention_interval_seconds > 0:
            housekeeper = Housekeeper(settings, writers)
            housekeeper.start()
            services.append(housekeeper)
        if settings.watchdog_interval_seconds > 0:
            # Thresholds come from the live settings: a change applies at the next round.
            watchdog = Watchdog(live.current, writers, notify)
            watchdog.start()
            services.append(watchdog)
        _print_summary(settings, hl7, scp, web, readers)
        print("mwl is ready", flush=True)
        stop.wait()
    except OSError as exc:
        print(f"mwl: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for service in reversed(services):
            if auditor.enabled and isinstance(service, AuditSender):
                _audit_application(auditor, writers, start=False)
            service.shutdown()
        engine.dispose()
    # The parent that read our output may be gone already (a killed supervisor).
    with contextlib.suppress(BrokenPipeError):
        print("mwl stopped", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
