"""`ler`: the command line for authorities, issuers, holders and verifiers.

Exit status: 0 success; 1 a negative result (a bundle that does not verify as valid, a refused
transaction, a node that cannot be reached); 2 bad usage (bad flags, unreadable or invalid input files,
a malformed did). Every error is one line on stderr starting "error: ", never a traceback (set
LER_DEBUG=1 to see one for an unexpected failure). Output is for people; `--json` gives scripts one
JSON object where they need it.

Everything a command can check locally (files, dids, claims, keys and passphrases) is checked before it
contacts a node, so a mistake costs nothing on the ledger. Text that comes from a node or a bundle is
printed with control characters escaped: a bundle cannot rewrite a verifier's terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import io
import itertools
import json
import math
import mimetypes
import os
import re
import secrets
import shlex
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ler import keys
from ler.block import GENESIS_FORMAT, Genesis, GenesisAuthority, GenesisIssuer
from ler.bundle import (
    EVIDENCE_MISMATCH,
    EXPIRED,
    MAX_BUNDLE_BYTES,
    REFRESH_FAILED,
    REVOKED,
    SELF_ASSERTED_V,
    STALE,
    TAMPERED,
    UNACCREDITED,
    VALID,
    WRONG_CHAIN,
    Check,
    ProofBundle,
    VerificationResult,
    fmt_age,
    verify_bundle,
    verify_refreshed,
    with_evidence,
)
from ler.dates import MAX_MS, utc_text
from ler.errors import DecodeError, KeyFileError, LerError
from ler.files import read_capped
from ler.keys import PASSPHRASE_ENV, KeyPair
from ler.record import Claim, Disclosure, RecordDocument, evidence_value, file_sha256, make_claims
from ler.tx import (
    RECORD_ID_BYTES,
    Action,
    GovVote,
    RecordAnchor,
    RecordEndorse,
    RecordRevoke,
    Tx,
    check_chain_id,
    check_record_type,
    rotation_body,
    sign_tx,
)
from node.client import DEFAULT_NODE, NODE_ENV, ClientError, NodeClient, check_node_url

EXIT_OK, EXIT_NEGATIVE, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "LER_DEBUG"
GENESIS_ENV = "LER_GENESIS"
DEFAULT_WAIT_S = 30.0


# --- failures ------------------------------------------------------------------------------------------

class Failure(click.ClickException):
    """A negative result: one "error: ..." line on stderr, exit status 1."""

    exit_code = EXIT_NEGATIVE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {clean(self.message)}", err=True)


class BadInput(Failure):
    """Bad usage or unusable input: exit status 2."""

    exit_code = EXIT_USAGE


def bad_input(message: str) -> Failure:
    return BadInput(message)


def negative(message: str) -> Failure:
    return Failure(message)


_PATH_METAVARS = frozenset({"FILE", "DIR", "BUNDLE"})


class LerCommand(click.Command):
    """A command whose file and folder options refuse an empty path (`--out ""` would otherwise name the
    current folder, or fail later with a message about a file with no name), and whose folder options
    refuse a file, or a path under one, where a folder is wanted."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for param in self.params:
            if param.metavar not in _PATH_METAVARS and not isinstance(param.type, click.Path):
                continue
            value = ctx.params.get(param.name or "")
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, str) and not v.strip() for v in values):
                raise click.BadParameter("the path is empty", ctx=ctx, param=param)
            if param.metavar == "DIR":
                for v in values:
                    blocker = _file_in_the_way(v) if isinstance(v, str) else None
                    if blocker is not None:
                        raise click.BadParameter(f"{blocker} is a file, not a folder", ctx=ctx, param=param)
        return rest


def _file_in_the_way(folder: str) -> Path | None:
    """The path itself, or the nearest of its parents that exists, if that is not a folder. (A path that
    cannot be looked at, for want of permission say, is left to the command to report.)"""
    try:
        for path in (Path(folder), *Path(folder).parents):
            if path.exists():
                return None if path.is_dir() else path
    except OSError:
        pass
    return None


class LerGroup(click.Group):
    """The root group: turns every failure into one line on stderr with the documented exit status."""

    command_class = LerCommand
    group_class = type  # subgroups are LerGroups, whose commands are LerCommands

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        with output_that_may_close():
            self._main(args, prog_name, complete_var, **extra)

    def _main(self, args: Sequence[str] | None, prog_name: str | None, complete_var: str | None,
              **extra: Any) -> None:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                # A group given no command: its help, as --help shows it (on stderr: nothing was done).
                click.echo(exc.ctx.get_help(), err=True)
                sys.exit(EXIT_USAGE)
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {clean(exc.format_message())}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(EXIT_NEGATIVE)
        except BrokenPipeError:  # stderr gone, or a stdout output_that_may_close left as it was
            sys.exit(EXIT_NEGATIVE)
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            click.echo(f"error: unexpected failure ({type(exc).__name__}): {clean(str(reason))} "
                       f"(set {DEBUG_ENV}=1 for details)", err=True)
            sys.exit(EXIT_NEGATIVE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


class _ReaderMayLeave(io.RawIOBase):
    """The process's standard output (fd 1), where a reader that has stopped reading (`ler verify b.json
    | head -1`: a closed pipe) makes the rest of the output go nowhere instead of failing the command."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.gone = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, b: Any) -> int:
        if not self.gone:
            try:
                return os.write(self._fd, b)
            except BrokenPipeError:
                self.gone = True
        return len(memoryview(b))

    def close(self) -> None:  # the descriptor stays the process's
        self.flush()
        super().close()


@contextlib.contextmanager
def output_that_may_close() -> Iterator[None]:
    """Run a command with a standard output that nobody may read to the end: a closed pipe neither
    fails the command nor changes its exit status (the verdict's, for `ler verify`), nor prints
    anything. Only the process's own stdout is replaced (not one a caller such as a test runner set)."""
    real = sys.stdout
    fd = None
    if real is sys.__stdout__ and real is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # io.UnsupportedOperation: OSError
            fd = real.fileno()
    if real is None or fd is None:
        yield
        return
    try:
        real.flush()
    except BrokenPipeError:
        pass
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_ReaderMayLeave(fd)), encoding=real.encoding,
                                  errors=real.errors, line_buffering=bool(real.line_buffering))
    try:
        yield
    finally:
        ours, sys.stdout = sys.stdout, real
        with contextlib.suppress(OSError, ValueError):
            ours.flush()


# --- small helpers ---------------------------------------------------------------------------------------

def clean(text: str) -> str:
    """`text` with control and format characters (ANSI escapes, bidi overrides, newlines) escaped."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def plural(n: int, one: str, many: str | None = None) -> str:
    """"1 observer", "2 observers" ("1 authority", "2 authorities" with `many`)."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def say(text: str = "", err: bool = False) -> None:
    click.echo(clean(text), err=err)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def fmt_time(ms: int | None) -> str:
    if ms is None:
        return "unknown time"
    return utc_text(int(ms))  # any time a ledger field holds (up to 2^64 - 1 ms), years past 9999 included


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_time_ms(value: str, what: str) -> int:
    """Milliseconds since the epoch from digits (ms) or an ISO 8601 date or date-time.

    A date alone means the end of that day, UTC (a record "valid until 2027-06-30" is valid that day);
    a date-time without a zone is UTC.
    """
    v = value.strip()
    if v.isascii() and v.isdigit():
        if len(v) > len(str(MAX_MS)) or int(v) > MAX_MS:
            shown = v if len(v) <= 40 else f"{v[:20]}...({len(v)} digits)"
            raise bad_input(f"{what} {shown!r} is out of range: at most {MAX_MS} ms since the epoch "
                            f"({utc_text(MAX_MS)})")
        return int(v)
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise bad_input(f"{what} {value!r} must be an ISO date or date-time (2027-06-30, "
                        "2027-06-30T12:00:00Z) or milliseconds since the epoch") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if _DATE_ONLY.fullmatch(v):
        dt += timedelta(days=1, milliseconds=-1)
    ms = int(dt.timestamp()) * 1000 + dt.microsecond // 1000
    if ms < 0:
        raise bad_input(f"{what} {value!r} is before 1970")
    return ms


def check_did(value: str, what: str) -> str:
    try:
        keys.public_key_from_did(value)
    except DecodeError as exc:
        raise bad_input(f"{what}: {exc}") from None
    return value


def did_or_key_file(value: str, what: str) -> str:
    """A did:key given as itself or as the path of a key file holding it (no passphrase needed)."""
    if value.startswith("did:"):
        return check_did(value, what)
    if not Path(value).exists():
        raise bad_input(f"{what} {value!r} is neither a did:key nor an existing key file")
    try:
        return keys.read_key_file_did(value)
    except (KeyFileError, DecodeError) as exc:
        raise bad_input(f"{what}: {exc}") from None


def record_id_arg(value: str) -> bytes:
    v = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", v) or len(v) != 2 * RECORD_ID_BYTES:
        raise bad_input(f"record id {value!r} must be {2 * RECORD_ID_BYTES} hex digits")
    return bytes.fromhex(v)


