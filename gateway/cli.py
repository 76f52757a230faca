"""The `fairgate` command line. Exit codes: 0 ok, 1 failure, 2 usage error."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.errors import ConfigIssue
from gateway.config.state_url import parse_state_url
from gateway.config.types import parse_host_port
from gateway.config.units import parse_duration

log = logging.getLogger("fairgate")

STATE_ENV = "FAIRGATE_STATE"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command  # each subparser sets its own
    try:
        return command(args)
    except KeyboardInterrupt:
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairgate", description="A fair-use gateway for SaaS APIs.")
    parser.add_argument("--version", action="version", version=f"fairgate {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway", description="Run the gateway in the foreground.")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")
    run.add_argument("--listen", type=_host_port, metavar="HOST:PORT", help="override server.listen")
    run.add_argument("--admin-listen", type=_host_port, metavar="HOST:PORT", help="override admin.listen")
    run.add_argument("--state", metavar="URL",
                     help="override state.url (memory://, redis://HOST:PORT/DB, redis+cluster://, "
                          "redis+sentinel://); default from FAIRGATE_STATE, else the config")
    run.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="processes sharing the listen port via SO_REUSEPORT (default 1)")
    run.set_defaults(command=_run)

    check = sub.add_parser("check-config", help="validate a config file",
                           description="Validate a config file; prints every error and exits 1 if any.")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(command=_check_config)

    usage = sub.add_parser(
        "usage", help="monthly usage report",
        description="Usage per customer in a month against its plan's quotas, overage marked; read from a "
                    "running gateway's admin API (with a shared store, any gateway reports the whole fleet).",
    )
    usage.add_argument("--month", required=True, type=_month, metavar="YYYY-MM", help="e.g. 2026-11")
    usage.add_argument("--customer", metavar="ID", help="one customer only")
    usage.add_argument("--format", choices=("table", "csv", "json", "fees"), default="table",
                       help="default: table; fees: one CSV line per priced quota, for invoicing")
    usage.add_argument("--admin", default="http://127.0.0.1:8081", metavar="URL",
                       help="the admin listener (default http://127.0.0.1:8081); token from FAIRGATE_ADMIN_TOKEN")
    usage.set_defaults(command=_usage)

    audit = sub.add_parser("audit", help="audit trail tools", description="Audit trail tools.")
    audit_sub = audit.add_subparsers(required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="check an audit file's hash chain",
        description="Check an audit file's hash chain; exit 0 if intact, 1 with the first broken line if not.",
    )
    verify.add_argument("file", metavar="FILE")
    verify.set_defaults(command=_audit_verify)

    token = sub.add_parser(
        "token", help="mint a development token",
        description="Mint a token for an HMAC issuer of the config (the demo issuer by default).",
    )
    token.add_argument("--customer", required=True, help="customer (tenant) id")
    token.add_argument("--user", required=True, help="user id; an email address also fills the email claim")
    token.add_argument("--ttl", type=_duration, default=3600.0, metavar="DURATION", help="lifetime (default 1h)")
    token.add_argument("--session", help="session id (default: a random one)")
    token.add_argument("--email", help="email claim (default: --user when it is an address)")
    token.add_argument("--plan", help="plan claim")
    token.add_argument("--scope", action="append", default=[], metavar="SCOPE", help="a scope; repeatable")
    token.add_argument("--issuer", default="demo", metavar="NAME", help="issuer name in the config (default demo)")
    token.add_argument("-c", "--config", default="config/gateway.yaml", metavar="FILE",
                       help="config file (default config/gateway.yaml)")
    token.add_argument("--cookie", action="store_true",
                       help="print request header lines that send it as auth.session_cookie (with CSRF proof)")
    token.set_defaults(command=_token)

    schema = sub.add_parser("schema", help="print the config's JSON Schema",
                            description="Print the JSON Schema of the config file.")
    schema.set_defaults(command=_schema)
    return parser


def _host_port(value: str) -> tuple[str, int]:
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _load_or_report(path: str) -> GatewayConfig | None:
    """The config, or None after printing every error (file: key.path: reason) to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    if _load_or_report(args.file) is None:
        return 1
    print(f"{args.file}: ok")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.auth.dev_tokens import cookie_lines, mint_token

    config = _load_or_report(args.config)
    if config is None:
        return 1
    issuer = next((issuer for issuer in config.auth.issuers if issuer.name == args.issuer), None)
    if issuer is None:
        print(f"{args.config}: auth.issuers: no issuer named {args.issuer!r}", file=sys.stderr)
        return 1
    if args.cookie and config.auth.session_cookie is None:
        print(f"{args.config}: auth.session_cookie: not configured, so --cookie has no cookie name", file=sys.stderr)
        return 1
    try:
        token = mint_token(issuer, customer=args.customer, user=args.user, ttl=args.ttl, session=args.session,
                           email=args.email, plan=args.plan, scopes=tuple(args.scope))
    except ValueError as exc:
        print(f"fairgate token: {exc}", file=sys.stderr)
        return 1
    if config.auth.session_cookie is not None and args.cookie:
        print("\n".join(cookie_lines(config.auth.session_cookie, token)))
    else:
        print(token)
    return 0


