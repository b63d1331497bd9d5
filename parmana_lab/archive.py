"""Export archives: write them from an audit DB, open them safely, import them.

An archive is a directory, or the same tree as .zip or .tar.gz:

    manifest.json        signed; lists every other file's sha256, the count and
                         Merkle root of the attestation lines
    attestations.jsonl   one canonical attestation per line, in audit order
    signals.jsonl        {"executionId", "signals"}, one line per attestation line, same
                         order; signals null where the exporter has none (optional file)
    policies/{id}/{version}/policy.json
    keys.json            the exporter's public keys (information only)
    checkpoint           the runtime's signed C2SP checkpoint: of this size for a full export of its log,
                         of the whole log for a filtered one, which then has
    log-proofs.jsonl     one {"index", "proof"} line per attestation line: its inclusion proof in that checkpoint
    overrides.jsonl      every override request, resolution and outcome envelope of the exported executions,
                         one JCS line each, in audit order (present when the export holds any)

Opening never trusts the container: members that would land outside the
target, links, special files and absurd sizes are refused before any byte is
written.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .attestation import pae
from .canonical import canonicalize, quote
from .errors import ParmanaError
from .keys import SigningKey, TrustStore
from .merkle import MerkleBuilder
from .provenance import RuntimeManifest, runtime_hash, runtime_manifest
from .timestamps import Clock, format_ts, system_clock, time_bound

if TYPE_CHECKING:
    from .audit import AuditDB  # exports read one; opening and verifying archives need no DuckDB

ARCHIVE_TYPE = "PARMANA_ARCHIVE_V1"
FORMAT = "parmana-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ATTESTATIONS = "attestations.jsonl"
SIGNALS = "signals.jsonl"
KEYS = "keys.json"
CHECKPOINT = "checkpoint"
LOG_PROOFS = "log-proofs.jsonl"
POLICIES = "policies"
OVERRIDES = "overrides.jsonl"
ArchiveFormat = Literal["dir", "zip", "tar.gz"]

MAX_TOTAL_BYTES = 8 * 1024**3  # uncompressed size of everything in a container
MAX_MEMBERS = 200_000
MAX_RATIO = 200  # uncompressed / compressed: beyond this it is a bomb, not JSON
MAX_LINE_BYTES = 1024 * 1024


class ArchiveError(ParmanaError):
    """The archive cannot be used at all (ARC-xxx): unreadable, unsafe, or incomplete."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, "archive", reason)