def passphrase_for(path: str | os.PathLike[str], *, new: bool = False) -> str:
    """$LER_KEY_PASSPHRASE, or a hidden prompt on the terminal (confirmed twice for a new key)."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    prompt = f"Passphrase for the new key {path}" if new else f"Passphrase for {path}"
    try:
        with warnings.catch_warnings():
            # Without a terminal the passphrase is read from stdin (a pipe, say): nothing there to echo to.
            warnings.simplefilter("ignore", getpass.GetPassWarning)
            value = _prompt_hidden(prompt, confirm=new)
    except click.Abort:
        if sys.stdin.isatty():
            raise  # Ctrl-C or Ctrl-D at the prompt: the person at the terminal stopped the command
        raise bad_input(f"no passphrase given for {path} (type it at the prompt or set "
                        f"${PASSPHRASE_ENV})") from None
    return value


def _prompt_hidden(prompt: str, *, confirm: bool) -> str:
    """A hidden answer; with `confirm`, typed twice alike (until the two agree, or the input ends)."""
    value: str = click.prompt(prompt, hide_input=True, err=True)
    while confirm:
        again: str = click.prompt("Repeat it to confirm", hide_input=True, err=True)
        if again == value:
            break
        say("the two passphrases differ: type it again", err=True)
        value = click.prompt(prompt, hide_input=True, err=True)
    return value


def load_key(path: str) -> KeyPair:
    """Read a signing key, asking for its passphrase if it is encrypted. Failures are bad input (2)."""
    try:
        passphrase = passphrase_for(path) if keys.is_encrypted(path) else None
        return keys.read_key_file(path, passphrase)
    except (KeyFileError, DecodeError) as exc:
        raise bad_input(exc.reason) from None


def refuse_existing(path: str, what: str, force: bool = False) -> None:
    if os.path.isdir(path):
        raise bad_input(f"{path} is a folder: give the path of the file to write {what} to")
    if not force and os.path.lexists(path):
        raise bad_input(f"{path} already exists; refusing to overwrite {what}")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise bad_input(f"cannot write {what} to {path}: the folder {parent} does not exist")


def read_json_file(path: str, what: str, max_bytes: int = 4 * 1024 * 1024, **hooks: Any) -> Any:
    try:
        raw = read_capped(path, max_bytes)
    except OSError as exc:
        raise bad_input(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise bad_input(f"{what} {path} is larger than {max_bytes} bytes")
    try:
        return json.loads(raw, **hooks)
    except ValueError as exc:  # not UTF-8, not JSON, an integer past Python's 4,300-digit limit
        raise bad_input(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_input(f"{what} {path} is not valid JSON: nested too deeply") from None


def unreadable(path: str, exc: OSError) -> Failure:
    """A file to check that cannot be read at all (missing, a folder, no permission): bad usage (2)."""
    return bad_input(f"cannot read {path}: {exc.strerror or exc}")


def split_list(values: Iterable[str]) -> list[str]:
    """Repeatable options that also take comma-separated lists: --scope a --scope b,c -> [a, b, c]
    (each item once, in the order first given)."""
    return list(dict.fromkeys(item.strip() for v in values for item in v.split(",") if item.strip()))


# --- node access -----------------------------------------------------------------------------------------

def _check_url_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_node_url(value)
    except ClientError as exc:
        raise click.BadParameter(exc.reason) from None


def node_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--node", "node_url", envvar=NODE_ENV, default=DEFAULT_NODE, show_default=True,
                        metavar="URL", callback=_check_url_option,
                        help=f"The node's API (default from ${NODE_ENV}).")(f)


class Seconds(click.FloatRange):
    """A number of seconds in a range; not NaN or infinity, which a range check alone lets through."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return rv


def wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--timeout", "wait_s", type=Seconds(min=0.1, max=3600), default=DEFAULT_WAIT_S,
                        show_default=True, metavar="SECONDS",
                        help="How long to wait for the transaction to be committed.")(f)


def make_client(url: str) -> NodeClient:
    """The client every command uses (a seam for tests)."""
    return NodeClient(url)


def node_call(fn: Callable[[], Any], what: str = "") -> Any:
    """Run one request; a failure is a negative result (exit 1) with the node's reason."""
    try:
        return fn()
    except ClientError as exc:
        raise negative(f"{what}: {exc.reason}" if what and not exc.unreachable else exc.reason) from None


def chain_id_of(client: NodeClient) -> str:
    status = node_call(client.status)
    chain_id = status.get("chain_id")
    try:
        check_chain_id(chain_id)
    except DecodeError:
        raise negative(f"node at {client.url} reported no valid chain id") from None
    return str(chain_id)


def submit_and_wait(client: NodeClient, tx: Tx, wait_s: float) -> dict[str, Any]:
    """Submit one transaction and wait for it to settle; the last result (maybe still pending)."""
    deadline = time.monotonic() + wait_s
    results = node_call(lambda: client.submit([tx], wait=True, timeout=wait_s))
    result: dict[str, Any] = results[0]
    if result.get("status") not in ("committed", "rejected"):
        remaining = deadline - time.monotonic()
        if remaining > 0:
            result = node_call(lambda: client.wait_tx(tx.tx_id.hex(), timeout=remaining))
    return result


def rejection(result: dict[str, Any]) -> str:
    error = str(result.get("error") or "no reason given")
    rule = result.get("rule")
    if rule and not error.startswith(str(rule)):
        error = f"{error} [{rule}]"
    return f"transaction rejected: {error}"


def require_committed(result: dict[str, Any], tx: Tx, wait_s: float, *, unknown_here: str | None = None) -> int:
    """The commit height, or a negative result saying why there is none. `unknown_here`, when given, is
    added to a refusal for a record the node does not hold (revoke.unknown, endorse.unknown): which
    network that node serves, for a record named by id alone (it may be of another network)."""
    status = result.get("status")
    if status == "rejected":
        why = rejection(result)
        if unknown_here and result.get("rule") in ("revoke.unknown", "endorse.unknown"):
            why = f"{why} ({unknown_here})"
        raise negative(why)
    if status != "committed":
        raise negative(f"transaction {tx.tx_id.hex()} was not committed within {wait_s:g} s; it may still "
                       "be; ask the node later (GET /v1/txs/ID)")
    height = result.get("height")
    return int(height) if isinstance(height, int) else 0


# --- the root -------------------------------------------------------------------------------------------

@click.group(cls=LerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ler-ledger", prog_name="ler")
def cli() -> None:
    """LER Ledger: anchor, prove and verify learning and employment records.

    \b
    Exit status: 0 success, 1 negative result (not valid, rejected, node unreachable), 2 bad usage.
    Node commands take --node URL (or $LER_NODE); encrypted keys take their passphrase from a
    prompt or $LER_KEY_PASSPHRASE.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """The console script `ler`."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="ler")


# --- keys ------------------------------------------------------------------------------------------------

@cli.group("keys")
def keys_group() -> None:
    """Create and inspect Ed25519 keys (did:key identities)."""


@keys_group.command("new")
@click.option("--out", required=True, metavar="FILE", help="Where to write the key (mode 0600; never overwritten).")
@click.option("--encrypt", is_flag=True,
              help=f"Encrypt the key with a passphrase (from ${PASSPHRASE_ENV} or a prompt).")
def keys_new(out: str, encrypt: bool) -> None:
    """Create a key and print its did:key."""
    refuse_existing(out, "a key")
    passphrase = passphrase_for(out, new=True) if encrypt else None
    key = KeyPair.generate()
    try:
        keys.write_key_file(out, key, passphrase)
    except KeyFileError as exc:
        raise bad_input(exc.reason) from None
    click.echo(key.did)
    say(f"wrote {out} (mode 0600{', encrypted' if encrypt else ''})", err=True)


@keys_group.command("show")
@click.option("--key", "key_path", required=True, metavar="FILE", help="A key file.")
def keys_show(key_path: str) -> None:
    """Print the did:key of a key file (no passphrase needed)."""
    try:
        did = keys.read_key_file_did(key_path)
    except (KeyFileError, DecodeError) as exc:
        raise bad_input(exc.reason) from None
    click.echo(did)


# --- genesis ---------------------------------------------------------------------------------------------

@cli.group("genesis")
def genesis_group() -> None:
    """Create a network's genesis file (its trust root)."""


def parse_issuer_spec(spec: str) -> GenesisIssuer:
    """DID:NAME:SCOPE1,SCOPE2 (DID may be a key file path instead; NAME may hold ':')."""
    head, sep, scopes_part = spec.rpartition(":")
    if not sep:
        raise bad_input(f"--issuer {spec!r} must be DID:NAME:SCOPE1,SCOPE2")
    if head.startswith("did:"):
        parts = head.split(":", 3)
        if len(parts) < 4:
            raise bad_input(f"--issuer {spec!r} must be DID:NAME:SCOPE1,SCOPE2")
        who, name = ":".join(parts[:3]), parts[3]
    else:
        who, sep, name = head.partition(":")
        if not sep:
            raise bad_input(f"--issuer {spec!r} must be DID:NAME:SCOPE1,SCOPE2")
    did = did_or_key_file(who, "--issuer")
    scopes = sorted(set(split_list([scopes_part])))
    if not name.strip():
        raise bad_input(f"--issuer {spec!r} has no name")
    if not scopes:
        raise bad_input(f"--issuer {spec!r} has no scope")
    for s in scopes:
        try:
            check_record_type(s, "scope")
        except DecodeError as exc:
            raise bad_input(f"--issuer {spec!r}: {exc}") from None
    try:
        return GenesisIssuer(did=did, name=name.strip(), scopes=tuple(scopes))
    except DecodeError as exc:
        raise bad_input(f"--issuer {spec!r}: {exc}") from None


@genesis_group.command("new")
@click.option("--chain-id", required=True, metavar="ID", help="The network's name, e.g. ler-local.")
@click.option("--authority", "authorities", multiple=True, required=True, metavar="KEYFILE_OR_DID",
              help="A first authority (repeat for each).")
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="The authorities' names, in the order given (default: Authority 1, Authority 2, ...).")
@click.option("--issuer", "issuer_specs", multiple=True, metavar="DID:NAME:SCOPE1,SCOPE2",
              help="An issuer accredited from the start (repeatable).")
