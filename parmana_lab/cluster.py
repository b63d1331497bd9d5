"""Bulk verification on a Dask cluster: the same reports as one machine, the work done where the data is.

Workers read the archives themselves (paths on storage every worker and the client
see; a .zip or .tar.gz is first unpacked by a worker onto ``scratch``). Per archive a
worker indexes the lines (the byte range of each aligned block of 2**k lines, the
file hashes, whether signals pair with attestations line by line); then each block
is one task given only (tree, first line, byte ranges) that returns the block's
packed rows and its Merkle subtree. The client combines blocks in line order,
checks that each arrived exactly once, and finishes with the archive-level checks
of one machine. Tasks are pure functions of their arguments, so a task a lost
worker ran twice counts once. An archive whose signals are out of step with its
lines (edited) is verified by one worker whole, the way one machine does it, so
its report is the same too. ``distributed`` is imported only when a client is passed.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .archive import ATTESTATIONS, SIGNALS, ArchiveError, iter_line_blocks, require_attestations, unpack_archive
from .checks import SignalsAligner, check_chunk
from .errors import ParmanaError
from .merkle import MerkleBuilder
from .policy import PolicyStore
from .progress import Progress, progress_bar

if TYPE_CHECKING:
    from .verify import ArchiveReport

BLOCK_LINES = 4_096  # 2**12: ~0.2 s of work per task, far above a task's 2-5 ms of scheduling


class ClusterTaskError(ParmanaError):
    """A task failed on a worker with an error that is not one of the kit's refusals (those come back as themselves)."""


def _guarded(fn, where: str, *args: Any) -> tuple[str, Any]:
    """Run a task body; a failure comes back as data (code, stage, reason) so the client can raise it structured:
    the kit's refusals as one machine words them, anything else naming the archive and lines it happened on."""
    try:
        return "ok", fn(*args)
    except ParmanaError as exc:  # pickles losslessly (ParmanaError.__reduce__): raised again, same class, on the client
        return "error", exc
    except Exception as exc:  # noqa: BLE001 - reported as a structured error by the client, never swallowed
        return "error", ClusterTaskError("ARC-001", "archive", f"{where}: {type(exc).__name__}: {exc}")


def _unwrap(result: tuple[str, Any]) -> Any:
    status, value = result
    if status == "error":
        raise value
    return value


# -- tasks (run on workers) ------------------------------------------------------------------------------------


def unpack_task(path: str, scratch: str) -> tuple[str, Any]:
    """Unpack one archive into its own folder under scratch (shared storage); a directory archive is used as is."""
    def run() -> str:
        if Path(path).is_dir():
            return path
        if not Path(path).is_file():
            raise ArchiveError("ARC-001", f"no archive at {path}")  # as open_archive says it
        stat = Path(path).stat()  # a changed file at the same path gets a fresh folder
        key = f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        target = Path(scratch) / hashlib.sha256(key).hexdigest()[:24]
        done = target.with_name(target.name + ".done")  # beside the tree: inside it would be a file not in the manifest
        if not done.is_file():  # a task run twice (a lost worker, the same archive given twice) finds it done
            staging = target.with_name(f"{target.name}.part-{uuid.uuid4().hex}")  # this run's own: no other touches it
            staging.mkdir(parents=True)
            try:
                unpack_archive(path, staging)
                try:
                    staging.rename(target)  # atomic: the tree appears whole or not at all
                except OSError:
                    if not target.is_dir():
                        raise
                    # another run of this task renamed the same tree first
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            done.write_bytes(b"")
        return str(target)

    return _guarded(run, path)


def index_task(root: str, block: int) -> tuple[str, Any]:
    """Byte offsets of every block of ``block`` lines (attestations and signals), the attestations' sha256, the count,
    the other files' hashes, and whether signals pair with attestations line by line."""
    def run() -> dict[str, Any]:
        from .verify import tree_hashes

        tree = Path(root)
        digest = hashlib.sha256()
        offsets, pos, count = [0], 0, 0
        signals_path = tree / SIGNALS
        sig_pos = [0]
        aligner = signal_offsets = None
        if signals_path.is_file():
            aligner = SignalsAligner(_counted((x for lines in iter_line_blocks(signals_path) for x in lines), sig_pos))
            signal_offsets = [0]
        paired = True
        for lines in iter_line_blocks(tree / ATTESTATIONS, digest=digest):
            for line in lines:
                pos += len(line) + 1
                count += 1
                if aligner is not None and paired:
                    paired = aligner.for_line(line) is not None and aligner.in_step
                if count % block == 0:
                    offsets.append(pos)
                    if signal_offsets is not None:
                        signal_offsets.append(sig_pos[0])
        if count % block or not count:  # the last, shorter block (or none: an empty file)
            offsets.append(pos)
            if signal_offsets is not None:
                signal_offsets.append(sig_pos[0])
        return {"count": count, "sha256": digest.hexdigest(), "offsets": offsets, "signal_offsets": signal_offsets,
                "paired": paired, "hashes": tree_hashes(tree)}

    return _guarded(run, root)


