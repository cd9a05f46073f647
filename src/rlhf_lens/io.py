"""Safe file and folder writes, and the checks that go with them.

Files: a temp file in the same folder, then `os.replace`; folders: a staging folder beside the
target, then a rename. A killed process leaves either the old version or the new one, never
half of one. A write that fails for a reason the user can fix (a full disk, a read-only
folder, no permission) becomes one `UserError` line naming the path, and leaves no partial
file. Folders the tool writes carry a marker file (`MARKER`), and a folder without it that
holds anything is never replaced or deleted: it is the user's.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError, first_line

MARKER = ".rlhf-lens"
"""File inside every folder `atomic_dir` writes: the folder is the tool's to replace."""
LOCK_FILE = ".rlhf-lens.lock"
"""File inside a run folder that `run_lock` locks (it holds the holder's pid)."""

WRITE_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "write elsewhere",
    errno.EROFS: "write elsewhere",
    errno.EACCES: "write elsewhere or fix the folder's permissions",
    errno.EPERM: "write elsewhere or fix the folder's permissions",
}
# errno values that mean "this place cannot take the write" (not a bug): reported as one line.
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for the file system",
}


def umask() -> int:
    """The process umask (read from /proc where possible, so no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: str | os.PathLike, e: BaseException, library: bool = False) -> UserError | None:
    """A one-line `UserError` for a failed write to `path`, or None when `e` looks like a bug.

    Converted: an OSError with a "cannot write here" errno (full disk, read-only, permission),
    and a RuntimeError (or, with `library`, any exception of the writing library, such as
    safetensors' SafetensorError) whose message says a write failed: torch and safetensors
    do not keep the errno, so it is read back from the message where it is there.
    """
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code in WRITE_ERRNOS:
        reason = WRITE_ERRNOS[code]
    elif (library or isinstance(e, RuntimeError)) and not isinstance(e, OSError) and _looks_like_write_failure(str(e)):
        code = _errno_in(str(e))
        reason = WRITE_ERRNOS.get(code) or f"the write failed ({' '.join(str(e).split())[:160]})"
    else:
        return None
    hint = WRITE_HINTS.get(code, "check the free space, or write elsewhere")
    return UserError(f"cannot write {path}: {reason}; {hint} (nothing was left half-written)")


def _errno_in(text: str) -> int | None:
    """The errno a library message carries ("os error 28", "No space left on device"), if any."""
    found = re.search(r"(?:os error|errno)\s*(\d+)", text, re.IGNORECASE)
    if found:
        return int(found.group(1))
    for code in WRITE_ERRNOS:
        if os.strerror(code).lower() in text.lower():
            return code
    return None


def _looks_like_write_failure(text: str) -> bool:
    text = text.lower()
    return _errno_in(text) in WRITE_ERRNOS or any(
        s in text for s in ("file write failed", "failed writing", "error while serializing", "i/o error"))


def _remove(path: Path) -> None:
    """Remove a temp file or folder this module made (never follows a link)."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`.

    A full disk, a read-only folder or a permission error becomes a one-line `UserError`
    naming `path`, and the temp file is removed.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        # mkstemp makes owner-only files; give the usual permissions (0666 minus umask) like open() would.
        os.chmod(tmp_path, 0o666 & ~umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as e:
        error = write_error(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        if tmp_path is not None and (tmp_path.exists() or tmp_path.is_symlink()):
            _remove(tmp_path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing, unreadable or non-UTF-8 file is one `UserError` line.

    `what` names the file in the message, e.g. "config file" or "--file".
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or first_line(e)}") from None


def read_json(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None, what: str = "file") -> Any:
    """Parse a UTF-8 JSON file. With `expect` (e.g. dict or list), its top level must be of that type."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise UserError(f"{path}: no such file")
    text = read_text_file(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); regenerate or fix it") from None
    if expect is not None and not isinstance(obj, expect):
        kinds = {"dict": "a JSON object", "list": "a JSON list"}
        want = " or ".join(kinds.get(t.__name__, t.__name__) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise UserError(f"{path}: expected {want} at the top level, found {type(obj).__name__}; regenerate or fix it")
    return obj


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict:
    """Parse a UTF-8 TOML file; a missing, non-UTF-8 or malformed file is one `UserError` line."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    text = read_text_file(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path}: not valid TOML ({e})") from None


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write torch tensors to a safetensors file atomically (a failed write leaves no file, one error line)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors raises its own error types for a failed write
            error = write_error(path, e, library=True)
            if error is None and _disk_full_after(tmp):
                error = write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            if error is None:
                raise
            raise error from None


def _disk_full_after(tmp: Path) -> bool:
    """Whether the folder of a failed write has no room left (a library that lost the errno)."""
    try:
        return shutil.disk_usage(tmp.parent).free == 0
    except OSError:
        return False


# --- folders ------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, known_files: Iterable[str] = ()) -> Path:
    """Refuse, with one line and before any work, an output folder `atomic_dir` must not replace.

    Refused: a symbolic link; the current folder or one of its parents (e.g. `--out .`); a file;
    a non-empty folder without the tool's `MARKER` file (unless every entry is in `known_files`,
    for folders written before the marker existed). Returns the absolute path.
    """
    given = Path(path)
    if given.is_symlink():
        raise UserError(f"{given} is a symbolic link; give a real folder for the output (nothing was changed)")
    target = Path(os.path.abspath(given))
    resolved = given.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or target == target.parent:
        raise UserError(f"{given} is the current folder or contains it; give a new folder for the output, "
                        f"e.g. {given / 'out'} (nothing was changed)")
    if target.exists() and not target.is_dir():
        raise UserError(f"{given} exists and is not a folder; give a new folder for the output (nothing was changed)")
    if target.is_dir() and not (target / MARKER).is_file():
        entries = sorted(p.name for p in target.iterdir())
        if entries and not set(entries) <= set(known_files):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"{given} holds files rlhf-lens did not write ({shown}); give a new or empty folder "
                            "(nothing was changed)")
    return target


@contextmanager
def atomic_dir(path: str | os.PathLike, known_files: Iterable[str] = ()) -> Iterator[Path]:
    """Write a folder atomically: yield a staging folder beside `path`; on success it becomes `path`.

    `path` must pass `check_output_dir` (a folder this tool wrote earlier is replaced; anything
    else that holds files is refused with one line, changing nothing). The staging folder gets
    `MARKER` and the usual permissions (0777 minus umask). If the body fails, the staging folder
    is removed and `path` is untouched. A full disk or a read-only folder becomes one `UserError` line.
    """
    known_files = tuple(known_files)
    target = check_output_dir(path, known_files)
    staging: Path | None = None
    old: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        os.chmod(staging, 0o777 & ~umask())
        yield staging
        (staging / MARKER).write_text("written by rlhf-lens: this folder is replaced when the tool rewrites it\n",
                                      encoding="utf-8")
        check_output_dir(path, known_files)  # nothing changed hands while we worked
        if target.is_dir() and any(target.iterdir()):
            # os.replace only replaces an empty folder: move the old one aside, then delete it
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / target.name)
        os.replace(staging, target)
        staging = None
    except (OSError, RuntimeError) as e:
        error = write_error(path, e)
        if error is None:
            raise
        raise error from None
    finally:
        if staging is not None:
            _remove(staging)
        if old is not None:
            if (old / target.name).exists() and not target.exists():
                os.replace(old / target.name, target)  # the swap failed half way: put the old folder back
            _remove(old)