class ArchiveManifest(BaseModel):
    """manifest.json; ``signature`` covers PAE(PARMANA_ARCHIVE_V1, JCS(every other member))."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)
    format: Literal["parmana-archive"]
    formatVersion: Literal[1]
    createdAt: str
    runtime: RuntimeManifest
    runtimeHash: str
    count: int
    files: dict[str, str]
    merkleRoot: str
    signerKeyId: str
    signature: str

    def signing_message(self) -> bytes:
        return manifest_message(self.model_dump(mode="json"))


def manifest_message(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return pae(ARCHIVE_TYPE, canonicalize(body))


class ExportResult(BaseModel):
    model_config = ConfigDict(defer_build=True)

    path: str
    format: str
    count: int
    signals: bool
    policies: list[str]
    merkleRoot: str


# -- export -----------------------------------------------------------------------------


def export_archive(
    db: AuditDB,
    out: str | Path,
    *,
    key: SigningKey,
    trust_store: TrustStore,
    format: ArchiveFormat = "dir",
    signals: bool = True,
    since: str | None = None,
    until: str | None = None,
    policy_id: str | None = None,
    policy_version: str | None = None,
    clock: Clock = system_clock,
    extras: Callable[[int, str, list[int | None]], dict[str, bytes]] | None = None,
) -> ExportResult:
    """Write the audit DB's attestations (all, or issuedAt in [since, until) / one policy) as an archive.

    ``extras(count, merkleRoot, log indices of the lines)`` returns more files to include, listed in the
    manifest (the log's ``checkpoint`` and ``log-proofs.jsonl``, ``authority.json``), or raises to refuse
    the export; nothing is left behind either way. Signed policy bundles are written beside their policy.
    """
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ArchiveError("ARC-007", f"{out} already exists; choose a new path (archives are never overwritten)")
    where, params = _filters(since, until, policy_id, policy_version)
    if format == "dir":
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            result = _write_tree(db, out, key, trust_store, signals, where, params, clock, extras)
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for child in out.iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            raise
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
            result = _write_tree(db, Path(tmp), key, trust_store, signals, where, params, clock, extras)
            partial = out.with_name(out.name + ".partial")
            _pack(Path(tmp), partial, format)
            os.replace(partial, out)
    return result.model_copy(update={"path": str(out), "format": format})


def _filters(since, until, policy_id, policy_version) -> tuple[str, list[Any]]:
    clauses, params = [], []
    try:
        since, until = (None if t is None else time_bound(t) for t in (since, until))
    except ValueError as exc:
        raise ArchiveError("ARC-008", f"export time filter: {exc}; nothing was exported") from None
    for name, op, value in (("issuedAt", ">=", since), ("issuedAt", "<", until), ("policyId", "=", policy_id),
                            ("policyVersion", "=", policy_version)):
        if value is not None:
            clauses.append(f"a.{name} {op} ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _write_tree(db, root: Path, key, trust_store, with_signals, where, params, clock, extras=None) -> ExportResult:
    files: dict[str, str] = {}
    merkle = MerkleBuilder()
    referenced: set[tuple[str, str]] = set()
    att_digest, sig_digest = hashlib.sha256(), hashlib.sha256()
    indices: list[int | None] = []
    query = (
        "SELECT a.canonical, a.policyId, a.policyVersion, a.executionId, s.signals, a.log_index FROM attestations a "
        "LEFT JOIN (SELECT executionId, any_value(signals) AS signals FROM signals GROUP BY executionId) s USING (executionId) "
        f"{where} ORDER BY a.seq"
    )
    with open(root / ATTESTATIONS, "wb") as att_fh, open(root / SIGNALS, "wb") if with_signals else nullcontext() as sig_fh:
        for canonical, pid, pver, eid, sig, log_index in _stream(db, query, params):
            indices.append(log_index)
            line = canonical.encode("utf-8")
            merkle.add(line)
            att_digest.update(line + b"\n")
            att_fh.write(line + b"\n")
            referenced.add((pid, pver))
            if with_signals:  # one line per attestation, same order; null when the DB has none
                sig_line = signals_line(eid, sig) + b"\n"
                sig_digest.update(sig_line)
                sig_fh.write(sig_line)
    files[ATTESTATIONS] = att_digest.hexdigest()
    if with_signals:
        files[SIGNALS] = sig_digest.hexdigest()
    for pid, pver in sorted(referenced):
        rows = db.sql("SELECT document FROM policies WHERE policyId = ? AND policyVersion = ?", [pid, pver])
        if rows.empty:
            continue  # verification will report POLICY_MISSING for its attestations
        rel = f"{POLICIES}/{pid}/{pver}/policy.json"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rows.iloc[0, 0].encode("utf-8")
        path.write_bytes(data)
        files[rel] = hashlib.sha256(data).hexdigest()
        for name, text in _bundle_files(db, pid, pver):
            (path.parent / name).write_bytes(text)
            files[f"{POLICIES}/{pid}/{pver}/{name}"] = hashlib.sha256(text).hexdigest()
    overrides = _override_lines(db, where, params)
    if overrides:
        (root / OVERRIDES).write_bytes(overrides)
        files[OVERRIDES] = hashlib.sha256(overrides).hexdigest()
    for name, data in (extras(merkle.count, merkle.root(), indices) if extras is not None else {}).items():
        (root / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    keys = canonicalize(trust_store.model_dump(mode="json"))
    (root / KEYS).write_bytes(keys)
    files[KEYS] = hashlib.sha256(keys).hexdigest()
    manifest = runtime_manifest()
    body: dict[str, Any] = {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "createdAt": format_ts(clock()),
        "runtime": manifest.model_dump(mode="json"),
        "runtimeHash": runtime_hash(manifest),
        "count": merkle.count,
        "files": dict(sorted(files.items())),
        "merkleRoot": merkle.root(),
        "signerKeyId": key.key_id,
    }
    body["signature"] = base64.b64encode(key.sign(manifest_message(body))).decode("ascii")
    (root / MANIFEST).write_bytes(canonicalize(body))
    return ExportResult(
        path=str(root),
        format="dir",
        count=merkle.count,
        signals=with_signals,
        policies=[f"{p}@{v}" for p, v in sorted(referenced)],
        merkleRoot=body["merkleRoot"],
    )


def _override_lines(db, where: str, params: list[Any]) -> bytes:
    """The override records (stored as JCS envelopes) of the exported executions, in audit order."""
    rows = db.sql("SELECT o.envelope FROM override_records o WHERE o.executionId IN "
                  f"(SELECT a.executionId FROM attestations a {where}) ORDER BY o.seq", params)
    return b"".join(e.encode("utf-8") + b"\n" for e in rows["envelope"])


def _bundle_files(db, pid: str, pver: str) -> list[tuple[str, bytes]]:
    """The signed bundle files of a policy version as the runtime verified them (its latest), if any."""
    rows = db.sql("SELECT manifest, signatures FROM bundles WHERE policyId = ? AND policyVersion = ? "
                  "ORDER BY sequence DESC LIMIT 1", [pid, pver])
    if rows.empty:
        return []
    return [("bundle.manifest.json", rows.iloc[0, 0].encode("utf-8")), ("bundle.sig", rows.iloc[0, 1].encode("utf-8"))]


def signals_line(execution_id: str, signals_jcs: str | None) -> bytes:
    """One signals.jsonl line, JCS as it stands: the stored signals are canonical already."""
    return b'{"executionId":%s,"signals":%s}' % (quote(execution_id), signals_jcs.encode("utf-8") if signals_jcs else b"null")


def _stream(db: AuditDB, query: str, params: list[Any], batch: int = 20_000) -> Iterator[tuple]:
    cur = db.connection.cursor()
    try:
        cur.execute(query, params)
        while rows := cur.fetchmany(batch):
            yield from rows
    finally:
        cur.close()


def _pack(tree: Path, target: Path, format: str) -> None:
    names = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    if format == "zip":
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in names:
                zf.write(tree / name, name)
    elif format == "tar.gz":
        with tarfile.open(target, "w:gz") as tf:
            for name in names:
                tf.add(tree / name, arcname=name, recursive=False)
    else:
        raise ArchiveError("ARC-001", f"unknown archive format {format!r} (dir, zip or tar.gz)")


# -- opening -----------------------------------------------------------------------------


def require_attestations(root: Path, source: str | Path) -> Path:
    """The archive's attestations.jsonl, or ARC-005 saying what the folder holds instead."""
    path = root / ATTESTATIONS
    if path.is_file():
        return path
    inner = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    if len(inner) == 1 and (inner[0] / ATTESTATIONS).is_file():
        raise ArchiveError("ARC-005", f"{source} holds one folder, {inner[0].name}/, with the archive inside: it was packed one "
                           f"level too deep. Pack the folder's contents (manifest.json at the top), or pass that folder")
    if not inner:
        raise ArchiveError("ARC-005", f"{source} is empty: no {ATTESTATIONS}, no manifest; is this an export?")
    raise ArchiveError("ARC-005", f"{source} has no {ATTESTATIONS}; is this a parmana archive?")



@contextmanager
def open_archive(path: str | Path, *, max_bytes: int = MAX_TOTAL_BYTES) -> Iterator[Path]:
    """Yield a directory holding the archive's tree; containers are unpacked safely first."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise ArchiveError("ARC-001", f"no archive at {path}")
    with tempfile.TemporaryDirectory(prefix="parmana-archive-") as tmp:
        yield unpack_archive(path, Path(tmp), max_bytes=max_bytes)


def unpack_archive(path: str | Path, target: Path, *, max_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Unpack a .zip or .tar.gz archive safely into ``target`` (an empty folder) and return it; the same checks as
    open_archive (a cluster's workers unpack onto shared storage with it)."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError("ARC-001", f"no archive at {path}")
    if zipfile.is_zipfile(path):
        _unzip(path, target, max_bytes)
    elif _is_tar(path):
        _untar(path, target, max_bytes)
    else:
        raise ArchiveError("ARC-001", f"{path} is neither an archive directory, a .zip nor a .tar.gz")
    return target


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, EOFError, tarfile.TarError):
        return False


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError("ARC-002", f"{archive}: member {name!r} has an absolute path; refusing to unpack outside the target")
    if ".." in pure.parts:
        raise ArchiveError("ARC-002", f"{archive}: member {name!r} climbs out of the archive with '..'; refusing to unpack")
    return pure


def _check_totals(archive: Path, members: int, total: int, max_bytes: int) -> None:
    if members > MAX_MEMBERS:
        raise ArchiveError("ARC-004", f"{archive}: {members} members is more than an archive can hold ({MAX_MEMBERS})")
    if total > max_bytes:
        raise ArchiveError("ARC-004", f"{archive}: unpacks to {total} bytes, over the {max_bytes}-byte limit")
    compressed = archive.stat().st_size
    if total > MAX_RATIO * max(compressed, 1) and total > 1024 * 1024:
        raise ArchiveError(
            "ARC-004", f"{archive}: {compressed} bytes claim to unpack to {total} (over {MAX_RATIO}:1); refusing a decompression bomb"
        )


def _copy_limited(src, dst: Path, declared: int, archive: Path, name: str) -> None:
    written = 0
    with open(dst, "wb") as out:
        while chunk := src.read(1024 * 1024):
            written += len(chunk)
            if written > declared:
                raise ArchiveError("ARC-004", f"{archive}: member {name!r} unpacks to more than its declared {declared} bytes")
            out.write(chunk)


class _Member:
    """One container entry, described the same way for zip and tar."""

    def __init__(self, name: str, size: int, kind: str, open_fn) -> None:
        self.name, self.size, self.kind, self.open = name, size, kind, open_fn  # kind: file, dir, link, special


def _unpack(path: Path, target: Path, members: list[_Member], max_bytes: int) -> None:
    _check_totals(path, len(members), sum(m.size for m in members), max_bytes)
    for member in members:
        pure = _safe_name(member.name, path)
        if member.kind in ("link", "special"):
            what = "a link" if member.kind == "link" else "a special file"
            raise ArchiveError("ARC-003", f"{path}: member {member.name!r} is {what}; archives hold plain files only")
        dest = target.joinpath(*pure.parts)
        if member.kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = member.open()
        if src is None:
            raise ArchiveError("ARC-001", f"{path}: member {member.name!r} cannot be read")
        with src:
            _copy_limited(src, dest, member.size, path, member.name)


def _unzip(path: Path, target: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [
                _Member(i.filename, i.file_size,
                        "link" if stat.S_ISLNK(i.external_attr >> 16) else "dir" if i.is_dir() else "file",
                        lambda i=i: zf.open(i))
                for i in zf.infolist()
            ]
            _unpack(path, target, members, max_bytes)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArchiveError("ARC-001", f"{path}: damaged zip ({exc})") from None


def _untar(path: Path, target: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(path, "r:*") as tf:
            members = [
                _Member(m.name, m.size,
                        "link" if m.issym() or m.islnk() else "dir" if m.isdir() else "file" if m.isfile() else "special",
                        lambda m=m: tf.extractfile(m))
                for m in tf.getmembers()
            ]
            _unpack(path, target, members, max_bytes)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError("ARC-001", f"{path}: damaged tar.gz ({exc})") from None


def iter_line_blocks(path: Path, *, max_line: int = MAX_LINE_BYTES, digest: Any = None, block: int = 4 * 1024 * 1024) -> Iterator[list[bytes]]:
    """The file's lines (without newlines) in lists, read a few MiB at a time.

    Splitting whole blocks runs in C, which matters on million-line archives.
    A line longer than ``max_line`` is refused (ARC-006) without being held
    whole; ``digest`` (a hashlib object) is fed the file's exact bytes.
    """
    with open(path, "rb") as fh:
        carry = b""
        done = 0
        while chunk := fh.read(block):
            if digest is not None:
                digest.update(chunk)
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            if len(carry) > max_line or (lines and max(map(len, lines)) > max_line):
                long = next((i for i, line in enumerate(lines) if len(line) > max_line), len(lines))
                raise ArchiveError("ARC-006", f"{path.name} line {done + long + 1} is longer than {max_line:,} bytes"
                                   f"{' (1 MiB, the most one record may take)' if max_line == MAX_LINE_BYTES else ''}")
            done += len(lines)
            if lines:
                yield lines
        if carry:
            yield [carry]


def iter_lines(path: Path, *, max_line: int = MAX_LINE_BYTES, digest: Any = None) -> Iterator[bytes]:
    """Lines without their newline, one at a time (see iter_line_blocks)."""
    for lines in iter_line_blocks(path, max_line=max_line, digest=digest):
        yield from lines