def _counted(lines: Iterator[bytes], pos: list[int]) -> Iterator[bytes]:
    """The lines, keeping in pos[0] the byte offset just past the last one taken."""
    for line in lines:
        pos[0] += len(line) + 1
        yield line


def _read(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    return data[:-1] if data.endswith(b"\n") else data


def block_task(root: str, first_line: int, span: tuple[int, int], signal_span: tuple[int, int] | None,
               ctx_blob: bytes) -> tuple[str, Any]:
    """One aligned block: read its bytes, run the per-line checks, return (first line, packed rows, subtrees, lines)."""
    def run() -> tuple:
        tree = Path(root)
        lines = _read(tree / ATTESTATIONS, *span)
        sigs = _read(tree / SIGNALS, *signal_span) if signal_span is not None else None
        rows, subtrees, n = check_chunk(ctx_blob, (first_line, lines, sigs))
        return first_line, rows, subtrees, n

    return _guarded(run, f"{root} lines {first_line}-")


def whole_task(source: str, root: str, trust_blob: bytes, options: dict[str, Any]) -> tuple[str, Any]:
    """An archive one machine's way, on one worker (its signals are out of step with its lines)."""
    def run() -> ArchiveReport:
        from .verify import verify_tree

        return verify_tree(Path(source), Path(root), pickle.loads(trust_blob), **options)

    return _guarded(run, source)


# -- the client -------------------------------------------------------------------------------------------------


def verify_on_cluster(client: Any, paths: Iterable[str | Path], trust_store: Any, *, scratch: str | Path | None = None,
                      progress: Progress = False, known_runtimes: Iterable[str] | None = None,
                      trust_archive_keys: bool = False, checkpoint: Any = None, authority: Any = None,
                      block_lines: int = BLOCK_LINES, ahead: int = 4) -> Iterator[tuple[str, ArchiveReport | ParmanaError]]:
    """(path, report or refusal) per archive, in the order given.

    Unpacking and indexing are submitted for every archive at once; the blocks of up to ``ahead`` archives are in
    flight together, so workers never wait for one archive's last block while the client combines it.
    """
    import tempfile
    from collections import deque

    paths = [str(p) for p in paths]
    block = 1 << max(block_lines, 1).bit_length() - 1
    scratch_dir = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="parmana-cluster-"))
    roots = [client.submit(unpack_task, p, str(scratch_dir), pure=False) for p in paths]
    indexes = [client.submit(_index_of, root, block, pure=False) for root in roots]
    options = {"known_runtimes": known_runtimes, "trust_archive_keys": trust_archive_keys, "checkpoint": checkpoint,
               "authority": authority}
    in_flight: deque = deque()
    for n, path in enumerate(paths):
        in_flight.append((path, _launch(client, path, roots[n], indexes[n], trust_store, block, options)))
        while len(in_flight) > ahead or (n == len(paths) - 1 and in_flight):
            done_path, launched = in_flight.popleft()
            yield done_path, _land(client, done_path, launched, block, progress, options)


def _launch(client: Any, path: str, root_future: Any, index_future: Any, trust_store: Any, block: int,
            options: dict[str, Any]) -> Any:
    """Start an archive: its tree's trust and manifest here, its blocks (or, out of step, the whole) on the workers."""
    from .verify import begin_tree

    try:
        root = Path(_unwrap(root_future.result()))
        require_attestations(root, path)
        start = begin_tree(Path(path), root, trust_store, options["known_runtimes"], options["trust_archive_keys"])
        index = _unwrap(index_future.result())
    except ParmanaError as exc:
        return exc
    if not index["paired"]:
        return client.submit(whole_task, path, str(root), pickle.dumps(trust_store), options, pure=False)
    offsets = index["offsets"]
    signal_offsets = index["signal_offsets"] if start.ctx.signals_available else None
    ctx_future = client.scatter(pickle.dumps(start.ctx), broadcast=True, hash=False)
    futures = {}
    for b in range(len(offsets) - 1 if index["count"] else 0):
        signal_span = (signal_offsets[b], signal_offsets[b + 1]) if signal_offsets is not None else None
        futures[client.submit(block_task, str(root), b * block + 1, (offsets[b], offsets[b + 1]), signal_span, ctx_future,
                              pure=False)] = b
    return start, index, futures


def _index_of(root_result: tuple[str, Any], block: int) -> tuple[str, Any]:
    if root_result[0] == "error":
        return root_result
    return index_task(root_result[1], block)