@click.option("--out", required=True, metavar="FILE", help="Where to write the genesis file.")
@click.option("--time", "genesis_time", metavar="ISO-or-ms",
              help="Genesis time (default: now).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def genesis_new(chain_id: str, authorities: tuple[str, ...], names: tuple[str, ...],
                issuer_specs: tuple[str, ...], out: str, genesis_time: str | None, force: bool) -> None:
    """Write a genesis file: chain id, start time, first authorities and issuers."""
    refuse_existing(out, "a genesis file", force)
    try:
        check_chain_id(chain_id)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    if len(names) > len(authorities):
        raise bad_input(f"{len(names)} --name given for {len(authorities)} --authority")
    dids = [did_or_key_file(a, "--authority") for a in authorities]
    auth_names = [*names, *(f"Authority {i + 1}" for i in range(len(names), len(dids)))]
    issuers = [parse_issuer_spec(s) for s in issuer_specs]
    try:
        genesis = Genesis(
            format=GENESIS_FORMAT, chain_id=chain_id,
            genesis_time=parse_time_ms(genesis_time, "--time") if genesis_time else now_ms(),
            authorities=tuple(GenesisAuthority(did=d, name=n) for d, n in zip(dids, auth_names, strict=True)),
            issuers=tuple(issuers))
        Genesis.from_json(genesis.to_json())  # the limits a reader will apply (name lengths, counts)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    try:
        genesis.save(out)
    except OSError as exc:
        raise bad_input(f"cannot write {out}: {exc.strerror}") from None
    say(f"wrote {out}")
    say(f"  chain:        {genesis.chain_id}")
    say(f"  genesis hash: {genesis.hash.hex()}")
    say(f"  time:         {fmt_time(genesis.genesis_time)}")
    for a in genesis.authorities:
        say(f"  authority:    {a.name} ({a.did})")
    for i in genesis.issuers:
        say(f"  issuer:       {i.name} ({i.did}) for {', '.join(i.scopes)}")
    ahead_s = (genesis.genesis_time - now_ms()) / 1000
    if ahead_s > 60:
        ahead = (f"{ahead_s / 86400:,.0f} days" if ahead_s >= 2 * 86400 else
                 f"{ahead_s / 3600:.1f} hours" if ahead_s >= 3600 else f"{ahead_s / 60:.0f} minutes")
        say(f"note: the genesis time is {ahead} from now; no block can be made before it (nodes refuse a "
            "block time more than a few seconds ahead of their clocks)", err=True)


# --- node ------------------------------------------------------------------------------------------------

@cli.group("node")
def node_group() -> None:
    """Set up and run a node."""


@node_group.command("init")
@click.option("--genesis", "genesis_path", required=True, metavar="FILE", help="The network's genesis file.")
@click.option("--key", "key_path", required=True, metavar="FILE", help="The node's key (copied, mode 0600).")
@click.option("--data", required=True, metavar="DIR", help="The node's data folder (created).")
@click.option("--listen", default="127.0.0.1:8701", show_default=True, metavar="HOST:PORT",
              help="Where the HTTP API listens.")
@click.option("--role", type=click.Choice(["authority", "observer"]), default="authority", show_default=True)
@click.option("--peer", "peers", multiple=True, metavar="URL", help="Another node of the network (repeatable).")
def node_init(genesis_path: str, key_path: str, data: str, listen: str, role: str,
              peers: tuple[str, ...]) -> None:
    """Create a node's data folder: config.toml, genesis.json and node.key."""
    from node.config import ConfigError, init_data_dir, listen_text

    for p in peers:
        try:
            check_node_url(p.partition("#")[0])  # URL#DID: the did follows the URL, as no fragment of it
        except ClientError as exc:
            raise bad_input(f"--peer: {exc.reason}") from None
    try:
        config = init_data_dir(data, genesis_path, key_path, listen, role, tuple(p.rstrip("/") for p in peers))
        genesis = config.load_genesis()
        did = keys.read_key_file_did(config.key_path)
        encrypted = keys.is_encrypted(config.key_path)
    except (ConfigError, LerError) as exc:
        raise bad_input(exc.reason) from None
    except OSError as exc:
        raise bad_input(f"cannot create {data}: {exc.strerror or exc}") from None
    say(f"initialised node data folder {config.data}")
    say(f"  config.toml   listen {listen_text(config.host, config.port)}, role {config.role}, "
        f"{len(config.peers)} peer(s)")
    say(f"  genesis.json  chain {genesis.chain_id}, genesis hash {genesis.hash.hex()}")
    say(f"  node.key      {did} ({'encrypted' if encrypted else 'not encrypted'}, mode 0600)")
    if role == "authority" and did not in {a.did for a in genesis.authorities}:
        say(f"note: {did} is not a genesis authority; it takes part in consensus only once the "
            "authorities vote it in (ler authority add)", err=True)
    for other in _folders_with_key_of(did, config.data):
        say(f"note: {did} is also the key of the node folder {other}: two nodes running with one key are "
            "taken by their peers for one node, and as authorities they would sign conflicting votes, which "
            "every node records as evidence against the key; give each node a key of its own "
            "(ler keys new) unless that folder will not run again", err=True)
    say(f"start it with: ler node run --data {shlex.quote(str(data))}")


#: How many entries beside a new data folder `node init` looks through for another node's key.
SIBLINGS_CHECKED = 256


def _folders_with_key_of(did: str, data: Path) -> list[Path]:
    """Node data folders beside `data` (in its parent folder) whose node key is `did`'s: a key copied to
    a second node, most often by mistake. Unreadable entries are passed over."""
    from node.config import KEY_FILE

    found: list[Path] = []
    own = data.resolve()
    try:
        siblings = sorted(itertools.islice(own.parent.iterdir(), SIBLINGS_CHECKED))
    except OSError:
        return found
    for folder in siblings:
        if folder == own:
            continue
        try:
            if (folder / KEY_FILE).is_file() and keys.read_key_file_did(folder / KEY_FILE) == did:
                found.append(folder)
        except (OSError, LerError):
            continue
    return found


@node_group.command("run")
@click.option("--data", required=True, metavar="DIR", help="A data folder made by `ler node init`.")
def node_run(data: str) -> None:
    """Run a node until interrupted (SIGINT, SIGTERM or SIGHUP stop it cleanly). Logs go to stderr."""
    from node.config import ConfigError, load_config

    try:
        config = load_config(data)
        passphrase = passphrase_for(config.key_path) if keys.is_encrypted(config.key_path) else None
        config.load_key(passphrase)  # a wrong passphrase fails here, before anything starts
        config.load_genesis()
    except (ConfigError, LerError) as exc:
        raise bad_input(exc.reason) from None
    try:
        from node import daemon
    except ImportError as exc:
        raise negative(f"the node daemon is not available: {exc}") from None
    try:
        daemon.run_node(config, passphrase)
    except KeyboardInterrupt:
        return
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        raise negative(f"the node stopped: {stop_reason(exc)}") from None


def stop_reason(exc: BaseException) -> str:
    """What made the node stop, in words: the first failure inside a failed task group (a part of the
    node that failed takes the others down with it), not the group's own "unhandled errors" line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


# --- governance ------------------------------------------------------------------------------------------

def cast_vote(node_url: str, key_path: str, make_action: Callable[[], Action], wait_s: float) -> None:
    """Sign and submit an authority's gov.vote, then say whether the action executed."""
    try:
        action = make_action()
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    key = load_key(key_path)
    client = make_client(node_url)
    chain_id = chain_id_of(client)
    tx = sign_tx(key, chain_id, GovVote(action=action))
    height = require_committed(submit_and_wait(client, tx, wait_s), tx, wait_s)
    say(f"vote by {key.did} for {action.kind} {action.subject} committed at block {height}")
    say(vote_outcome(client, action))


def vote_outcome(client: NodeClient, action: Action) -> str:
    """Whether the action executed, or how many votes it has so far. The vote itself is already
    committed, so a failure to find out is a note, not an error."""
    try:
        auth = client.authorities()
    except ClientError as exc:
        return f"could not read the open proposals ({exc.reason}); {_in_effect_note(client, action)}"
    members = auth.get("authorities") or []
    n = len(members)
    for p in auth.get("proposals") or []:
        try:
            pending = Action.from_json(p.get("action"))
        except (DecodeError, AttributeError):
            continue
        if pending.action_id == action.action_id:
            votes = len(p.get("votes") or [])
            need = 2 * n // 3 + 1
            return (f"vote recorded: {votes} of {n} authorities have voted for it; the action executes when "
                    f"more than 2/3 of the {n} authorities have voted ({need} votes)")
    if action.kind in ("add_authority", "remove_authority"):
        dids = {m.get("did") for m in members if isinstance(m, dict)}
        if (action.subject in dids) == (action.kind == "add_authority"):
            now = "is now an authority" if action.kind == "add_authority" else "is no longer an authority"
            return f"executed: {action.subject} {now} ({n} authorities)"
        return "the vote counted, but the action is neither pending nor in effect (overtaken by another?)"
    return "executed: " + _in_effect_note(client, action)


def _in_effect_note(client: NodeClient, action: Action) -> str:
    """What the ledger now says about the action's subject."""
    if action.kind in ("add_authority", "remove_authority"):
        return "check the authority set with GET /v1/authorities"
    try:
        return describe_issuer(client.issuer(action.subject))
    except ClientError as exc:
        if exc.status == 404:
            return f"{action.subject} is not a registered issuer yet (the action has not executed)"
        return f"could not read the issuer back: {exc.reason}"


def describe_issuer(issuer: dict[str, Any]) -> str:
    name, status = issuer.get("name"), issuer.get("status")
    scopes = ", ".join(str(s) for s in issuer.get("scopes") or [])
    text = f"{name} ({issuer.get('did')}) is {status}"
    if scopes:
        text += f" for {scopes}"
    if isinstance(issuer.get("until"), int):
        text += f" until {fmt_time(issuer['until'])}"
    return text


def authority_key_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--key", "key_path", required=True, metavar="FILE",
                        help="The voting authority's key file.")(f)


