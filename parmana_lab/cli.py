"""``parmana-lab``: a thin shell over the public API (no logic of its own)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .canonical import canonicalize, parse_json
from .demo import describe, run_demo
from .errors import CanonicalizationError, ParmanaError, RequestError
from .keys import Keyring
from .policy import PolicyStore
from .provenance import runtime_info
from .runtime import Runtime
from .workspace import DEFAULT_WORKSPACE, Workspace, default_policy_dir

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
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
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute request files (one request or a list per file)")
    run.add_argument("files", nargs="+", type=Path)
    run.add_argument("--policies", type=Path, help="policy folder (default ./sample_policies or the bundled samples)")
    run.add_argument("--json", action="store_true", help="one JSON line per request, printed once committed")
    run.set_defaults(func=cmd_run)

    keys = sub.add_parser("keys", help="show the trust store; `keys rotate` makes a new signing key")
    keys.add_argument("action", nargs="?", choices=["show", "rotate", "revoke"], default="show")
    keys.add_argument("key_id", nargs="?", help="with revoke: the keyId")
    keys.add_argument("--at", help="with revoke: revoked from this UTC time (default now)")
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(func=cmd_keys)

    rt = sub.add_parser("runtime", help="runtime manifest and provenance hashes")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=cmd_runtime)

    pol = sub.add_parser("policies", help="policies found, with bundleHash and validation errors")
    pol.add_argument("--policies", type=Path)
    pol.add_argument("--json", action="store_true")
    pol.set_defaults(func=cmd_policies)

    demo = sub.add_parser("demo", help="run every sample request on a fresh demo workspace")
    demo.add_argument("--policies", type=Path)
    demo.add_argument("--requests", type=Path)
    demo.set_defaults(func=cmd_demo)
    return p


def _line(obj: Any) -> None:
    sys.stdout.write(canonicalize(obj).decode("utf-8") + "\n")
    sys.stdout.flush()


def _requests(files: Sequence[Path]) -> Iterator[Any]:
    """Each request of each file in order; an unusable file yields its refusal in place."""
    for path in files:
        try:
            data = parse_json(path.read_bytes())
        except OSError as exc:
            yield RequestError("VAL-001", "validate", f"cannot read {path}: {exc.strerror}")
            continue
        except CanonicalizationError as exc:
            yield RequestError("VAL-001", "validate", f"{path}: {exc.reason}")
            continue
        yield from data if isinstance(data, list) else [data]


def cmd_run(args: argparse.Namespace) -> int:
    refused = False
    with Runtime(args.workspace, policies=args.policies) as rt:
        for result in _executed(rt, _requests(args.files)):
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
    return EXIT_FAILED if refused else EXIT_OK


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
    ring = Keyring(Workspace(args.workspace).keys_dir)
    if args.action == "rotate":
        key = ring.rotate()
        print(f"new signing key {key.key_id}; earlier keys stay trusted for what they signed")
        return EXIT_OK
    if args.action == "revoke":
        if not args.key_id:
            print("parmana-lab: keys revoke needs a keyId", file=sys.stderr)
            return EXIT_UNUSABLE
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


def cmd_policies(args: argparse.Namespace) -> int:
    store = PolicyStore(args.policies or default_policy_dir())
    bad = False
    for item in store.scan():
        if isinstance(item, ParmanaError):
            bad = True
            if args.json:
                _line({"error": item.to_dict()})
            else:
                print(f"ERROR  {item}")
            continue
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
    return EXIT_FAILED if bad else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.workspace) / "demo", policies=args.policies, requests=args.requests)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