def _in_line_order(futures: dict[Any, int], path: Any, block: int, progress: Progress, total: int, verb: str, unit: str,
                   lines_of) -> list:
    """Every block's result, taken as it completes and returned in line order; ARC-001 for a block that comes back
    twice, misplaced (its first line is not where its block starts) or not at all."""
    from distributed import as_completed

    results: dict[int, Any] = {}
    with progress_bar(progress, total, f"{verb} {Path(str(path)).name}", unit) as bar:
        for future in as_completed(list(futures)):
            result, b = _unwrap(future.result()), futures[future]
            if b in results or result[0] != b * block + 1:
                raise ArchiveError("ARC-001", f"{path}: block {b} came back twice or misplaced (line {result[0]})")
            results[b] = result
            bar.update(lines_of(result))
    if sorted(results) != list(range(len(futures))):
        raise ArchiveError("ARC-001", f"{path}: blocks {sorted(set(range(len(futures))) - set(results))} never came back")
    return [results[b] for b in range(len(futures))]


def _land(client: Any, path: str, launched: Any, block: int, progress: Progress, options: dict[str, Any]):
    """Take an archive's results as they come, join them in line order (each block exactly once), finish the report."""
    from .verify import RowTable, finish_tree

    if isinstance(launched, ParmanaError):
        return launched
    try:
        if not isinstance(launched, tuple):  # verified whole on one worker
            return _unwrap(launched.result())
        start, index, futures = launched
        table, merkle = RowTable(), MerkleBuilder()
        for _first, rows, subtrees, _ in _in_line_order(futures, path, block, progress, index["count"], "verify", "att",
                                                         lambda result: result[3]):
            table.add_packed(rows)
            merkle.add_subtrees(subtrees)
        if len(table) != index["count"]:
            raise ArchiveError("ARC-001", f"{path}: {len(table)} lines came back of {index['count']}")
        table.finish()
        return finish_tree(start, table, merkle.root(), index["sha256"], checkpoint=options["checkpoint"],
                           authority=options["authority"], file_hashes=index["hashes"])
    except ParmanaError as exc:
        return exc


def reproduce_task(root: str, first_line: int, span: tuple[int, int], signal_span: tuple[int, int] | None,
                   what_if: dict[str, str], policies: str | None, evaluator: Any, archived: dict,
                   overrides: dict[str, str]) -> tuple[str, Any]:
    """One aligned block of an archive re-run (reproducibility.reproduce_block): (first line, rows)."""
    def run() -> tuple[int, list[dict[str, Any]]]:
        from .reproducibility import reproduce_block

        tree = Path(root)
        lines = _read(tree / ATTESTATIONS, *span).split(b"\n")
        sigs = _read(tree / SIGNALS, *signal_span).split(b"\n") if signal_span is not None else [None] * len(lines)
        return first_line, reproduce_block(first_line, lines, sigs, what_if, Path(policies) if policies else None,
                                           evaluator, archived, overrides)

    return _guarded(run, f"{root} lines {first_line}-")


def reproduce_on_cluster(client: Any, source: Any, what_if: dict[str, str], policies: Path | None, evaluator: Any, *,
                         scratch: str | Path | None = None, progress: Progress = False,
                         block_lines: int = BLOCK_LINES) -> list[dict[str, Any]]:
    """reproduce's rows for an archive, a task per block (or, signals out of step, one worker for the whole)."""
    import tempfile

    from .checks import load_archive_policies
    from .reproducibility import archive_override_states

    block = 1 << max(block_lines, 1).bit_length() - 1
    scratch_dir = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="parmana-cluster-"))
    root = _unwrap(client.submit(unpack_task, str(source), str(scratch_dir), pure=False).result())
    require_attestations(Path(root), source)
    index = _unwrap(client.submit(index_task, root, block, pure=False).result())
    policy_dir = str(policies) if policies is not None else None
    if not index["paired"]:
        return _unwrap(client.submit(_guarded, _reproduce_whole, str(source), root, what_if, policy_dir, evaluator,
                                     pure=False).result())
    # read once here (small files the client sees), shipped once to every worker
    archived, overrides = client.scatter([load_archive_policies(Path(root)), archive_override_states(Path(root))],
                                         broadcast=True, hash=False)
    offsets, signal_offsets = index["offsets"], index["signal_offsets"]
    futures = {client.submit(reproduce_task, root, b * block + 1, (offsets[b], offsets[b + 1]),
                             (signal_offsets[b], signal_offsets[b + 1]) if signal_offsets is not None else None,
                             what_if, policy_dir, evaluator, archived, overrides, pure=False): b
               for b in range(len(offsets) - 1 if index["count"] else 0)}
    return [row for _, rows in _in_line_order(futures, source, block, progress, index["count"], "reproduce", "exec",
                                              lambda result: len(result[1]))
            for row in rows]


def _reproduce_whole(root: str, what_if: dict[str, str], policies: str | None, evaluator: Any) -> list[dict[str, Any]]:
    from .reproducibility import _reproduce_rows

    return _reproduce_rows(Path(root), root, what_if, PolicyStore(policies) if policies else None, evaluator, False)
