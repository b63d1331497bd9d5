"""``parmana-lab``: a thin shell over the public API (no logic of its own)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archive import ArchiveError
from .canonical import canonicalize
from .errors import KeyStoreError, OverrideError, ParmanaError, PolicyError, RequestError
from .keys import Keyring, TrustStore, load_key_file, new_key_file
from .policy import PolicyStore
from .provenance import runtime_info
from .reports import archive_text
from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir

if TYPE_CHECKING:
    from .runtime import Runtime

# Commands import what they use when they run: `verify`, `keys`, `runtime` and `policies` start without
# DuckDB, pandas, matplotlib or ipywidgets (tests/test_cli_imports.py holds them to it).

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    # A command checks its input with the kit's own models only: no third-party pydantic plugin is loaded into it,
    # which also spares scanning every installed package's metadata at start-up (set the variable to "" to allow them).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ParmanaError as exc:
        print(f"parmana-lab: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parmana-lab", description="Run, verify and audit signed policy executions.")
    p.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE, help="workspace folder (default ./.parmana)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another process (a notebook, a command) holding the audit DB (default: refuse at once)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute request files (one request or a list per file)")
    run.add_argument("files", nargs="+", type=Path)
    run.add_argument("--policies", type=Path, help="policy folder (default ./sample_policies or the bundled samples)")
    run.add_argument("--json", action="store_true", help="one JSON line per request, printed once committed")
    run.add_argument("--authority", type=Path, help="refuse policies no author in this file signed (default: the workspace's)")
    run.set_defaults(func=cmd_run)

    keys = sub.add_parser("keys", help="show the trust store; `keys rotate` makes a new signing key")
    keys.add_argument("action", nargs="?", choices=["show", "rotate", "revoke", "new"], default="show")
    keys.add_argument("key_id", nargs="?", help="with revoke: the keyId")
    keys.add_argument("--at", help="with revoke: revoked from this UTC time (default now)")
    keys.add_argument("--out", type=Path, help="with new: the file for a personal key (a witness's), written 0600")
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(func=cmd_keys)

    rt = sub.add_parser("runtime", help="runtime manifest and provenance hashes")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=cmd_runtime)

    pol = sub.add_parser("policies", help="policies found, with bundleHash and validation errors; `sign`, `verify` bundles")
    pol.add_argument("action", nargs="?", choices=["list", "sign", "verify"], default="list")
    pol.add_argument("dirs", nargs="*", type=Path, help="with sign / verify: policy version folders")
    pol.add_argument("--policies", type=Path)
    pol.add_argument("--authority", type=Path, help="authority file (default: the workspace's keys/authority.json)")
    pol.add_argument("--key", type=Path, help="with sign: the author's private key file")
    pol.add_argument("--author", help="with sign: the authorId")
    pol.add_argument("--sequence", type=int, help="with sign: the bundle sequence (default: one more than beside it)")
    pol.add_argument("--expires", help="with sign: expiry time")
    pol.add_argument("--json", action="store_true")
    pol.set_defaults(func=cmd_policies)

    aut = sub.add_parser("authority", help="the authority file: who may author policies and approve overrides")
    aut.add_argument("action", nargs="?", choices=["show", "add-author", "add-approver", "revoke"], default="show")
    aut.add_argument("name", nargs="?", help="add-author: the AUTHOR_ID; add-approver: the APPROVER_ID; revoke: the KEYID")
    aut.add_argument("--roles", nargs="+", default=[], metavar="ROLE", help="add-approver: the roles this approver holds")
    aut.add_argument("--authority", type=Path, help="default: the workspace's keys/authority.json")
    aut.add_argument("--key", type=Path, help="add-author: a private or public PEM (only the public key is written)")
    aut.add_argument("--policies", nargs="+", default=[], metavar="ID_OR_PATTERN")
    aut.add_argument("--at", help="revoke: from this time (default now)")
    aut.add_argument("--json", action="store_true")
    aut.set_defaults(func=cmd_authority)

    exp = sub.add_parser("export", help="write the audit DB's attestations as a signed archive")
    exp.add_argument("--out", type=Path, required=True, help="target directory or file")
    exp.add_argument("--format", choices=["dir", "zip", "tar.gz"], default=None, help="default: from the --out suffix, else dir")
    exp.add_argument("--no-signals", action="store_true", help="leave signals out (privacy); content checks become 'not checkable'")
    exp.add_argument("--since", help="only attestations issued at or after this UTC time")
    exp.add_argument("--until", help="only attestations issued before this UTC time")
    exp.add_argument("--policy", help="only this policy: ID or ID@VERSION")
    exp.set_defaults(func=cmd_export)

    ver = sub.add_parser("verify", help="verify archives offline against a trust store")
    ver.add_argument("archives", nargs="+", type=Path)
    ver.add_argument("--json", action="store_true", help="one line per attestation, then one line per archive")
    ver.add_argument("--workers", type=_at_least_one, default=1, help="processes verifying in parallel (default 1)")
    ver.add_argument("--trust", type=Path, help="trust store JSON (what `parmana-lab keys --json` prints); default: the workspace's")
    ver.add_argument("--trust-archive-keys", action="store_true", help="also trust the archive's own keys.json (says so in the result)")
    ver.add_argument("--known-runtime", action="append", default=None, metavar="HASH",
                     help="runtimeHash to accept without a RUNTIME_UNKNOWN warning (repeatable; default: this kit's)")
    ver.add_argument("--checkpoint", type=Path, metavar="OLD",
                     help="an older checkpoint of the producer's log: the archive must extend it (HISTORY_INCONSISTENT otherwise)")
    ver.add_argument("--authority", type=Path, help="authority file: check each decision's policy was signed by an allowed author "
                                                    "and each override by allowed approvers (default: the workspace's, if any)")
    ver.add_argument("--scheduler", metavar="ADDRESS",
                     help="verify on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N local worker "
                          "processes (needs the dask extra: pip install 'parmana-lab[dask]')")
    ver.add_argument("--scratch", type=Path, help="with --scheduler: a folder every worker sees, for unpacking .zip / .tar.gz")
    ver.add_argument("--no-progress", action="store_true")
    ver.set_defaults(func=cmd_verify)

    imp = sub.add_parser("import", help="verify archives, then load them into the workspace's audit DB (idempotent)")
    imp.add_argument("archives", nargs="+", type=Path)
    imp.add_argument("--trust", type=Path, help="trust store to verify with (default: the workspace's)")
    imp.add_argument("--unverified", action="store_true",
                     help="import without verifying; every row written is marked import_status='unverified'")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import)

    aud = sub.add_parser("audit", help="audits over exported logs and audit DBs")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True)
    rep = aud_sub.add_parser("replays", help="execution fingerprints used more than once, within or across sources")
    rep.add_argument("sources", nargs="+", type=Path, help="archives (dir, .zip, .tar.gz) or audit DB files")
    rep.add_argument("--json", action="store_true", help="one line per replayed fingerprint with its occurrences")
    rep.add_argument("--scheduler", metavar="ADDRESS", help="on a Dask cluster: a scheduler address, or local:N worker processes")
    rep.add_argument("--scratch", type=Path, help="with --scheduler: a folder every worker sees, for the bucketed records")
    rep.set_defaults(func=cmd_audit_replays)

    rep = aud_sub.add_parser("reproduce", help="re-run recorded executions and compare decisions (writes nothing)")
    rep.add_argument("source", type=Path, help="an archive (dir, .zip, .tar.gz) or an audit DB file")
    rep.add_argument("--json", action="store_true", help="one line per execution: executionId, status, diff")
    rep.add_argument("--policy-version", action="append", default=[], metavar="ID=VERSION",
                     help="what if: re-run policy ID under VERSION instead (repeatable; needs --policies)")
    rep.add_argument("--policies", type=Path, help="policy folder for --policy-version (default ./sample_policies or bundled)")
    rep.set_defaults(func=cmd_audit_reproduce)

    log = sub.add_parser("log", help="the runtime's transparency log: checkpoints, inclusion and consistency proofs")
    log_sub = log.add_subparsers(dest="log_command")
    log.add_argument("--json", action="store_true")
    log.set_defaults(func=cmd_log)
    cp = log_sub.add_parser("checkpoint", help="sign and print a checkpoint of the current log")
    cp.add_argument("--out", type=Path)
    cp.set_defaults(func=cmd_log_checkpoint)
    pr = log_sub.add_parser("prove", help="inclusion proof (c2sp.org/tlog-proof@v1) of one attestation")
    pr.add_argument("execution_id")
    pr.add_argument("--checkpoint", type=Path, help="prove against this checkpoint (default: the latest)")
    pr.add_argument("--out", type=Path, required=True)
    pr.set_defaults(func=cmd_log_prove)
    pc = log_sub.add_parser("prove-consistency", help="consistency proof from an older checkpoint to a new one")
    pc.add_argument("old", type=Path)
    pc.add_argument("--out", type=Path)
    pc.set_defaults(func=cmd_log_prove_consistency)
    lv = log_sub.add_parser("verify", help="verify a checkpoint, inclusion proof or consistency proof offline")
    lv.add_argument("file", type=Path)
    lv.add_argument("--trust", type=Path, required=True, help="the log's trust store (what `parmana-lab keys --json` prints)")
    lv.add_argument("--old", type=Path, help="the older checkpoint, for a consistency proof")
    lv.add_argument("--witness", action="append", default=[], metavar="VKEY", help="a witness verifier key (repeatable)")
    lv.add_argument("--min-witnesses", type=int, default=0)
    lv.add_argument("--json", action="store_true")
    lv.set_defaults(func=cmd_log_verify)
    co = log_sub.add_parser("cosign", help="a local witness: cosign a checkpoint consistent with the last one it cosigned")
    co.add_argument("checkpoint", type=Path)
    co.add_argument("--key", type=Path, required=True)
    co.add_argument("--name", required=True)
    co.add_argument("--state", type=Path, required=True)
    co.add_argument("--trust", type=Path, required=True, help="the log's trust store")
    co.add_argument("--proof", type=Path, help="consistency proof from the size this witness last cosigned")
    co.add_argument("--out", type=Path)
    co.set_defaults(func=cmd_log_cosign)
    wk = log_sub.add_parser("witness-key", help="print the witness's C2SP verifier key")
    wk.add_argument("--key", type=Path, required=True)
    wk.add_argument("--name", required=True)
    wk.set_defaults(func=cmd_log_witness_key)

    ovr = sub.add_parser("overrides", help="pending_override executions: list them, hand out requests, sign votes offline, "
                                           "submit them, reopen expired ones")
    ovr.add_argument("action", nargs="?", choices=["list", "request", "sign", "submit", "reopen", "trail"], default="list")
    ovr.add_argument("targets", nargs="*", help="request / reopen / trail: EXECUTION_ID; sign: REQUEST_FILE; submit: FILE...")
    ovr.add_argument("--all", action="store_true", help="list: include resolved executions with their outcome")
    ovr.add_argument("--authority", type=Path, help="the approvers' authority file (default: the workspace's)")
    ovr.add_argument("--out", type=Path, help="request / sign / reopen: write the envelope here")
    ovr.add_argument("--key", type=Path, help="sign: the approver's private key file")
    ovr.add_argument("--approver-id", help="sign: your approverId in the authority file")
    ovr.add_argument("--role", help="sign: the role you vote in")
    vote = ovr.add_mutually_exclusive_group()
    vote.add_argument("--approve", action="store_const", const="approve", dest="decision")
    vote.add_argument("--reject", action="store_const", const="reject", dest="decision")
    ovr.add_argument("--reason", help="sign: why (required, at most 2,000 characters)")
    ovr.add_argument("--json", action="store_true")
    ovr.set_defaults(func=cmd_overrides)

    demo = sub.add_parser("demo", help="run every sample request on a fresh demo workspace")
    demo.add_argument("--policies", type=Path)
    demo.add_argument("--requests", type=Path)
    demo.set_defaults(func=cmd_demo)
    return p


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1, not {value}")
    return value


def _line(obj: Any) -> None:
    sys.stdout.write(canonicalize(obj).decode("utf-8") + "\n")
    sys.stdout.flush()


def _requests(files: Sequence[Path]) -> Iterator[Any]:
    """Each request of each file in order; an unusable file yields its refusal in place."""
    from .demo import load_requests

    for path in files:
        try:
            requests = load_requests(path)
        except RequestError as exc:
            yield exc
            continue
        yield from requests


def cmd_run(args: argparse.Namespace) -> int:
    from .demo import describe
    from .runtime import Runtime

    refused = False
    states: Counter = Counter()
    codes: Counter = Counter()
    with Runtime(args.workspace, policies=args.policies, wait=args.wait, authority=args.authority) as rt:
        if not args.json:
            print(f"({rt.authorship})", file=sys.stderr)
        for result in _executed(rt, _requests(args.files)):
            (codes if isinstance(result, ParmanaError) else states)[
                result.code if isinstance(result, ParmanaError) else result.execution_state] += 1
            if isinstance(result, ParmanaError):
                refused = True
                if args.json:
                    _line({"error": result.to_dict()})
                else:
                    print(f"REFUSED  {result}", flush=True)
            elif args.json:
                sys.stdout.write(result.canonical().decode("utf-8") + "\n")
                sys.stdout.flush()
            else:
                print(describe(result), flush=True)
    code = EXIT_FAILED if refused else EXIT_OK
    if args.json:
        return _summary(code, requests=states.total() + codes.total(), executed=states.total(), refused=codes.total(),
                        states=dict(sorted(states.items())), codes=dict(sorted(codes.items())))
    return code


def _executed(rt: Runtime, items: Iterator[Any]) -> Iterator[Any]:
    """Pass file-level refusals through in order; execute the requests between them in chunks."""
    batch: list[Any] = []
    for item in items:
        if isinstance(item, ParmanaError):
            yield from rt.iter_execute(batch)
            batch = []
            yield item
        else:
            batch.append(item)
    yield from rt.iter_execute(batch)


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "new":
        if not args.out:
            raise KeyStoreError("KEY-006", "keys", "keys new needs --out FILE.pem for the new private key")
        key = new_key_file(args.out)
        info = {"keyId": key.key_id, "publicKey": key.public_key_pem(), "path": str(args.out)}
        if args.json:
            _line(info)
        else:
            print(f"new key {key.key_id} in {args.out} (mode 0600)\n{info['publicKey']}", end="")
        return EXIT_OK
    ring = Keyring(Workspace(args.workspace).keys_dir)
    if args.action == "rotate":
        key = ring.rotate()
        print(f"new signing key {key.key_id}; earlier keys stay trusted for what they signed")
        return EXIT_OK
    if args.action == "revoke":
        if not args.key_id:
            raise KeyStoreError("KEY-005", "keys", "keys revoke needs the keyId to revoke (`parmana-lab keys` lists them)")
        key = ring.revoke(args.key_id, args.at)
        print(f"key {key.keyId} revoked from {key.revokedAt}")
        return EXIT_OK
    store = ring.trust_store()
    if args.json:
        sys.stdout.write(store.to_json())
        return EXIT_OK
    active = ring.active_key_id()
    if not store.keys:
        print(f"no keys yet in {ring.dir} (one is made on first run, or with `parmana-lab keys rotate`)")
    for k in store.keys:
        state = "active" if k.keyId == active else ("revoked " + k.revokedAt if k.revokedAt else "retired")
        print(f"{k.keyId}  {state:<10}  notBefore {k.notBefore}  notAfter {k.notAfter or '-'}")
    return EXIT_OK


def cmd_runtime(args: argparse.Namespace) -> int:
    info = runtime_info()
    if args.json:
        _line(info.model_dump(mode="json"))
        return EXIT_OK
    m = info.manifest
    print(f"runtimeVersion          {m.runtimeVersion}")
    print(f"supportedSchemaVersions {', '.join(m.supportedSchemaVersions)}")
    print(f"capabilities            {', '.join(m.capabilities)}")
    print(f"runtimeHash             {info.runtimeHash}")
    print(f"evaluatorArtifactHash   {info.evaluatorArtifactHash}")
    return EXIT_OK


def _authority_path(args: argparse.Namespace) -> Path:
    return args.authority or Workspace(args.workspace).keys_dir / "authority.json"


def cmd_authority(args: argparse.Namespace) -> int:
    from .authority import ApproverEntry, AuthorEntry, Authority
    from .keys import SigningKey, key_id_for, public_key_from_pem, public_key_to_pem
    from .timestamps import format_ts, system_clock, time_bound

    path = _authority_path(args)
    authority = Authority.load(path) if path.exists() else Authority()
    if args.action in ("add-author", "add-approver"):
        author = args.action == "add-author"
        if not args.name or not args.key or not (args.policies if author else args.roles):
            raise KeyStoreError("KEY-008", "keys", "authority add-author AUTHOR_ID --key FILE --policies ID_OR_PATTERN..." if author
                                else "authority add-approver APPROVER_ID --roles ROLE... --key FILE")
        data = _read_file(args.key, "KEY-002")
        try:
            raw = public_key_from_pem(data)
        except ValueError:
            raw = (load_key_file(args.key) if b"PRIVATE" in data else SigningKey.from_pem(data)).public_key
        common = {"keyId": key_id_for(raw), "publicKey": public_key_to_pem(raw), "notBefore": format_ts(system_clock())}
        entry = (AuthorEntry(authorId=args.name, policyIds=args.policies, **common) if author
                 else ApproverEntry(approverId=args.name, roles=args.roles, **common))
        if authority.author(entry.keyId) or authority.approver(entry.keyId):
            raise KeyStoreError("KEY-008", "keys", f"key {entry.keyId} is already in {path} (one key, one person, one job)")
        if any(k.keyId == entry.keyId for k in Keyring(Workspace(args.workspace).keys_dir).trust_store().keys):
            raise KeyStoreError("KEY-008", "keys", f"key {entry.keyId} is a runtime signing key: it can never author policies "
                                                   "or approve overrides")
        (authority.authors if author else authority.approvers).append(entry)
        authority.save(path)
        print(f"author {args.name} key {entry.keyId} may sign {', '.join(args.policies)} ({path})" if author else
              f"approver {args.name} key {entry.keyId} holds role(s) {', '.join(args.roles)} ({path})")
        return EXIT_OK
    if args.action == "revoke":
        try:
            at = time_bound(args.at) if args.at else format_ts(system_clock())
        except ValueError as exc:
            raise KeyStoreError("KEY-007", "keys", str(exc)) from None
        authority, entry = authority.revoked(args.name or "", at)
        if entry is None:
            raise KeyStoreError("KEY-005", "keys", f"no author or approver key {args.name!r} in {path}")
        authority.save(path)
        who = entry.authorId if isinstance(entry, AuthorEntry) else entry.approverId
        print(f"{'author' if isinstance(entry, AuthorEntry) else 'approver'} key {entry.keyId} ({who}) revoked from {at}")
        return EXIT_OK
    if args.json:
        sys.stdout.write(authority.to_json())
    else:
        for a in authority.authors:
            print(f"author   {a.authorId:<16} {a.keyId}  {', '.join(a.policyIds)}" + (f"  revoked {a.revokedAt}" if a.revokedAt else ""))
        for a in authority.approvers:
            print(f"approver {a.approverId:<16} {a.keyId}  {', '.join(a.roles)}" + (f"  revoked {a.revokedAt}" if a.revokedAt else ""))
        if not authority.authors and not authority.approvers:
            print(f"no authors or approvers in {path}")
    return EXIT_OK


def cmd_policies(args: argparse.Namespace) -> int:
    if args.action == "sign":
        return _policies_sign(args)
    if args.action == "verify":
        return _policies_verify(args)
    store = PolicyStore(args.policies or default_policy_dir())
    bad, loaded, failed = False, 0, 0
    for item in store.scan():
        if isinstance(item, ParmanaError):
            bad, failed = True, failed + 1
            if args.json:
                _line({"error": item.to_dict()})
            else:
                print(f"ERROR  {item}")
            continue
        loaded += 1
        warnings = [w.model_dump() for w in item.warnings]
        if args.json:
            _line({
                "policyId": item.policyId,
                "policyVersion": item.policyVersion,
                "bundleHash": item.bundleHash,
                "path": item.source,
                "rules": len(item.rules),
                "warnings": warnings,
            })
        else:
            extra = "".join(f"  [{w['code']}] {w['reason']}" for w in warnings)
            print(f"{item.policyId:<18} {item.policyVersion:<8} {item.bundleHash}  {len(item.rules)} rules{extra}")
    code = EXIT_FAILED if bad else EXIT_OK
    if not _authority_path(args).exists():
        print("(authorship not checked: no authority file; `parmana-lab policies verify DIR --authority FILE` checks bundles)",
              file=sys.stderr)
    return _summary(code, loaded=loaded, failed=failed) if args.json else code


def _policies_sign(args: argparse.Namespace) -> int:
    from .bundles import sign_bundle

    if not args.dirs or not args.key or not args.author:
        raise PolicyError("POL-030", "policy", "policies sign DIR... --key FILE.pem --author AUTHOR_ID")
    key = load_key_file(args.key)
    for folder in args.dirs:
        manifest = sign_bundle(folder, key, args.author, sequence=args.sequence, expires=args.expires)
        print(f"signed {manifest['policyId']} {manifest['policyVersion']} as {args.author} (sequence {manifest['sequence']})")
    return EXIT_OK


def _policies_verify(args: argparse.Namespace) -> int:
    from .authority import Authority
    from .bundles import verify_bundle

    if not args.dirs:
        raise PolicyError("POL-030", "policy", "policies verify DIR... --authority FILE")
    authority = Authority.load(_authority_path(args))
    runtime_keys = frozenset(k.keyId for k in Keyring(Workspace(args.workspace).keys_dir).trust_store().keys)
    failed = 0
    for folder in args.dirs:
        v = verify_bundle(folder, authority, runtime_keys=runtime_keys)
        failed += v.status != "verified"
        if args.json:
            _line(v.model_dump(include={"policyId", "policyVersion", "status", "code", "reason", "sequence", "signerKeyIds"}))
        else:
            print(f"{v.policyId} {v.policyVersion}: {v.status.upper()} {v.code}  {v.reason}")
    code = EXIT_FAILED if failed else EXIT_OK
    return _summary(code, verified=len(args.dirs) - failed, failed=failed) if args.json else code


def cmd_export(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    fmt = args.format or next((f for f in ("zip", "tar.gz") if args.out.name.endswith("." + f)), "dir")
    policy_id, at, policy_version = (args.policy or "").partition("@")
    if args.policy is not None and (not policy_id or (at and not policy_version)):
        raise PolicyError("POL-007", "policy", f"--policy takes ID or ID@VERSION (e.g. loan-approval@1.1.0), not {args.policy!r}")
    with Runtime(args.workspace, wait=args.wait) as rt:
        result = rt.export_archive(
            args.out, format=fmt, signals=not args.no_signals, since=args.since, until=args.until,
            policy_id=policy_id or None, policy_version=policy_version or None,
        )
    print(f"exported {result.count} attestations to {result.path} ({result.format}, signals {'included' if result.signals else 'left out'})")
    filters = [f"{name} {value}" for name, value in (("--policy", args.policy), ("--since", args.since), ("--until", args.until)) if value]
    if not result.count and filters:
        print(f"note: no attestation in the audit DB matches {', '.join(filters)}", file=sys.stderr)
    return EXIT_OK


def _summary(exit_code: int, **counts: Any) -> int:
    """The closing --json line every reporting command prints: its counts and the exit status they imply."""
    _line({"summary": {**counts, "exit": exit_code}})
    return exit_code


def _unusable(path: Path, exc: ParmanaError) -> dict[str, Any]:
    return {"path": str(path), "status": "unusable", **exc.to_dict()}


def _trust_for(args: argparse.Namespace) -> Path | None:
    """The trust store file a command verifies with: --trust, else the workspace's (None: archive keys only)."""
    trust = args.trust or Workspace(args.workspace).keys_dir / "trust.json"
    if Path(trust).exists():
        return Path(trust)
    if getattr(args, "trust_archive_keys", False):
        return None
    raise KeyStoreError("KEY-004", "verify", f"no trust store at {trust}; pass --trust FILE (what `parmana-lab keys --json` "
                        "prints on the producer's side)")