def _schema(_: argparse.Namespace) -> int:
    print(json.dumps(GatewayConfig.model_json_schema(), indent=2))
    return 0


def _overrides(args: argparse.Namespace) -> Callable[[GatewayConfig], GatewayConfig]:
    """The command line's overrides, validated like the file's keys (a ConfigError names the flag)."""
    state_url = args.state or os.environ.get(STATE_ENV)
    changes: list[tuple[str, str, str, object]] = []  # (source, section, key, value)
    if state_url:
        changes.append(("--state" if args.state else STATE_ENV, "state", "url", state_url))
    if args.listen:
        changes.append(("--listen", "server", "listen", _format_host_port(args.listen)))
    if args.admin_listen:
        changes.append(("--admin-listen", "admin", "listen", _format_host_port(args.admin_listen)))

    def apply(config: GatewayConfig) -> GatewayConfig:
        for source, section, key, value in changes:
            current = getattr(config, section)
            try:
                # The value checked as the file's would be (its section's validators included) ...
                checked = getattr(type(current).model_validate({key: value}), key)
            except ValidationError as exc:
                reasons = [error["msg"].removeprefix("Value error, ").removeprefix(f"{key}: ")
                           for error in exc.errors()]
                raise ConfigError(source, [ConfigIssue(f"{section}.{key}", reason) for reason in reasons]) from None
            # ... then set on the loaded section, whose other keys were validated with the file.
            config = config.model_copy(update={section: current.model_copy(update={key: checked})})
        return config

    return apply


def _usage(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    from gateway.server.admin import ADMIN_TOKEN_ENV
    from gateway.usage.fees import as_fees_csv
    from gateway.usage.report import as_csv, as_table

    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        print(f"fairgate usage: set {ADMIN_TOKEN_ENV} to the admin API token", file=sys.stderr)
        return 2
    query = urllib.parse.urlencode({"month": args.month, **({"customer": args.customer} if args.customer else {})})
    request = urllib.request.Request(f"{args.admin.rstrip('/')}/admin/usage?{query}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            report = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        print(f"fairgate usage: the admin API answered {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"fairgate usage: cannot reach {args.admin}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    rows = report["customers"]
    if args.format == "json":
        print(json.dumps(report, indent=2))
    elif args.format == "csv":
        sys.stdout.write(as_csv(rows))
    elif args.format == "fees":
        sys.stdout.write(as_fees_csv(rows))
    else:
        sys.stdout.write(as_table(rows) if rows else f"no usage in {args.month}\n")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.audit.chain import describe_recovery, verify

    try:
        verdict = verify(Path(args.file))
    except OSError as exc:
        print(f"fairgate audit verify: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a damaged checkpoint
        print(f"{args.file}: {exc}")
        return 1
    if verdict.ok:
        print(f"{args.file}: {verdict.lines} events, chain intact")
    else:
        print(f"{args.file}: line {verdict.broken_at}: {verdict.problem} ({verdict.lines} events before it verified)")
    for number, event in verdict.recoveries:
        print(f"  line {number}: {describe_recovery(event)}")
    return 0 if verdict.ok else 1


def _month(value: str) -> str:
    import re

    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM such as 2026-11, got {value!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    from gateway.server.admin import SUPERVISOR_ENV
    from gateway.server.lifecycle import ServeOptions, admin_token_from_env, serve
    from gateway.server.logs import configure_logging
    from gateway.server.workers import supervise

    state_url = args.state or os.environ.get(STATE_ENV)
    if state_url:
        try:
            parse_state_url(state_url)
        except ValueError as exc:
            source = "--state" if args.state else STATE_ENV
            print(f"fairgate run: {source}: state URL must start with a known scheme: {exc}", file=sys.stderr)
            return 2
    transform = _overrides(args)
    loaded = _load_or_report(args.config)
    if loaded is None:
        return 1
    try:
        config = transform(loaded)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)

    if args.workers > 1 and config.detection.enabled and config.detection.salt() is None:
        # Each worker would pick its own random key: a browser's challenge pass or proof link
        # minted by one worker is a forgery to the next one its connections reach.
        print(f"{args.config}: detection.hash_salt: required with --workers {args.workers} while a detector is "
              "on (every worker must sign and check passes with one key); set it from the environment",
              file=sys.stderr)
        return 2
    if args.workers > 1 and not config.state.parsed_url.shared:
        log.warning("with the memory state store every worker keeps its own limits: "
                    "each customer gets up to N times its plan; use Redis to share them")
    if args.workers > 1:
        worker_argv = ["run", "-c", args.config, "--workers", "1"]
        if args.state:
            worker_argv += ["--state", args.state]
        if args.listen:
            worker_argv += ["--listen", _format_host_port(args.listen)]
        if args.admin_listen:
            worker_argv += ["--admin-listen", _format_host_port(args.admin_listen)]
        return supervise(worker_argv, args.workers)

    supervised = bool(os.environ.get(SUPERVISOR_ENV))
    options = ServeOptions(
        args.config, transform, reuse_port=supervised, admin_token=admin_token_from_env(),
        # Each worker keeps its own audit chain: one file per process.
        audit_suffix=f".{os.getpid()}" if supervised else "",
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config, options))


def _format_host_port(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