@cli.command("accredit")
@node_option
@authority_key_option
@click.option("--issuer", required=True, metavar="DID", help="The issuer's did (or its key file).")
@click.option("--name", required=True, help="The issuer's name as verifiers will see it.")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              help="A record-type prefix it may issue, e.g. degree (repeatable, or comma-separated).")
@click.option("--until", metavar="ISO-DATE-or-ms", help="End of the accreditation (a date: end of that day, UTC).")
@wait_option
def accredit(node_url: str, key_path: str, issuer: str, name: str, scopes: tuple[str, ...], until: str | None,
             wait_s: float) -> None:
    """Vote to accredit an issuer (or change its accreditation)."""
    did = did_or_key_file(issuer, "--issuer")
    scope_list = sorted(set(split_list(scopes)))
    until_ms = parse_time_ms(until, "--until") if until else None
    if until_ms is not None and until_ms <= now_ms():
        raise bad_input(f"--until {until} is already past ({fmt_time(until_ms)}): an accreditation must end "
                        "in the future")
    cast_vote(node_url, key_path, lambda: Action(kind="accredit", subject=did, name=name,
                                                 scopes=tuple(scope_list), until=until_ms), wait_s)


def _issuer_vote_command(kind: str, summary: str) -> None:
    @cli.command(kind, help=summary)
    @node_option
    @authority_key_option
    @click.option("--issuer", required=True, metavar="DID", help="The issuer's did (or its key file).")
    @wait_option
    def command(node_url: str, key_path: str, issuer: str, wait_s: float) -> None:
        did = did_or_key_file(issuer, "--issuer")
        cast_vote(node_url, key_path, lambda: Action(kind=kind, subject=did, name=None, scopes=(), until=None),
                  wait_s)


_issuer_vote_command("suspend", "Vote to suspend an issuer (its records stay valid; new ones are refused).")
_issuer_vote_command("reinstate", "Vote to reinstate a suspended issuer.")
_issuer_vote_command("withdraw", "Vote to withdraw an issuer's accreditation.")


@cli.group("authority")
def authority_group() -> None:
    """Vote on the authority set."""


@authority_group.command("add")
@node_option
@authority_key_option
@click.option("--did", required=True, metavar="DID", help="The new authority's did (or its key file).")
@click.option("--name", required=True, help="The new authority's name.")
@wait_option
def authority_add(node_url: str, key_path: str, did: str, name: str, wait_s: float) -> None:
    """Vote to add an authority (a validator from two blocks after it executes)."""
    subject = did_or_key_file(did, "--did")
    cast_vote(node_url, key_path, lambda: Action(kind="add_authority", subject=subject, name=name, scopes=(),
                                                 until=None), wait_s)


@authority_group.command("remove")
@node_option
@authority_key_option
@click.option("--did", required=True, metavar="DID", help="The authority's did (or its key file).")
@wait_option
def authority_remove(node_url: str, key_path: str, did: str, wait_s: float) -> None:
    """Vote to remove an authority."""
    subject = did_or_key_file(did, "--did")
    cast_vote(node_url, key_path, lambda: Action(kind="remove_authority", subject=subject, name=None,
                                                 scopes=(), until=None), wait_s)


# --- issuing ---------------------------------------------------------------------------------------------

def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a key given twice in one object is an error, not a silent overwrite."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def _find_float(value: Any, where: str) -> str | None:
    if isinstance(value, float):
        return where
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_float(v, f"{where}[{i}]")
            if found:
                return found
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_float(v, f"{where}.{k}")
            if found:
                return found
    return None


