"""Where commands write: the one rule for a destination, the lock on a run folder, and files others can read.

**The rule** (:func:`check_destination`, called by every command that writes a folder — ``summon train``,
``quantize``, ``cascade``, ``export`` — before any work starts): a command writes only into a new or empty folder
(``summon train`` also into its own earlier run there, to resume it), never over what is there. A destination is
refused, with a ``ValueError`` that names the path, says what is there and what to do, when it

- is a file, or lies below a file;
- is, holds, or lies inside one of the command's inputs (the predictor being exported or quantized, a cascade's
  stage, a teacher, a data file);
- holds anything else (another predictor, a Hugging Face folder, any file);
- cannot be written (no permission, a read-only file system).

Nothing is deleted or replaced to make room: the user chooses another folder or deletes the old one themselves.
Commands that update a folder in place (``summon calibrate`` writes its calibration into the predictor's manifest,
keeping the previous one) check only that they can write there (:func:`check_writable`), before the pass.

**One writer per run folder** (:func:`exclusive`): ``summon train`` holds an exclusive lock file in its
``output_dir`` (``fcntl.flock``, non-blocking, holding its pid) while it runs, so a second run on the same folder
stops at once. The kernel drops the lock when its process ends, however it ends, so a lock file left by a killed run
is taken over, never waited on.

**Files others can read** (:func:`follow_umask`): ``safetensors`` writes through a private temporary file
(mode ``0o600``); the files it leaves are given the mode every other file gets, ``0o666`` less the umask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".summon.lock"
_SHOWN = 4  # entries named when describing what a folder holds


# --- the rule -------------------------------------------------------------------------------------


def check_destination(path: str | os.PathLike, *, what: str, option: str = "output folder",
                      sources: Mapping[str | os.PathLike, str] | Iterable[str | os.PathLike] = (),
                      not_ours: Callable[[Path], list[str]] | None = None,
                      own: str = "its own run's, to resume it") -> Path:
    """``path`` as a Path when a command may write ``what`` there; else a ``ValueError`` saying why and what to do.

    The rule: a new or empty folder (or, for ``summon train``, its own earlier run, which it resumes); never a
    file, never one of the command's inputs, nor inside one, nor holding one; never a folder that holds anything
    else; and a place this process can write to. Call it before any work starts: it reads, never writes.

    Args:
        path: the destination folder.
        what: what the command writes there, for the message (``"the int8 predictor"``).
        option: how the user names the destination (``"OUT"``, ``"--out"``, ``"output_dir"``).
        sources: the command's local inputs: paths, or a mapping ``path -> description`` (``"the predictor being
            exported"``); URLs and hub ids are the caller's to leave out.
        not_ours: for ``summon train`` (and ``summon eval``'s report): the entries of an existing folder that are
            not the command's own earlier output; none means the folder is its own, which it resumes (replaces).
        own: what the command's own earlier output is, for the message.

    Raises:
        ValueError: naming ``path`` (and the input or entry in the way) when the rule refuses it.
    """
    path = Path(path)
    target = path.resolve()
    items = sources.items() if isinstance(sources, Mapping) else ((s, "an input of this command") for s in sources)
    for source, description in items:
        _refuse_source(path, target, Path(source), description, what, option)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{path} is a link to {os.readlink(path)}, which does not exist; choose another {option}, "
                         "or delete the link yourself first")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; {what} is a folder, and summon never writes over a file. Choose another "
                         f"{option}, or delete the file yourself first")
    if path.is_dir():
        try:
            entries = sorted(p.name for p in path.iterdir())
        except OSError as err:
            raise ValueError(f"{path} cannot be read ({err.strerror}); choose another {option}") from None
        strangers = entries if not_ours is None or not entries else not_ours(path)
        if strangers:
            allowed = "a new or empty folder" + (f" (or {own})" if not_ours is not None else "")
            raise ValueError(f"{path} already holds {describe(path, strangers)}; {what} is written only into "
                             f"{allowed}, never over what is there. Choose another {option}, or delete {path} yourself first")
    check_writable(path if path.is_dir() else _existing_parent(path, what, option), what=what, option=option)
    return path


def _refuse_source(path: Path, target: Path, source: Path, description: str, what: str, option: str) -> None:
    src = source.resolve()
    if not src.exists():
        return
    if target == src:
        raise ValueError(f"{path} is {description}; writing {what} there would replace it. Choose another {option}: "
                         "a new or empty folder apart from the command's inputs")
    if target.is_relative_to(src):
        raise ValueError(f"{path} is inside {description} ({source}); writing {what} there would change that "
                         f"folder. Choose another {option}, outside the command's inputs")
    if src.is_relative_to(target):
        raise ValueError(f"{path} holds {description} ({source}); writing {what} there would change it. Choose "
                         f"another {option}, a new or empty folder apart from the command's inputs")


def _existing_parent(path: Path, what: str, option: str) -> Path:
    """The nearest folder above ``path`` that exists (where it will be created); a file on the way is refused."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{path}: {parent} is a file, so no folder can be made there for {what}. Choose "
                                 f"another {option}")
            return parent
    return Path(path.absolute().anchor)