def remove_output(path: str | os.PathLike) -> None:
    """Delete a file or folder the tool wrote (e.g. a stage's outputs before redoing it).

    A symbolic link is refused with one line rather than followed: whatever it points at
    is not the tool's to delete.
    """
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; rlhf-lens will not delete through it: remove the link "
                        "(or use another --out) and rerun")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> None:
    """Before long work: one `UserError` line if `folder` (or, if it is not there yet, the folder
    it would be created in) cannot take a new file. Probes with a real temp file, so a read-only
    mount, a missing permission and a full disk's inodes are all caught."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} exists and is not a folder; give a folder")
    probe_in = _existing_ancestor(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".rlhf-lens-probe.", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = WRITE_ERRNOS.get(e.errno, e.strerror or type(e).__name__)
        raise UserError(f"cannot write in {what} {folder}: {reason} (in {probe_in}); "
                        "choose another folder or fix its permissions") from None


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str = "output folder") -> None:
    """One `UserError` line if the disk holding `folder` has fewer than `nbytes` free."""
    where = _existing_ancestor(Path(folder))
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # no answer from the file system: let the write itself report
    if free < nbytes:
        raise UserError(f"{what} {folder} needs about {_size(nbytes)} but its disk has {_size(free)} free; "
                        "free some space or choose another folder")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


# --- the run-folder lock ------------------------------------------------------------------------


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an OS-level lock on a run folder (`flock` on RUN_DIR/.rlhf-lens.lock) while working in it.

    A second process asking for the same folder fails at once with a `UserError` naming the
    holder's pid. The kernel drops the lock when its holder dies (even by SIGKILL), so a lock
    left by a killed run is simply taken over. The lock file stays (deleting it would let two
    processes lock two different files); it only ever holds the last holder's pid.
    """
    import fcntl

    run_dir = Path(run_dir)
    lock_path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if lock_path.is_symlink():
            raise UserError(f"{lock_path} is a symbolic link; remove it and rerun")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
        error = write_error(lock_path, e)
        if error is None:
            raise
        raise error from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise UserError(f"{run_dir} is in use by another rlhf-lens process (pid {holder}); wait for it to "
                            "finish or stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def cache_dir() -> Path:
    """User cache for fetched data and built tokenizers (`RLHF_LENS_CACHE` overrides)."""
    root = os.environ.get("RLHF_LENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlhf-lens")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