def read_claims(path: str) -> dict[str, Any]:
    """A claims file: a JSON object of claim name -> value (no floats: they have no canonical form)."""
    try:
        obj = read_json_file(path, "claims file", object_pairs_hook=reject_duplicate_keys)
    except DecodeError as exc:
        raise bad_input(f"claims file {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise bad_input(f"claims file {path} must hold a JSON object of claim name: value")
    for k, v in obj.items():
        found = _find_float(v, repr(k))
        if found:
            raise bad_input(f"claims file {path}: claim {found} is a decimal number; claim values cannot be "
                            "floats (write it as a string such as \"3.7\", or as an integer)")
    return obj


def parse_evidence(spec: str) -> tuple[str, dict[str, Any]]:
    """KEY=PATH[:MEDIA_TYPE] -> (KEY, evidence claim value)."""
    key, sep, rest = spec.partition("=")
    if not sep or not key.strip() or not rest:
        raise bad_input(f"--evidence {spec!r} must be KEY=PATH or KEY=PATH:MEDIA_TYPE")
    path, media = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and "/" in tail and not Path(rest).exists():
        path, media = head, tail
    if media is None:
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    try:
        return key.strip(), evidence_value(path, media)
    except OSError as exc:
        raise bad_input(f"--evidence {spec!r}: cannot read {path}: {exc.strerror}") from None


def anchor_record(client: NodeClient, key: KeyPair, issuer_did: str, holder_did: str, rtype: str,
                  expires_ms: int | None, claims: tuple[Claim, ...], out: str,
                  wait_s: float) -> tuple[RecordDocument, bytes, Any]:
    """Anchor a record and save the holder's file: (document, tx id, height). Exits 1 if refused; if the
    transaction is not committed in time the file is still written (it may yet commit, and without its
    salts the record could never be shown)."""
    chain_id = chain_id_of(client)
    doc = RecordDocument(chain_id=chain_id, record_id=secrets.token_bytes(RECORD_ID_BYTES), issuer=issuer_did,
                         holder=holder_did, rtype=rtype, expires=expires_ms, claims=claims)
    tx = sign_tx(key, chain_id, RecordAnchor(record=doc.record_id, issuer=issuer_did, holder=holder_did,
                                             rtype=rtype, commitment=doc.commitment, expires=expires_ms))
    doc = dataclasses.replace(doc, anchor_tx=tx.tx_id)
    # The holder's file first: should the node's answer be lost (it crashed, the connection broke), the
    # record may still commit, and without the file's salts it could never be shown.
    try:
        doc.save(out)
    except OSError as exc:
        raise negative(f"{out} could not be written ({exc.strerror}); nothing was sent to the node") from None
    try:
        return _send_anchor(client, doc, tx, out, wait_s)
    except KeyboardInterrupt:
        # Ctrl-C once the anchor may be on its way: the node may have it, and it may still commit.
        raise negative(f"interrupted; the anchor may have reached the node and may still commit, so {out} is "
                       f"kept: ask a node whether transaction {tx.tx_id.hex()} committed (GET /v1/txs/ID) "
                       "before issuing the record again") from None


def _send_anchor(client: NodeClient, doc: RecordDocument, tx: Tx, out: str,
                 wait_s: float) -> tuple[RecordDocument, bytes, Any]:
    deadline = time.monotonic() + wait_s
    try:
        result: dict[str, Any] = client.submit([tx], wait=True, timeout=wait_s)[0]
    except ClientError as exc:
        if exc.unreachable:
            raise negative(f"{exc.reason}; the node may have taken the record before its answer was lost, "
                           f"so {out} is kept: ask a node whether transaction {tx.tx_id.hex()} committed "
                           "(GET /v1/txs/ID) before issuing the record again") from None
        _discard(out)  # refused as a whole: nothing was taken
        raise negative(exc.reason) from None
    if result.get("status") == "rejected":
        _discard(out)
        raise negative(rejection(result))
    if result.get("status") != "committed" and deadline > time.monotonic():
        try:  # taken: from here on the file stays, whatever happens
            result = client.wait_tx(tx.tx_id.hex(), timeout=deadline - time.monotonic())
        except ClientError as exc:
            raise negative(f"{exc.reason}; the node had taken the record, so it may still commit: {out} "
                           f"is kept (ask a node about transaction {tx.tx_id.hex()}: GET /v1/txs/ID)") from None
        if result.get("status") == "rejected":  # dropped while pending (a block made it invalid)
            _discard(out)
            raise negative(rejection(result))
    if result.get("status") != "committed":
        raise negative(f"transaction {tx.tx_id.hex()} was not committed within {wait_s:g} s; the record "
                       f"file was written to {out} in case it still is (ask the node: GET /v1/txs/ID)")
    return doc, tx.tx_id, result.get("height")


@cli.command("issue")
@node_option
@click.option("--key", "key_path", required=True, metavar="FILE", help="The issuer's signing key.")
@click.option("--holder", required=True, metavar="DID", help="The holder's did (a fresh one per record is best).")
@click.option("--type", "rtype", required=True, metavar="RTYPE", help="Record type, e.g. degree.bachelor.")
@click.option("--claims", "claims_path", required=True, metavar="FILE",
              help="A JSON object of claim name: value (strings, integers, booleans, null, lists, objects).")
@click.option("--out", required=True, metavar="FILE", help="Where to write the holder's record file.")
@click.option("--expires", metavar="ISO-or-ms", help="When the record expires (a date: end of that day, UTC).")
@click.option("--issuer", metavar="DID", help="The issuer's identity, if not the key's did (after a key rotation).")
@click.option("--evidence", "evidence_specs", multiple=True, metavar="KEY=PATH[:MEDIA_TYPE]",
              help="Add a claim committing to a file's SHA-256 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@wait_option
def issue(node_url: str, key_path: str, holder: str, rtype: str, claims_path: str, out: str,
          expires: str | None, issuer: str | None, evidence_specs: tuple[str, ...], as_json: bool,
          wait_s: float) -> None:
    """Anchor a record and write the holder's record file."""
    refuse_existing(out, "a record file")
    values = read_claims(claims_path)
    for spec in evidence_specs:
        k, v = parse_evidence(spec)
        if k in values:
            raise bad_input(f"--evidence {k!r}: the claims file has a claim of that name already")
        values[k] = v
    try:
        claims = make_claims(values)
        check_record_type(rtype)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    holder_did = did_or_key_file(holder, "--holder")
    expires_ms = parse_time_ms(expires, "--expires") if expires else None
    if expires_ms is not None and expires_ms <= now_ms():
        raise bad_input(f"--expires {expires} is already past")
    key = load_key(key_path)
    client = make_client(node_url)
    issuer_did = did_or_key_file(issuer, "--issuer") if issuer else issuer_of_key(client, key, key_path)

    doc, tx_id, height = anchor_record(client, key, issuer_did, holder_did, rtype, expires_ms, claims, out, wait_s)

    standing, issuer_name, note = None, None, None
    try:
        info = client.record(doc.record_id.hex())
        standing, issuer_name = info.get("standing"), info.get("issuer_name")
    except ClientError as exc:
        note = f"could not read the record back: {exc.reason}"
    if as_json:
        emit_json({"record_id": doc.record_id.hex(), "tx": tx_id.hex(), "height": height,
                   "standing": standing, "issuer": issuer_did, "holder": holder_did, "type": rtype,
                   "out": out})
    else:
        say(f"anchored record {doc.record_id.hex()} at block {height}")
        say(f"  type:     {rtype}")
        say(f"  issuer:   {issuer_label(issuer_name, issuer_did, holder_did)}")
        say(f"  holder:   {holder_did}")
        say(f"  standing: {standing or 'unknown'}")
        say(f"  tx:       {tx_id.hex()}")
        say(f"wrote {out}: give it to the holder (it holds every claim and its salt; keep it private)")
    if note:
        say(f"note: {note}", err=True)
    elif standing == "unaccredited":
        say(f"note: {issuer_did} is not accredited for {rtype!r}; verifiers will see the record as "
            "unaccredited", err=True)


def issuer_of_key(client: NodeClient, key: KeyPair, key_path: str) -> str:
    """Whom a key issues for when no --issuer is given: its own did. But a key that is the current key of
    a registered issuer (after `ler rotate-key`) is refused (bad usage): its own did is no registered
    issuer, so the record would be anchored, for good, as from an unregistered, unaccredited one."""
    entries = node_call(client.issuers, "reading the registered issuers")
    if any(isinstance(e, dict) and e.get("did") == key.did for e in entries):
        return key.did
    for e in entries:
        epochs = e.get("keys") if isinstance(e, dict) else None
        current = epochs[-1] if isinstance(epochs, list) and epochs else None
        if isinstance(current, dict) and current.get("did") == key.did and isinstance(e.get("did"), str):
            name = f"{e.get('name')} ({e['did']})" if e.get("name") else e["did"]
            raise bad_input(f"--key {key_path} is the current key of the registered issuer {name}, after a key "
                            f"rotation: pass --issuer {e['did']} to issue as that issuer (without it the record "
                            f"would be anchored as from {key.did}, an unregistered issuer)")
    return key.did


def issuer_label(name: str | None, did: str, holder: str | None) -> str:
    if name:
        return f"{name} ({did})"
    if did == holder:
        return f"the holder themselves ({did})"
    return f"unregistered issuer ({did})"


def _discard(path: str) -> None:
    """Remove a record file written for a submission the node refused."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def record_target(record_path: str | None, record_id: str | None) -> tuple[bytes, str | None]:
    """--record FILE or --record-id HEX, exactly one: the record id, and its chain if a file gave it."""
    if (record_path is None) == (record_id is None):
        raise bad_input("give the record as --record FILE or --record-id HEX (one of them)")
    if record_id is not None:
        return record_id_arg(record_id), None
    assert record_path is not None
    try:
        doc = RecordDocument.load(record_path)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    return doc.record_id, doc.chain_id


def chain_of_record(client: NodeClient, record_chain: str | None) -> str:
    """The node's chain id, which must be the record file's (if one was given): a node of another network
    would refuse the transaction as for a record it does not hold, which reads as if it were lost."""
    chain_id = chain_id_of(client)
    if record_chain is not None and record_chain != chain_id:
        raise negative(other_chain_text(client.url, chain_id, "the record", record_chain))
    return chain_id


def _chain_named(url: str, chain_id: str, record_chain: str | None) -> str | None:
    """For a record given by id alone: the network the node serves, to name if it does not know the record."""
    if record_chain is not None:
        return None  # the record file's network, already checked to be the node's
    return f"{url} serves the network {chain_id!r}; is the record of another?"


@cli.command("revoke")
@node_option
@click.option("--key", "key_path", required=True, metavar="FILE", help="The issuer's current key.")
@click.option("--record", "record_path", metavar="FILE", help="The record file.")
@click.option("--record-id", metavar="HEX", help="The record id.")
@click.option("--reason", required=True, help="Why (shown to every verifier).")
@wait_option
def revoke(node_url: str, key_path: str, record_path: str | None, record_id: str | None, reason: str,
           wait_s: float) -> None:
    """Revoke a record (only its issuer can)."""
    rid, record_chain = record_target(record_path, record_id)
    try:
        body = RecordRevoke(record=rid, reason=reason)
        RecordRevoke.from_obj(body.to_obj())  # length limits
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    key = load_key(key_path)
    client = make_client(node_url)
    tx = sign_tx(key, chain_of_record(client, record_chain), body)
    height = require_committed(submit_and_wait(client, tx, wait_s), tx, wait_s,
                               unknown_here=_chain_named(client.url, tx.chain, record_chain))
    say(f"revoked record {rid.hex()} at block {height}: {reason}")


@cli.command("endorse")
@node_option
@click.option("--key", "key_path", required=True, metavar="FILE", help="The endorser's key (any did:key).")
@click.option("--record", "record_path", metavar="FILE", help="The record file.")
@click.option("--record-id", metavar="HEX", help="The record id.")
@click.option("--statement", metavar="FILE", help="Commit to this statement file (its SHA-256) too.")
@click.option("--digest", metavar="HEX", help="Commit to this SHA-256 digest (instead of --statement).")
@wait_option
def endorse(node_url: str, key_path: str, record_path: str | None, record_id: str | None,
            statement: str | None, digest: str | None, wait_s: float) -> None:
    """Vouch for a record as yourself (shown with your did, never as accreditation)."""
    rid, record_chain = record_target(record_path, record_id)
    if statement and digest:
        raise bad_input("give --statement or --digest, not both")
    digest_bytes = None
    if statement:
        try:
            digest_bytes = file_sha256(statement)
        except OSError as exc:
            raise bad_input(f"cannot read {statement}: {exc.strerror}") from None
    elif digest:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise bad_input("--digest must be 64 hex digits (a SHA-256)")
        digest_bytes = bytes.fromhex(digest)
    key = load_key(key_path)
    client = make_client(node_url)
    tx = sign_tx(key, chain_of_record(client, record_chain), RecordEndorse(record=rid, digest=digest_bytes))
    height = require_committed(submit_and_wait(client, tx, wait_s), tx, wait_s,
                               unknown_here=_chain_named(client.url, tx.chain, record_chain))
    say(f"{key.did} endorsed record {rid.hex()} at block {height}")


@cli.command("rotate-key")
@node_option
@click.option("--key", "key_path", required=True, metavar="FILE", help="The issuer's current key.")
@click.option("--new-key", "new_key_path", required=True, metavar="FILE",
              help="The new key (make it with `ler keys new`).")
@click.option("--issuer", metavar="DID", help="The issuer's identity (default: the current key's did).")
@wait_option
def rotate_key(node_url: str, key_path: str, new_key_path: str, issuer: str | None, wait_s: float) -> None:
    """Move an issuer to a new signing key (effective from the next block)."""
    key = load_key(key_path)
    new_key = load_key(new_key_path)
    if new_key.did == key.did:
        raise bad_input("--new-key is the same key as --key")
    issuer_did = did_or_key_file(issuer, "--issuer") if issuer else key.did
    client = make_client(node_url)
    chain_id = chain_id_of(client)
    tx = sign_tx(key, chain_id, rotation_body(issuer_did, chain_id, new_key))
    height = require_committed(submit_and_wait(client, tx, wait_s), tx, wait_s)
    say(f"issuer {issuer_did} rotated to {new_key.did} at block {height}; "
        f"the new key signs from block {height + 1}")


# --- proving and verifying -------------------------------------------------------------------------------

@cli.command("prove")
@node_option
@click.option("--record", "record_path", required=True, metavar="FILE", help="The holder's record file.")
@click.option("--reveal", "reveal", multiple=True, metavar="K1,K2",
              help="Claims to reveal (repeatable or comma-separated); the rest stay hidden.")
@click.option("--reveal-none", is_flag=True, help="Reveal no claim (prove only that the record exists).")
@click.option("--out", required=True, metavar="FILE", help="Where to write the proof bundle.")
@click.option("--genesis", "genesis_path", metavar="FILE",
              help="Also verify the bundle against this genesis file before writing it.")
def prove(node_url: str, record_path: str, reveal: tuple[str, ...], reveal_none: bool, out: str,
          genesis_path: str | None) -> None:
    """Make a proof bundle revealing chosen claims of a record."""
    try:
        doc = RecordDocument.load(record_path)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    names = split_list(reveal)
    known = ", ".join(c.key for c in doc.claims)
    if names and reveal_none:
        raise bad_input("give --reveal or --reveal-none, not both")
    if not names and not reveal_none:
        raise bad_input(f"say which claims to reveal with --reveal (the record has: {known}), "
                        "or --reveal-none")
    try:
        disclosure = doc.disclose(names)
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    genesis = load_genesis(genesis_path) if genesis_path else None

    bundle = request_bundle(make_client(node_url), [(doc, disclosure)], stacked=False)
    verdict = write_bundle(bundle, out, genesis, genesis_path)
    shown = ", ".join(names) if names else "nothing"
    say(f"wrote {out}: record {doc.record_id.hex()} as of block {bundle.head.header.height}, revealing "
        f"{shown}; hidden: {', '.join(disclosure.hidden_names()) or 'none'}")
    if verdict is not None:
        say(f"checked against {genesis_path}: {verdict}")


def _other_chain(client: NodeClient, chain_ids: Sequence[str], what: str) -> str | None:
    """Why `client`'s node cannot answer for `what` (of the chains `chain_ids`), if it serves another chain
    (a node of another network given by mistake, whose answer would otherwise read "not on the ledger"),
    else None. ClientError if the node cannot be asked."""
    serves = client.status().get("chain_id")
    wanted = next((c for c in chain_ids if isinstance(serves, str) and c != serves), None)
    return None if wanted is None else other_chain_text(client.url, str(serves), what, wanted)


def other_chain_text(url: str, serves: str, what: str, chain_id: str) -> str:
    return (f"the node at {url} serves chain {serves!r}, and {what} is of chain {chain_id!r}: give a node of "
            "that network")


def request_bundle(client: NodeClient, asked: list[tuple[RecordDocument, Disclosure]], *,
                   stacked: bool) -> ProofBundle:
    """A proof bundle of the records in `asked`, each carrying the holder's disclosure.

    The node is sent only a disclosure that reveals nothing (every claim's name and salted digest): it
    copies the disclosure into the bundle and needs nothing of it, so no claim value or salt the holder
    reveals to a verifier reaches the node's operator. The bundle the node returns is checked to be
    exactly what was asked (chain, records, those blind disclosures, the anchors of the holder's files),
    then the holder's own disclosures are put in locally: the result is byte for byte the bundle the node
    would have built with them. `stacked` asks POST /v1/bundles (else POST /v1/records/{id}/bundle).
    """
    other = node_call(lambda: _other_chain(client, [d.chain_id for d, _ in asked], "the record"))
    if other:
        raise negative(other)
    blind = [(doc, doc.disclose([])) for doc, _ in asked]
    if stacked:
        obj = node_call(lambda: client.stack([(d.record_id.hex(), x.to_json()) for d, x in blind]),
                        "making the bundle")
    else:
        [(doc, hidden)] = blind
        obj = node_call(lambda: client.bundle(doc.record_id.hex(), hidden.to_json()), "making the bundle")
    try:
        bundle = ProofBundle.from_json(obj)
    except DecodeError as exc:
        raise negative(f"the node returned an invalid bundle: {exc}") from None
    for doc, _ in asked:
        if bundle.chain_id != doc.chain_id:
            raise negative(f"the node is on chain {bundle.chain_id!r}, the record on {doc.chain_id!r}")
    if [(r.record_id, r.disclosure) for r in bundle.records] != [(d.record_id, x) for d, x in blind]:
        raise negative("the node returned a bundle for something other than what was asked")
    for (doc, _), proof in zip(asked, bundle.records, strict=True):
        differs = ledger_mismatch(doc, proof.anchor.tx)
        if differs:
            raise negative(differs)
    records = tuple(dataclasses.replace(proof, disclosure=disclosure)
                    for proof, (_, disclosure) in zip(bundle.records, asked, strict=True))
    return dataclasses.replace(bundle, records=records)


def write_bundle(bundle: ProofBundle, out: str, genesis: Genesis | None, genesis_path: str | None) -> str | None:
    """Check the bundle reads back as written (and, given a genesis, verify the very bytes to be written),
    then write them to `out`. Returns the verdict (if checked)."""
    data = bundle.dumps()
    try:
        ProofBundle.loads(data)  # exactly what a verifier will read back
    except DecodeError as exc:
        raise negative(f"the bundle would not read back: {exc}") from None
    verdict = None
    if genesis is not None:
        result = verify_bundle(data, genesis)
        if result.verdict in (TAMPERED, WRONG_CHAIN):
            raise negative(f"the bundle does not verify against {genesis_path}: {verdict_line(result, genesis)}")
        verdict = result.verdict
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        raise bad_input(f"cannot write {out}: {exc.strerror}") from None
    return verdict


def ledger_mismatch(doc: RecordDocument, anchor_raw: bytes) -> str | None:
    """What a record file says that its anchoring transaction on the ledger does not, if anything.

    The bundle is built from the ledger alone, so a record file whose copy of the anchor was altered would
    still give a good bundle: the holder is told instead of being left with a file that lies."""
    try:
        tx = Tx.decode(anchor_raw)
    except DecodeError as exc:
        return f"the node returned an unreadable anchoring transaction: {exc}"
    body = tx.body
    if not isinstance(body, RecordAnchor) or body.record != doc.record_id:
        return "the node returned an anchoring transaction of another record"
    for name, mine, ledger in (("issuer", doc.issuer, body.issuer), ("holder", doc.holder, body.holder),
                               ("type", doc.rtype, body.rtype), ("expires", doc.expires, body.expires),
                               ("commitment", doc.commitment.hex(), body.commitment.hex()),
                               ("anchor_tx", (doc.anchor_tx or tx.tx_id).hex(), tx.tx_id.hex())):
        if mine != ledger:
            return (f"the record file does not match the ledger: its {name} is {mine!r}, the ledger's "
                    f"{ledger!r} (the file was altered, or belongs to another record)")
    return None


@cli.command("stack")
@node_option
@click.argument("items", nargs=-1, required=True, metavar="RECORD_FILE=CLAIMS...")
@click.option("--out", required=True, metavar="FILE", help="Where to write the proof bundle.")
@click.option("--genesis", "genesis_path", metavar="FILE",
              help="Also verify the bundle against this genesis file before writing it.")
def stack(node_url: str, items: tuple[str, ...], out: str, genesis_path: str | None) -> None:
    """Make one proof bundle of several records (from any issuers), each with its own disclosure.

    Each item is a record file and the claims to reveal from it: `degree.json=degree,field`;
    `badge.json=` reveals no claim of that record. A verifier checks every record on its own.
    """
    asked: list[tuple[RecordDocument, Disclosure]] = []
    for item in items:
        path, sep, claims = item.rpartition("=")
        if not sep or not path:
            raise bad_input(f"{item!r}: give each record as FILE=CLAIMS (e.g. record.json=degree,field; "
                            "FILE= reveals nothing)")
        try:
            doc = RecordDocument.load(path)
            disclosure = doc.disclose(split_list([claims]))
        except DecodeError as exc:
            raise bad_input(str(exc)) from None
        if any(d.record_id == doc.record_id for d, _ in asked):
            raise bad_input(f"{path}: that record is in the stack already")
        asked.append((doc, disclosure))
    if len({d.chain_id for d, _ in asked}) != 1:
        raise bad_input("the records are from different chains; a bundle speaks for one")
    genesis = load_genesis(genesis_path) if genesis_path else None
    bundle = request_bundle(make_client(node_url), asked, stacked=True)
    verdict = write_bundle(bundle, out, genesis, genesis_path)
    say(f"wrote {out}: {len(asked)} records as of block {bundle.head.header.height}")
    for d, x in asked:
        say(f"  {d.record_id.hex()} ({d.rtype}): revealing {', '.join(x.values()) or 'nothing'}; "
            f"hidden: {', '.join(x.hidden_names()) or 'none'}")
    if verdict is not None:
        say(f"checked against {genesis_path}: {verdict}")


def load_genesis(path: str) -> Genesis:
    try:
        return Genesis.load(path)
    except DecodeError as exc:
        raise bad_input(str(exc) if "genesis" in str(exc) else f"genesis file {path}: {exc}") from None


_HEADLINE = {VALID: "VALID", SELF_ASSERTED_V: "SELF-ASSERTED", UNACCREDITED: "UNACCREDITED",
             EXPIRED: "EXPIRED", REVOKED: "REVOKED", WRONG_CHAIN: "WRONG NETWORK", TAMPERED: "TAMPERED",
             STALE: "STALE", REFRESH_FAILED: "REFRESH FAILED", EVIDENCE_MISMATCH: "EVIDENCE MISMATCH"}


def evidence_reason(evidence: Sequence[Check]) -> str:
    """Why the evidence checks fail, in one clause: each failing file's detail."""
    return "; ".join(f"{c.name}: {c.detail}" for c in evidence if not c.ok)


def verdict_line(res: VerificationResult, genesis: Genesis, evidence: Sequence[Check] = ()) -> str:
    """One line a person can act on: the verdict, why, and as of when."""
    head = _HEADLINE.get(res.verdict, res.verdict.upper())
    when = (f"as of block {res.head_height} ({fmt_time(res.head_time)})"
            if res.head_height is not None else "")
    worst = [r for r in res.records if r.verdict == res.verdict]
    n = len(res.records)
    if res.verdict == VALID:
        what = "accredited record, not revoked" if n == 1 else f"{n} accredited records, none revoked"
        return f"{head}: {what}, {when}"
    if res.verdict == SELF_ASSERTED_V:
        return (f"{head}: the holder recorded this about themselves; no accredited issuer vouches for it; "
                f"{when}")
    if res.verdict == UNACCREDITED:
        why = next((c.detail.removeprefix("unaccredited: ") for c in res.checks
                    if c.name == "issuer accredited" and not c.ok and c.record is not None
                    and c.record < n and res.records[c.record].verdict == UNACCREDITED), None)
        return f"{head}: {why or 'the issuer is not accredited for this type of record'}; {when}"
    if res.verdict == EXPIRED:
        r = worst[0] if worst else None
        return f"{head}: the record expired on {fmt_time(r.expires if r else None)}; {when}"
    if res.verdict == REVOKED:
        rev = (worst[0].revoked if worst else None) or {}
        return f"{head}: revoked by its issuer at block {rev.get('height')}: {rev.get('reason')}; {when}"
    if res.verdict == STALE:
        age = fmt_age(max(now_ms() - res.head_time, 0)) if res.head_time is not None else "?"
        if any(c.name == "refresh" and c.ok for c in res.checks):
            return (f"{head}: the node's latest block is {age} old, older than you accept: the network made no "
                    f"block since (or that node is behind), and no proof is fresher than the latest block; {when}")
        return (f"{head}: what the bundle proves is {age} old, older than you accept; refresh it from a node "
                f"(--refresh URL); {when}")
    if res.verdict == REFRESH_FAILED:
        failed_refresh = [c for c in res.checks if c.name == "refresh" and not c.ok]
        why = failed_refresh[0].detail if failed_refresh else "the node's status proof does not verify"
        return f"{head}: {why}; the bundle alone speaks {when}"
    if res.verdict == EVIDENCE_MISMATCH:
        why = evidence_reason(evidence) or "a file handed over does not match its claim"
        alone = verdict_line(dataclasses.replace(res, verdict=res.before_evidence or VALID, before_evidence=None),
                             genesis)
        return f"{head}: {why}; the bundle alone: {alone}"
    if res.verdict == WRONG_CHAIN:
        if res.chain_id == genesis.chain_id:
            net = [c.detail for c in res.checks if c.name == "network" and not c.ok]
            return (f"{head}: the bundle was made for another network that is also named {res.chain_id!r}, not "
                    "for the network of this genesis file: their genesis hashes differ"
                    + (f" ({net[0].split(': ', 1)[-1]})" if net else ""))
        return (f"{head}: the bundle was made for chain {res.chain_id!r}, not for the network of this "
                f"genesis file ({genesis.chain_id!r})")
    # What made it tampered: a check of the bundle itself, or of a record found tampered (in a stack, an
    # earlier record may fail a check that only makes it revoked, say).
    failed = [c for c in res.checks if not c.ok and (c.record is None or c.record >= len(res.records)
                                                      or res.records[c.record].verdict == res.verdict)]
    failed = failed or [c for c in res.checks if not c.ok]
    why = failed[0].detail if failed else "the bundle does not verify"
    if len(worst) == 1 and n > 1 and failed and failed[0].record is not None:
        why = f"record {failed[0].record + 1} of {n}: {why}"
    return f"{head}: {why}"


def render_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"sha256", "media_type", "name"}:
        return f"file {value['name']} ({value['media_type']}), sha256 {value['sha256']}"
    return json.dumps(value, ensure_ascii=False)


def render_result(res: VerificationResult, genesis: Genesis, extra_checks: list[Check]) -> list[str]:
    lines = [verdict_line(res, genesis, extra_checks)]
    n = len(res.records)
    for i, r in enumerate(res.records):
        lines.append("")
        lines.append(f"Record {r.record_id}" + (f" ({i + 1} of {n})" if n > 1 else "") + f": {r.verdict}")
        if r.type is not None:
            lines.append(f"  type:      {r.type}")
        if r.issuer is not None:
            lines.append(f"  issuer:    {issuer_label(r.issuer_name, r.issuer, r.holder)}")
        if r.issuer_status_now not in (None, "active"):
            lines.append(f"             accreditation now {r.issuer_status_now}")
        if r.holder is not None:
            lines.append(f"  holder:    {r.holder}")
        if r.anchored_height is not None:
            lines.append(f"  anchored:  block {r.anchored_height} ({fmt_time(r.anchored_time)})")
        if r.standing is not None:
            lines.append(f"  standing:  {r.standing}")
        if r.expires is not None:
            lines.append(f"  expires:   {fmt_time(r.expires)}")
        if r.disclosed:
            lines.append("  disclosed:")
            lines.extend(f"    {k}: {render_value(v)}" for k, v in r.disclosed.items())
        if r.anchored_height is not None:
            hidden = ", ".join(clean(n) for n in r.hidden_claims) if r.hidden_claims else "none"
            lines.append(f"  hidden:    {hidden} (not disclosed by the holder)")
            if r.endorsements:
                lines.append("  endorsements:")
                for e in r.endorsements:
                    digest = f", statement sha256 {e['digest']}" if e.get("digest") else ""
                    lines.append(f"    by {e['endorser']} at block {e['height']}{digest}")
            else:
                lines.append("  endorsements: none")
        if r.revoked:
            lines.append(f"  REVOKED at block {r.revoked.get('height')}: {r.revoked.get('reason')}")
    lines.append("")
    lines.append("Checks:")
    for c in [*res.checks, *extra_checks]:
        where = f" (record {c.record + 1})" if c.record is not None and n > 1 else ""
        lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}{where}: {c.detail}")
    return lines


def check_evidence(res: VerificationResult, specs: tuple[str, ...]) -> list[Check]:
    """Compare files the holder handed over with the evidence claims the bundle disclosed."""
    checks = []
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep or not key or not path:
            raise bad_input(f"--evidence {spec!r} must be KEY=PATH")
        try:
            digest = file_sha256(path).hex()
        except OSError as exc:
            raise bad_input(f"cannot read evidence file {path}: {exc.strerror}") from None
        claims = [(i, r.disclosed[key]) for i, r in enumerate(res.records) if key in r.disclosed]
        name = f"evidence {key}"
        if not claims:
            checks.append(Check(name, False, f"no disclosed claim named {key!r} to compare {path} with"))
            continue
        for i, value in claims:
            want = value.get("sha256") if isinstance(value, dict) else None
            if want == digest:
                checks.append(Check(name, True, f"{path} matches the committed SHA-256", i))
            elif not isinstance(want, str):
                checks.append(Check(name, False, f"the claim {key!r} is not evidence of a file (it has no "
                                                 f"SHA-256 to compare {path} with; `ler issue --evidence` "
                                                 "makes such claims)", i))
            else:
                checks.append(Check(name, False, f"{path} does not match the file the record commits to", i))
    return checks


_DURATION = re.compile(r"([0-9]{1,9})([dhms]?)")
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "": 1000}


def parse_duration_ms(value: str) -> int:
    """30d, 12h, 90m, 45s or plain seconds, as milliseconds."""
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a duration (e.g. 30d, 12h, 90m, or seconds)")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _optional_url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _check_url_option(ctx, param, value)


def fetch_status(url: str, bundle_data: bytes) -> Any:
    """A node's fresh status proof (parsed JSON) for the bundle's records, or the Exception met fetching it.
    Nothing is trusted: ler.bundle.verify_refreshed checks it all."""
    try:
        bundle = ProofBundle.loads(bundle_data)
        client = make_client(url)
        other = _other_chain(client, [bundle.chain_id], "the bundle")
        if other:
            return LerError(other)
        return client.status_proof([r.record_id.hex() for r in bundle.records], bundle.head.header.height)
    except ClientError as exc:
        return LerError(exc.reason)
    except LerError as exc:
        return exc


@cli.command("verify")
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--genesis", "genesis_path", required=True, envvar=GENESIS_ENV, metavar="FILE",
              help=f"The network's genesis file (default from ${GENESIS_ENV}).")