def check_report_folder(out: str | os.PathLike, *, option: str = "out",
                        sources: Mapping[str | os.PathLike, str] | Iterable[str | os.PathLike] = ()) -> Path:
    """A report's folder (``summon eval --out``, ``summon.evaluate(out=)``) by the one rule
    (:func:`check_destination`): new or empty, or holding an earlier summon report (its ``report.json`` says so,
    :func:`is_summon_report`), which the new report replaces — a report is regenerated, as ``summon train``
    resumes its own run. A folder holding anything else, a file, or one of ``sources`` (the predictors and data
    evaluated) is refused before the evaluation runs.

    Raises:
        ValueError: Naming the path and what is in the way.
    """
    return check_destination(out, what="the evaluation report", option=option, sources=sources,
                             not_ours=_not_a_report, own="one holding an earlier summon report, which it replaces")


REPORT_FORMAT = "summon-report"  # report.json's "format"
_REPORT_KEYS = {"title", "created", "machine", "entries"}  # a report.json written before it had a "format"
_REPORT_MAX_BYTES = 256 * 2**20


def is_summon_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``report.json`` written by summon's evaluation (format ``summon-report``, or an
    earlier one with its keys)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _REPORT_MAX_BYTES:
            return False
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and (payload.get("format") == REPORT_FORMAT or payload.keys() >= _REPORT_KEYS)


def _not_a_report(folder: Path) -> list[str]:
    return [] if is_summon_report(folder / "report.json") else sorted(p.name for p in folder.iterdir())


def check_writable(directory: str | os.PathLike, *, what: str, option: str = "folder",
                   advice: str | None = None) -> Path:
    """``directory`` when this process may create files in it; else a ``ValueError`` naming it, before any work.

    Uses ``os.access`` (no file is created): a read-only mount, an immutable folder or missing permission bits all
    answer no (root passes permission bits, as it passes them when writing). ``advice`` replaces the default "choose
    another {option} ..." ending of the message.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a folder; {what} needs one to write into")
    if not os.access(directory, os.W_OK | os.X_OK):
        advice = advice or f"Choose another {option} you can write to, or fix the folder's permissions first"
        raise ValueError(f"{directory} cannot be written by this user (no write permission, or a read-only file "
                         f"system), so {what} cannot be saved there. {advice}")
    return directory


def describe(path: Path, entries: list[str] | None = None) -> str:
    """What a folder holds (``entries`` of it, all by default), in words: a saved summon artifact, a Hugging Face
    model folder, or the first entries."""
    entries = sorted(p.name for p in path.iterdir()) if entries is None else entries
    kind = ""
    if "manifest.json" in entries:
        kind = _manifest_format(path / "manifest.json")
    elif "config.json" in entries:
        kind = "a Hugging Face model folder"
    shown = ", ".join(entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")
    noun = "entry" if len(entries) == 1 else "entries"
    return f"{kind} ({shown})" if kind else f"{len(entries)} {noun} ({shown})"


def _manifest_format(manifest: Path) -> str:
    try:
        fmt = json.loads(manifest.read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    return f"a saved {fmt!r}" if isinstance(fmt, str) and fmt else "a manifest.json"


# --- one writer per folder ------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, *, option: str = "output_dir") -> Iterator[Path]:
    """Hold ``directory`` for this process while the block runs (the folder is created if need be).

    An exclusive, non-blocking ``flock`` on ``directory/.summon.lock``, which holds this process's pid. Another
    process holding it: a ``ValueError`` at once, "DIR is in use by another summon run (pid N)". A lock file left by
    a process that has ended holds no lock (the kernel released it) and is taken over. On leaving, the lock file is
    removed, and the folder too when this call created it and it is still empty (a run refused early leaves
    nothing behind). Where ``fcntl`` is missing (Windows), the folder is created but not locked.
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows: no advisory lock here
        yield directory
        return
    lock = directory / LOCK_FILE
    fd = _take(lock, directory, option)
    try:
        yield directory
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: a waiting opener re-checks the inode (see _take)
        os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty


def _take(lock: Path, directory: Path, option: str) -> int:
    """An open descriptor of ``lock``, flock-ed exclusively, with this pid written in it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another open of the file: another run
            holder = _pid_in(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise ValueError(f"{directory} is in use by another summon run ({who}); wait for it to finish or choose "
                             f"another {option}") from None
        except OSError as err:  # a file system without locks (some network or FUSE mounts): run, unguarded
            logger.warning("%s: cannot lock %s (%s); a second run on this folder would not be stopped", directory,
                           lock.name, err.strerror or err)
            break
        try:  # a run that just finished may have unlinked the file we opened: lock the one at the path
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _pid_in(fd)
    if previous and previous != os.getpid():
        logger.info("%s: took over the lock of pid %d, which has ended", directory, previous)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --- files others can read ------------------------------------------------------------------------


def umask() -> int:
    """This process's umask (read from ``/proc`` where it can be, so the umask never changes, even briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(*paths: str | os.PathLike) -> None:
    """Give each file (every file under each folder) the mode a newly created file gets: ``0o666`` less the umask.

    For what ``safetensors`` (and ``save_pretrained``, through it) writes: via a private temporary file, so
    ``0o600`` whatever the umask, which a service account reading a shared predictor cannot open.
    """
    mode = 0o666 & ~umask()
    for path in map(Path, paths):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            os.chmod(file, mode)