def cmd_verify(args: argparse.Namespace) -> int:
    trust = _trust_for(args)
    store = TrustStore.load(trust) if trust else TrustStore()
    checkpoint = _read_file(args.checkpoint, "CHECKPOINT_MALFORMED") if args.checkpoint else None  # once, for every archive
    authority = None
    authority_path = args.authority or Workspace(args.workspace).keys_dir / "authority.json"
    if args.authority or authority_path.is_file():
        from .authority import Authority

        authority = Authority.load(authority_path)
    with _cluster(args.scheduler) as client:
        return _verify_each(args, trust, store, checkpoint, authority, client)


@contextmanager
def _cluster(scheduler: str | None) -> Iterator[Any]:
    """A Dask client for --scheduler (an address, or local:N worker processes), or None."""
    if scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ArchiveError("ARC-010", "--scheduler needs Dask: pip install 'parmana-lab[dask]'") from None
    if scheduler.startswith("local:"):
        count = _at_least_one(scheduler[6:])
        with LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            print(f"(dask: {count} local worker processes, dashboard {client.dashboard_link})", file=sys.stderr)
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ArchiveError("ARC-010", f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    with client:
        yield client


def _verify_each(args: argparse.Namespace, trust: Path | None, store: TrustStore, checkpoint: bytes | None, authority: Any,
                 client: Any) -> int:
    """Each archive in turn (on the cluster when there is a client); one's unusability does not stop the others."""
    from .verify import verify_archive

    worst, outcomes = EXIT_OK, Counter()
    records: Counter = Counter()
    codes: Counter = Counter()
    for path in args.archives:
        try:
            report = verify_archive(path, trust if trust else store, workers=args.workers,
                                    progress=not (args.json or args.no_progress), known_runtimes=args.known_runtime,
                                    trust_archive_keys=args.trust_archive_keys, checkpoint=checkpoint, authority=authority,
                                    client=client, scratch=args.scratch)
        except ParmanaError as exc:  # this archive is unusable; the others are still verified
            worst, outcomes["unusable"] = max(worst, EXIT_UNUSABLE), outcomes["unusable"] + 1
            if args.json:
                _line({"archive": _unusable(path, exc)})
            else:
                print(f"parmana-lab: {exc}", file=sys.stderr)
            continue
        s = report.summary
        outcomes[s.status] += 1
        records.update(total=s.total, verified=s.verified, warnings=s.warnings, failed=s.failed)
        codes.update({c: n for c, n in s.codes.items()})
        codes.update(s.archive_codes)
        if s.status != "verified":
            worst = max(worst, EXIT_FAILED)
        if args.json:
            for result in report.results():
                extra = {"override": result.override} if result.override else {}
                _line({"source": str(path), "line": result.line, "executionId": result.executionId, "status": result.status,
                       "code": result.code, "checks": result.checks, "hint": result.hint, **extra})
            _line({"archive": {"path": str(path), "status": s.status, "codes": s.archive_codes + [
                c for c in s.codes if c != "VERIFIED"], "total": s.total, "verified": s.verified, "warnings": s.warnings,
                "failed": s.failed, "trust": s.trust, "authorship": s.authorship, "overrides": s.overrides}})
        else:
            print(archive_text(report))
    if args.json:
        return _summary(worst, archives=len(args.archives), **{k: outcomes.get(k, 0) for k in ("verified", "failed", "unusable")},
                        attestations={k: records.get(k, 0) for k in ("total", "verified", "warnings", "failed")},
                        codes=dict(sorted(codes.items())))
    return worst


def cmd_import(args: argparse.Namespace) -> int:
    from .imports import ImportRefused, import_archive
    from .runtime import Runtime

    trust = None if args.unverified else _trust_for(args)
    worst, outcomes, totals = EXIT_OK, Counter(), Counter()
    with Runtime(args.workspace, wait=args.wait) as rt:
        for path in args.archives:
            try:
                result = import_archive(path, rt.db, trust, unverified=args.unverified)
            except ImportRefused as exc:
                worst, outcomes["refused"] = max(worst, EXIT_FAILED), outcomes["refused"] + 1
                if args.json:
                    _line({"archive": str(path), "status": "refused", **exc.to_dict(), "verification": exc.summary})
                else:
                    print(f"{path}: REFUSED, nothing imported  {exc}")
                continue
            except (ArchiveError, KeyStoreError) as exc:  # this archive is unusable; the others are still imported
                worst, outcomes["unusable"] = max(worst, EXIT_UNUSABLE), outcomes["unusable"] + 1
                if args.json:
                    _line({"archive": str(path), "status": "unusable", **exc.to_dict()})
                else:
                    print(f"parmana-lab: {exc}", file=sys.stderr)
                continue
            problems = bool(result.conflicts or result.malformed)
            outcomes["imported"] += 1
            totals.update(inserted=result.inserted, already_present=result.already_present, conflicts=len(result.conflicts),
                          malformed=len(result.malformed))
            worst = max(worst, EXIT_FAILED if problems else EXIT_OK)
            if args.json:
                _line(result.model_dump(mode="json"))
            else:
                how = "UNVERIFIED (--unverified: rows marked so)" if result.status == "unverified" else "verified"
                print(f"{path}: {how}; {result.inserted} inserted, {result.already_present} already present, "
                      f"{len(result.conflicts)} conflicts, {len(result.malformed)} malformed lines")
                for c in result.conflicts:
                    print(f"  conflict: {c}")
    if args.json:
        return _summary(worst, archives=len(args.archives), **{k: outcomes.get(k, 0) for k in ("imported", "refused", "unusable")},
                        **{k: totals.get(k, 0) for k in ("inserted", "already_present", "conflicts", "malformed")})
    return worst


def cmd_audit_replays(args: argparse.Namespace) -> int:
    from .replays import find_replays

    with _cluster(args.scheduler) as client, find_replays(args.sources, client=client, scratch=args.scratch) as report:
        findings = report.findings()
        s = report.summary
        code = EXIT_FAILED if report.found else EXIT_OK
        if args.json:
            for finding in findings:
                _line(finding)
            for row in report.reused_ids.itertuples():
                _line({"executionId": row.executionId, "reused_with_different_content": int(row.versions),
                       "sources": list(row.sources)})
            for bad in report.unreadable:
                _line({"source": bad["source"], "line": bad["line"], "unreadable": bad["reason"]})
            return _summary(code, **s.model_dump())
        print(f"{len(s.sources)} source(s): {report.headline()}")
        for finding in findings:
            print(f"  {finding['execution_fingerprint']}")
            for o in finding["executions"]:
                also = f"  also in {', '.join(o['also_in'])}" if o["also_in"] else ""
                print(f"    {o['source']}:{o['line']}  {o['issuedAt']}  {o['executionId']}  key {o['signerKeyId']}  "
                      f"{o['decision']}{also}")
        for row in report.reused_ids.itertuples():
            print(f"  executionId {row.executionId} has {row.versions} different contents in {', '.join(row.sources)}")
        for bad in report.unreadable:
            print(f"  unreadable {bad['source']}:{bad['line']}: {bad['reason']}")
        return code


def cmd_audit_reproduce(args: argparse.Namespace) -> int:
    from .reproducibility import reproduce

    versions = {}
    for item in args.policy_version:
        policy_id, sep, version = item.partition("=")
        if not sep or not policy_id or not version:
            raise PolicyError("POL-007", "policy", f"--policy-version takes ID=VERSION (e.g. loan-approval=1.1.0), not {item!r}")
        versions[policy_id] = version
    report = reproduce(args.source, policy_versions=versions or None,
                       policies=(args.policies or default_policy_dir()) if versions else None,
                       progress=not args.json and sys.stderr.isatty())
    s = report.summary
    code = EXIT_OK if s.all_match else EXIT_FAILED
    if args.json:
        for row in report.rows:
            _line({"source": str(args.source), "line": row["line"], "executionId": row["executionId"], "status": row["status"],
                   "changed": row["changed"], "diff": row["diff"], "why": row["why"], "unverified": row["unverified"],
                   **({"attested": row["attested"], "override": row["override"]} if row["override"] else {})})
        return _summary(code, **s.model_dump(exclude={"source"}), source=str(args.source))
    print(f"{s.source}: " + ", ".join(f"{k} {v}" for k, v in s.statuses.items())
          + f"; from another runtime {s.other_runtime}, from another evaluator build {s.other_evaluator}"
          + (f"; {s.unverified} imported unverified" if s.unverified else ""))
    if s.overrides:
        print("  overrides as recorded: " + ", ".join(f"{k} {n}" for k, n in s.overrides.items()))
    for row in report.rows:
        if row["status"] != "MATCH":
            change = (f"{row['attested']} -> {row['now']} (changed: {', '.join(row['changed'])})"
                      if row["status"] == "DIVERGED" else "")
            print(f"  line {row['line']} {row['executionId']}: {row['status']}  {row['why'] or ''}{change}")
    return code


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


def _read_file(path: Path, code: str = "PROOF_MALFORMED") -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParmanaError(code, "log", f"cannot read {path}: {exc.strerror}") from None


def cmd_log(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    with Runtime(args.workspace, wait=args.wait) as rt:
        info = rt.log.info()
    if args.json:
        _line(dataclasses.asdict(info))
    else:
        print(f"origin  {info.origin}\nsize    {info.size}\nroot    {info.root}")
        print("latest checkpoint:\n" + info.latest_checkpoint if info.latest_checkpoint else "no checkpoint signed yet")
    return EXIT_OK


def cmd_log_checkpoint(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    with Runtime(args.workspace, wait=args.wait) as rt:
        _emit(rt.log.checkpoint().render(), args.out)
    return EXIT_OK


def cmd_log_prove(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    with Runtime(args.workspace, wait=args.wait) as rt:
        checkpoint = _read_file(args.checkpoint, "CHECKPOINT_MALFORMED") if args.checkpoint else None
        _emit(rt.log.prove(args.execution_id, checkpoint).render(), args.out)
    return EXIT_OK


def cmd_log_prove_consistency(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    with Runtime(args.workspace, wait=args.wait) as rt:
        old = _read_file(args.old, "CHECKPOINT_MALFORMED")
        rt.log.checkpoint()  # the newest state, signed (a no-op when nothing changed)
        _emit(rt.log.prove_consistency(old).render(), args.out)
    return EXIT_OK


def cmd_log_verify(args: argparse.Namespace) -> int:
    from .logverify import verify_log_file

    store = TrustStore.load(args.trust)
    if not store.keys:
        raise KeyStoreError("KEY-004", "verify", f"{args.trust} holds no keys")
    data = _read_file(args.file)
    old = _read_file(args.old, "CHECKPOINT_MALFORMED") if args.old else None
    verdict = verify_log_file(data, store, old=old, witnesses=args.witness, min_witnesses=args.min_witnesses)
    code = EXIT_OK if verdict.valid else EXIT_FAILED
    if args.json:
        _line({"file": str(args.file), **verdict.model_dump()})
        return _summary(code, valid=int(verdict.valid), invalid=int(not verdict.valid))
    print(f"{args.file}: {'VALID' if verdict.valid else 'INVALID ' + verdict.code}  {verdict.kind}: {verdict.reason}")
    return code


def cmd_log_cosign(args: argparse.Namespace) -> int:
    from .witness import WitnessError, cosign

    key = load_key_file(args.key)
    try:
        signed = cosign(_read_file(args.checkpoint, "CHECKPOINT_MALFORMED"), key, args.name, args.state,
                        TrustStore.load(args.trust), proof=_read_file(args.proof) if args.proof else None)
    except WitnessError as exc:
        if not exc.code.startswith("WITNESS_"):
            raise
        print(f"parmana-lab: {exc}", file=sys.stderr)  # checked, and refused: a finding, not unusable input
        return EXIT_FAILED
    _emit(signed.render(), args.out)
    return EXIT_OK


def cmd_log_witness_key(args: argparse.Namespace) -> int:
    from .witness import witness_vkey

    print(witness_vkey(load_key_file(args.key), args.name))
    return EXIT_OK


def _override_runtime(args: argparse.Namespace) -> Runtime:
    from .runtime import Runtime

    return Runtime(args.workspace, wait=args.wait, authority=args.authority)


def _one_target(args: argparse.Namespace, what: str) -> str:
    if len(args.targets) != 1:
        raise OverrideError("OVR-001", f"overrides {args.action} takes one {what}")
    return args.targets[0]


def _write_envelope(envelope: dict[str, Any], out: Path | None) -> None:
    _emit(canonicalize(envelope).decode("utf-8") + "\n", out)


def _status_line(s: Any) -> dict[str, Any]:
    return {"executionId": s.executionId, "state": s.state, "policyId": s.policyId, "policyVersion": s.policyVersion,
            "ruleId": s.ruleId, "requestedBy": s.requestedBy, "openedAt": s.openedAt, "expiresAt": s.expiresAt,
            "votes": {"approve": s.approvals, "reject": s.rejections}, "needed": s.needed}


def cmd_overrides(args: argparse.Namespace) -> int:
    if args.action == "sign":  # offline: no workspace, no runtime
        from .overrides import describe_request, load_request, sign_resolution

        missing = [f for f, v in (("--key", args.key), ("--approver-id", args.approver_id), ("--role", args.role),
                                  ("--approve or --reject", args.decision), ("--reason", args.reason), ("--out", args.out)) if not v]
        if missing:
            raise OverrideError("OVR-001", f"overrides sign REQUEST_FILE needs {', '.join(missing)}")
        request = load_request(Path(_one_target(args, "REQUEST_FILE")))
        print(f"You are signing: {args.decision.upper()} as {args.approver_id} ({args.role})\n{describe_request(request)}",
              file=sys.stderr)
        envelope = sign_resolution(request, args.key, approver_id=args.approver_id, role=args.role, decision=args.decision,
                                   reason=args.reason)
        _write_envelope(envelope, args.out)
        print(f"wrote {args.out}: hand it to the runtime (`parmana-lab overrides submit {args.out}`)", file=sys.stderr)
        return EXIT_OK
    if args.action == "submit":
        return _overrides_submit(args)
    with _override_runtime(args) as rt:
        if args.action == "list":
            statuses = rt.pending_overrides(include_resolved=args.all)
            for s in statuses:
                if args.json:
                    _line(_status_line(s))
                else:
                    print(f"{s.state:<9} {s.executionId}  {s.policyId} {s.policyVersion} rule {s.ruleId}  requested by "
                          f"{s.requestedBy or '-'}  open until {s.expiresAt}  approvals {len(s.approvals)}, rejections "
                          f"{len(s.rejections)}: {s.needed}")
            if args.json:
                return _summary(EXIT_OK, **{k: sum(s.state == k for s in statuses) for k in ("pending", "approved", "rejected",
                                                                                               "expired")})
            if not statuses:
                print("no pending override" + (" (and none resolved)" if args.all else ""))
            return EXIT_OK
        execution_id = _one_target(args, "EXECUTION_ID")
        if args.action == "request":
            _write_envelope(rt.override_request(execution_id), args.out)
        elif args.action == "reopen":
            try:
                _write_envelope(rt.reopen_override(execution_id), args.out)
            except OverrideError as exc:
                print(f"parmana-lab: {exc}", file=sys.stderr)
                return EXIT_FAILED
        else:
            from .overrides import record_line

            trail = rt.override_trail(execution_id)
            for r in trail.records:
                if args.json:
                    _line({"kind": r.kind, "hash": r.hash, "body": r.body})
                else:
                    print(record_line(r))
            if args.json:
                return _summary(EXIT_OK, executionId=execution_id, state=trail.state, records=len(trail.records))
            print(f"state: {trail.state}")
    return EXIT_OK


def _overrides_submit(args: argparse.Namespace) -> int:
    from .dsse import EnvelopeError, parse_envelope

    if not args.targets:
        raise OverrideError("OVR-001", "overrides submit takes one or more resolution files")
    worst, counts = EXIT_OK, Counter()
    with _override_runtime(args) as rt:
        for path in map(Path, args.targets):
            try:
                envelope = parse_envelope(_read_file(path, "OVR-001"))
            except (EnvelopeError, ParmanaError) as exc:
                worst, counts["unusable"] = max(worst, EXIT_UNUSABLE), counts["unusable"] + 1
                reason = exc.reason if isinstance(exc, ParmanaError) else f"{path} is not a DSSE envelope: {exc}"
                line = {"file": str(path), "executionId": None, "accepted": False, "code": "OVR-001", "reason": reason,
                        "state": None, "votes": None, "needed": None}
                _line(line) if args.json else print(f"parmana-lab: [OVR-001@override] {reason}", file=sys.stderr)
                continue
            try:
                status, error = rt.submit_resolution(envelope), None
            except OverrideError as exc:
                error = exc
                status = rt.override_status(_execution_of(envelope))
            counts["accepted" if error is None else "refused"] += 1
            if error is not None:
                worst = max(worst, EXIT_FAILED)
            line = {"file": str(path), "executionId": status.executionId if status else _execution_of(envelope),
                    "accepted": error is None, "code": error.code if error else None,
                    "reason": error.reason if error else "recorded", "state": status.state if status else None,
                    "votes": {"approve": len(status.approvals), "reject": len(status.rejections)} if status else None,
                    "needed": status.needed if status else None}
            if args.json:
                _line(line)
            else:
                print(f"{'ACCEPTED' if error is None else 'REFUSED '} {path}: " + (str(error) if error else
                      f"{line['executionId']} {line['state']} ({line['needed']})"))
    if args.json:
        return _summary(worst, files=len(args.targets), **{k: counts.get(k, 0) for k in ("accepted", "refused", "unusable")})
    return worst


def _execution_of(envelope: dict[str, Any]) -> str | None:
    from .dsse import EnvelopeError, open_envelope

    try:
        eid = open_envelope(envelope, envelope["payloadType"])[0].get("executionId")
    except EnvelopeError:
        return None
    return eid if isinstance(eid, str) else None


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.workspace) / "demo", policies=args.policies, requests=args.requests)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