@click.option("--evidence", "evidence_specs", multiple=True, metavar="KEY=PATH",
              help="Check a file against a disclosed evidence claim (repeatable).")
@click.option("--max-age", "max_age_ms", metavar="DURATION", callback=_duration_option,
              help="Accept the status (not revoked, issuer standing) only if at most this old: 30d, 12h, 90m, "
                   "or seconds. Older is STALE.")
@click.option("--refresh", "refresh_url", metavar="URL", callback=_optional_url_option,
              help="Refresh the status part from this node, trusting nothing it says: its answer is checked "
                   "against the genesis file and linked to the bundle's block by a consistency proof.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as one JSON object.")
def verify(bundle_path: str, genesis_path: str, evidence_specs: tuple[str, ...], max_age_ms: int | None,
           refresh_url: str | None, as_json: bool) -> None:
    """Verify a proof bundle offline, with nothing but the genesis file.

    Exit status 0 only when the verdict is valid (and every --evidence file matches).
    """
    genesis = load_genesis(genesis_path)
    try:
        data = read_capped(bundle_path, MAX_BUNDLE_BYTES)
    except OSError as exc:  # missing, a folder, not allowed: bad usage, not a tampered bundle
        raise unreadable(bundle_path, exc) from None
    if refresh_url is None:
        res = verify_bundle(data, genesis, max_age_ms=max_age_ms)
    else:
        first = verify_bundle(data, genesis)
        if first.verdict in (TAMPERED, WRONG_CHAIN):
            res = first  # nothing worth refreshing
        else:
            status = fetch_status(refresh_url, data)
            res = verify_refreshed(data, status, genesis, max_age_ms=max_age_ms, source=refresh_url)
    extra = check_evidence(res, evidence_specs)
    with_evidence(res, extra)  # a file that does not match fails the verdict, not only the exit status
    refreshed = [c for c in res.checks if c.name == "refresh"] if refresh_url else []
    if as_json:
        obj = res.to_json()
        if extra:
            obj["evidence"] = [c.to_json() for c in extra]
        if refreshed:
            obj["refresh"] = {"from": refresh_url, "ok": refreshed[0].ok, "detail": refreshed[0].detail}
        emit_json(obj)
    else:
        lines = render_result(res, genesis, extra)
        if refreshed and refreshed[0].ok:
            lines.insert(1, refreshed[0].detail.split("; ")[0])
        for line in lines:
            say(line)
    if not res.ok or not all(c.ok for c in extra):
        sys.exit(EXIT_NEGATIVE)


# --- local test network -----------------------------------------------------------------------------------

@cli.group("testnet")
def testnet_group() -> None:
    """Run a local test network on 127.0.0.1 (node processes started in the background)."""


def _testnet() -> Any:
    from node import testnet

    return testnet


_NODES_HELP = ("Authority (validator) nodes, as --authorities (default: the network file's, else 4): a "
               "network of N nodes unless observers are added.")


def _check_nodes(directory: str, nodes: int | None) -> None:
    """`--nodes N` on down/status: the network in DIR must be the one of N authorities the caller means."""
    if nodes is None:
        return
    tn = _testnet()
    made = tn.shape({"nodes": _testnet_call(lambda: tn.find_nodes(directory)).nodes})
    have, observers = made["authorities"], made["observers"]
    if have != nodes:
        extra = f" and {observers} observer{'s' * (observers != 1)}" if observers else ""
        raise bad_input(f"the network in {directory} has {have} authority node{'s' * (have != 1)}{extra}, "
                        f"not {nodes}")


def _testnet_call(fn: Callable[[], Any]) -> Any:
    testnet = _testnet()
    try:
        return fn()
    except testnet.TestnetError as exc:
        raise negative(str(exc)) from None
    except (LerError, OSError) as exc:
        raise negative(getattr(exc, "reason", None) or str(exc)) from None


@testnet_group.command("up")
@click.option("--dir", "directory", required=True, metavar="DIR", help="Where the network lives.")
@click.option("--config", "network_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="A network file (configs/testnet.toml): chain id, node counts, base port, consensus "
                   "timeouts. The flags below win over it.")
@click.option("--authorities", type=click.IntRange(min=1, max=64), default=None,
              help="Validator nodes (default: the network file's, else 4).")
@click.option("--nodes", type=click.IntRange(min=1, max=64), default=None, metavar="N", help=_NODES_HELP)
@click.option("--observers", type=click.IntRange(min=0, max=64), default=None,
              help="Non-voting nodes (default: the network file's, else 0).")
@click.option("--base-port", type=click.IntRange(min=1024, max=65000), default=None,
              help="First port to try (default: the network file's, else 8711).")
@click.option("--chain-id", default=None, help="Chain id (default: the network file's, else ler-testnet).")
@click.option("--seed", "seed_demo", is_flag=True, help="Accredit a demo issuer and anchor demo records.")
@click.option("--propose-timeout", type=Seconds(min=0.1, max=60), default=None, metavar="SECONDS",
              help="Consensus propose timeout of round 0 for a new network (default: the network file's, "
                   "else the node's, 3 s).")
def testnet_up(directory: str, network_file: str | None, authorities: int | None, nodes: int | None,
               observers: int | None, base_port: int | None, chain_id: str | None, seed_demo: bool,
               propose_timeout: float | None) -> None:
    """Create (the first time) and start a local network; returns once every node answers.

    The network's shape (from flags, the network file, then the defaults) applies when it is created;
    a network that exists restarts as it was made (a note says so if flags asked for another shape), and
    only its stopped nodes are started. If a node cannot start (its port taken, say), it says which and
    why, and stops the nodes it started."""
    tn = _testnet()
    if nodes is not None and authorities is not None and nodes != authorities:
        raise bad_input(f"--nodes {nodes} and --authorities {authorities} disagree (they are the same count)")
    authorities = authorities if authorities is not None else nodes
    network, consensus = _testnet_call(lambda: tn.load_network_file(network_file)) if network_file else ({}, {})
    given: dict[str, Any] = {"chain_id": chain_id, "authorities": authorities, "observers": observers,
                             "base_port": base_port}
    shape = {k: given[k] if given[k] is not None else network.get(k, default)
             for k, default in tn.NETWORK_DEFAULTS.items()}
    if propose_timeout is not None:
        consensus["propose"] = propose_timeout
    try:
        check_chain_id(shape["chain_id"])
    except DecodeError as exc:
        raise bad_input(str(exc)) from None
    existing = (Path(directory) / tn.MANIFEST).exists()
    already = set(_testnet_call(lambda: tn.running(directory))) if existing else set()
    manifest = _testnet_call(lambda: tn.up(directory, authorities=shape["authorities"],
                                           observers=shape["observers"], base_port=shape["base_port"],
                                           chain_id=shape["chain_id"], consensus=consensus or None))
    if existing:
        made = tn.shape(manifest)
        asked = {k: given[k] for k in made if given[k] is not None}
        if any(made[k] != v for k, v in asked.items()):
            say(f"note: the network in {directory} already exists and restarts as it was made "
                f"({plural(made['authorities'], 'authority', 'authorities')}, "
                f"{plural(made['observers'], 'observer')})")
    for n in manifest["nodes"]:
        was = "  (was running)" if n["name"] in already else ""
        say(f"{n['name']:<12} {n['role']:<9} {n['url']}  pid {n['pid']}  log {n['data']}/node.log{was}")
    if already and all(n["name"] in already for n in manifest["nodes"]):
        say(f"the network in {directory} was running already: every node runs, none was started")
    say(f"genesis: {manifest['genesis']}")
    if seed_demo:
        seeded = _testnet_call(lambda: tn.seed_demo(directory))
        say(f"demo issuer {seeded['issuer']} accredited; {len(seeded['records'])} new demo record(s)")
        for r in seeded["records"]:
            say(f"  {r}")
    say(f"stop it with: ler testnet down --dir {shlex.quote(str(directory))}")


@testnet_group.command("down")
@click.option("--dir", "directory", required=True, metavar="DIR", help="Where the network lives.")
@click.option("--nodes", type=click.IntRange(min=1, max=64), default=None, metavar="N",
              help="The network's authority nodes, as given to `up` (checked; nothing is stopped if it differs).")
def testnet_down(directory: str, nodes: int | None) -> None:
    """Stop every node of a local network.

    Without a usable DIR/testnet.json (deleted, damaged), it stops the nodes of DIR's node folders whose
    node.pid names that folder's running node, and says so."""
    _check_nodes(directory, nodes)
    tn = _testnet()
    stopped = _testnet_call(lambda: tn.down(directory))
    if stopped.without_manifest is not None:
        say(f"warning: {stopped.without_manifest}", err=True)
    names = ", ".join(stopped.names)
    if stopped.without_manifest is None:
        say(f"stopped {names}" if names else "no node was running")
    else:
        say(f"without {tn.MANIFEST}, by the node.pid of each node folder in {directory}: "
            + (f"stopped {names}" if names else "no node was running"))


@testnet_group.command("status")
@click.option("--dir", "directory", required=True, metavar="DIR", help="Where the network lives.")
@click.option("--nodes", type=click.IntRange(min=1, max=64), default=None, metavar="N",
              help="The network's authority nodes, as given to `up` (checked).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def testnet_status(directory: str, nodes: int | None, as_json: bool) -> None:
    """Show each node of a local network (exit 1 unless every node runs and answers).

    A node's role is its config.toml's (what it runs as), which may differ from what `up` made it.

    Without a usable DIR/testnet.json, it shows DIR's node folders (running: their node.pid names that
    folder's node), says why on stderr and exits 1 (with --json, the rows and 0, as always): `up` cannot
    use that network until testnet.json is restored."""
    _check_nodes(directory, nodes)
    tn = _testnet()
    rows, without_manifest = _testnet_call(lambda: tn.status(directory))
    if without_manifest is not None:
        say(f"warning: {without_manifest}; shown instead: the node folders in {directory}, by their "
            "node.pid and config.toml", err=True)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        state = f"height {r['height']}, mempool {r['mempool']}" if "height" in r else r.get("error", "")
        say(f"{r['name']:<12} {r['role']:<9} {r['url']}  {'running' if r['running'] else 'stopped'}  {state}")
    if without_manifest is not None or not all(r["running"] and "height" in r for r in rows):
        sys.exit(EXIT_NEGATIVE)


# --- status ----------------------------------------------------------------------------------------------

@cli.command("status")
@node_option
@click.option("--json", "as_json", is_flag=True, help="Print the node's status JSON.")
def status(node_url: str, as_json: bool) -> None:
    """Show a node's chain, height, latest block and mempool, and what its /health says to act on when
    it is degraded (--json: the status, with /health's answer as "health")."""
    client = make_client(node_url)
    st = node_call(client.status)
    try:
        health: Any = client.health()
    except ClientError:
        health = None  # the status is what was asked for; a node that cannot say more still has it
    if as_json:
        emit_json({**st, "health": health})
        return
    mem = st.get("mempool") or {}
    role = st.get("role") or "?"
    say(f"node:         {client.url} ({st.get('node')}, {role}, version {st.get('version')})")
    say(f"chain:        {st.get('chain_id')} (genesis {st.get('genesis_hash')})")
    say(f"height:       {st.get('height')}")
    latest = st.get("latest_block")
    if latest:
        say(f"latest block: {latest} at {fmt_time(st.get('latest_time'))}")
    else:
        say("latest block: none yet (only genesis)")
    say(f"mempool:      {mem.get('txs', 0)} transaction(s), {mem.get('bytes', 0)} bytes")
    for reason in _health_warnings(health):
        say(f"degraded:     {reason}")


def _health_warnings(health: Any) -> list[str]:
    """The reasons of /health's warnings when it says "degraded"; none from a node whose /health has no
    such fields (an older version), or fields of another form."""
    if not isinstance(health, dict) or health.get("status") != "degraded":
        return []
    warnings = health.get("warnings")
    if not isinstance(warnings, list):
        return []
    out = []
    for w in warnings:
        if isinstance(w, dict) and isinstance(w.get("reason"), str):
            at = w.get("height")
            out.append(w["reason"] + (f" (height {at})" if isinstance(at, int) and not isinstance(at, bool) else ""))
    return out


from node import cli_vc as _cli_vc  # noqa: E402,F401  (registers its commands on `cli`)

if __name__ == "__main__":
    # Run as `python -m node.cli`: go through the importable module, on whose `cli` every command
    # (including those of node.cli_vc) is registered.
    from node.cli import main as _main

    _main()
