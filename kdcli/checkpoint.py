"""Run directories on disk: safetensors weights with metadata, run.json, metrics.jsonl, resume state.

Every write is atomic (temp file in the same folder, then ``os.replace``), so an interrupted run
never leaves half a file; files get the permissions the umask allows, like any other file the user
makes. Only safetensors and JSON are ever read back: no pickle. JSON never holds NaN or Infinity
(they are written as null), so every JSON reader can read a run.

A run directory is claimed before any work (:func:`claim_run_dir`): created exclusively, or reused
only when empty, with ``--overwrite`` (only a directory kd wrote), or with ``--resume``; a lock file
inside it (``.kd.lock``, holding the writer's pid and host) makes a second writer fail at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kdcli import progress
from kdcli.errors import KDError
from kdcli.models import create_model
from kdcli.models.external import ModuleNotAllowed, is_allowed, will_import

try:  # POSIX: an advisory lock the kernel drops when its process dies, even by kill -9
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid-file locking only
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = "1"
STATE_FILE = "state.safetensors"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
SAMPLES_FILE = "samples.png"
LOCK_FILE = ".kd.lock"
#: Test hook: seconds each atomic write pauses between writing its temp file and renaming it into
#: place, after printing ``kd-test: writing NAME`` on stderr, so a test can kill a process inside a write.
PAUSE_ENV = "KD_TEST_PAUSE_WRITES"


def os_error(err: OSError, doing: str, path: str | Path) -> KDError:
    """One line for an OS error a user can fix: what failed, on which path, and the system's reason."""
    reason = err.strerror or type(err).__name__
    return KDError(f"cannot {doing} {path}: {reason}")


def _umask() -> int:
    """The process umask now (read without changing it where /proc allows, so no other thread sees another mask)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the umask (a temp file starts at 0o600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def _pause_for_tests(path: Path) -> None:
    pause = os.environ.get(PAUSE_ENV)
    if pause:
        os.write(2, f"kd-test: writing {path.name}\n".encode())
        time.sleep(float(pause))


def is_temp(name: str) -> bool:
    """A temporary file or folder of an atomic write (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` and a rename: readers see the old file or the new one, never half.

    An OS error (no permission, a full disk, a folder that is a file) is a one-line :class:`KDError`
    naming ``path``; the temp file is removed and the old file stays as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, "write", path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        _pause_for_tests(path)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise os_error(err, "write", path) from None
        if isinstance(err, SafetensorError):  # safetensors reports a full disk as its own error
            raise KDError(f"cannot write {path}: {str(err).splitlines()[0]}") from None
        raise


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text for kd's files: strict (no NaN/Infinity), anything else unknown as its ``str``."""
    return json.dumps(finite_json(obj), indent=indent, default=str, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    text = dumps(obj, indent=2) + "\n"
    _atomic(path, lambda tmp: tmp.write_text(text))


def write_jsonl(path: Path, rows: list[Any]) -> None:
    """Replace ``path`` with one JSON line per row."""
    text = "".join(dumps(row) + "\n" for row in rows)
    _atomic(path, lambda tmp: tmp.write_text(text))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line; the file is rewritten atomically so a crash never leaves a half line."""
    try:
        existing = path.read_text() if path.exists() else ""
    except OSError as err:
        raise os_error(err, "read", path) from None
    line = dumps(obj) + "\n"
    _atomic(path, lambda tmp: tmp.write_text(existing + line))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(clean, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a missing, truncated or foreign file is a one-line KDError."""
    if not path.is_file():
        raise KDError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise KDError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# Models


def model_metadata(model: nn.Module, role: str, dataset: dict[str, Any]) -> dict[str, str]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"model for role {role!r} has no .spec; build it with kdcli.models.create_model")
    return {
        "kd_format": FORMAT_VERSION,
        "role": role,
        "spec": json.dumps(spec.to_dict()),
        "arch": spec.arch,
        "num_classes": str(spec.num_classes),
        "dataset": json.dumps(dataset),
    }


def save_model(path: Path, model: nn.Module, role: str, dataset: dict[str, Any]) -> None:
    save_tensors(path, model.state_dict(), model_metadata(model, role, dataset))


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its safetensors file alone. Returns ``(model in eval mode, info)``."""
    tensors, metadata = load_tensors(path)
    if metadata.get("kd_format") != FORMAT_VERSION or "spec" not in metadata:
        raise KDError(f"{path} is not a kd checkpoint (no kd metadata)")
    spec = json.loads(metadata["spec"])
    module = will_import(spec["arch"])
    if module is not None and is_allowed(module):  # say which code a run makes kd import
        progress.log(f"{path}: importing module {module} for model {spec['arch']}")
    try:
        model = create_model(spec["arch"], spec["in_channels"], spec["image_size"], spec["num_classes"],
                             **spec["kwargs"])
    except ModuleNotAllowed as err:  # a run never allows code by itself: say which file asked for it
        raise ModuleNotAllowed(f"{path}: {err}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise KDError(f"{path} does not match its architecture {spec['arch']!r}: {str(err).splitlines()[0]}") from None
    model.to(device).eval()
    return model, {"spec": spec, "role": metadata.get("role"), "dataset": json.loads(metadata.get("dataset", "{}"))}


# ---------------------------------------------------------------------------------------------
# Nested state (optimiser state dicts, RNG, counters) ↔ safetensors + JSON metadata


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Move every tensor of a nested structure into ``tensors`` and return a JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    save_tensors(path, tensors, {"kd_format": FORMAT_VERSION, "state": json.dumps(skeleton)})


def load_state(path: Path) -> dict[str, Any]:
    tensors, metadata = load_tensors(path)
    if "state" not in metadata:
        raise KDError(f"{path} holds no resumable state")
    return unflatten_state(json.loads(metadata["state"]), tensors)


# ---------------------------------------------------------------------------------------------
# Run directories

#: run.json keys every reader relies on
REQUIRED_KEYS = {"roles": dict, "dataset": dict, "config": dict}


def read_run(path: str | Path) -> dict[str, Any]:
    """Read ``run.json`` of a run directory, with a clear error for anything that is not a run."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise KDError(f"run {str(path)!r} not found")
    if not (run_dir / RUN_FILE).is_file():
        raise KDError(f"{str(path)!r} is not a kd run directory (no {RUN_FILE})")
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
    except OSError as err:
        raise os_error(err, "read", run_dir / RUN_FILE) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KDError(f"{run_dir / RUN_FILE} is corrupt (not JSON)") from None
    if not isinstance(info, dict) or "roles" not in info:
        raise KDError(f"{run_dir / RUN_FILE} is not a kd run description")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise KDError(f"{run_dir / RUN_FILE} lacks {key!r}: it is damaged or not written by kd")
    for role, desc in info["roles"].items():
        if not isinstance(desc, dict) or not isinstance(desc.get("file"), str):
            raise KDError(f"{run_dir / RUN_FILE}: role {role!r} names no weights file; the run is damaged")
    dataset = info["dataset"]
    missing = [k for k in ("name", "num_classes", "channels", "image_size") if k not in dataset]
    if missing:
        raise KDError(f"{run_dir / RUN_FILE}: dataset lacks {', '.join(missing)}; the run is damaged")
    return info


def read_resumable(path: str | Path) -> dict[str, Any]:
    """:func:`read_run` for ``--resume``: a directory a run was killed in before it wrote its ``run.json``
    (only its lock and temp files inside) gets the message that says what to do."""
    run_dir = Path(path)
    names = _list(run_dir) if run_dir.is_dir() else []
    if names and RUN_FILE not in names and _leftovers_only(names):
        raise KDError(f"run {path} stopped before its first checkpoint (it has no {RUN_FILE}): nothing to resume; "
                      f"start it again with --out {path} --overwrite")
    return read_run(path)


def resolve_role(run_ref: str) -> tuple[Path, str, dict[str, Any]]:
    """``RUN`` or ``RUN:role`` → (run dir, role, run.json). Without a role, the run's primary model."""
    path, _, role = run_ref.partition(":") if ":" in run_ref and not Path(run_ref).exists() else (run_ref, "", "")
    info = read_run(path)
    role = role or info.get("primary", "")
    if role not in info["roles"]:
        raise KDError(f"run {path!r} has no model {role!r}; it has: {', '.join(info['roles'])}")
    return Path(path), role, info


def load_run_model(run_ref: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    run_dir, role, info = resolve_role(run_ref)
    model, meta = load_model(run_dir / info["roles"][role]["file"], device)
    meta.update(run=str(run_dir), run_info=info, role=role)
    return model, meta


def known_entries(info: dict[str, Any]) -> set[str]:
    """The names in a run directory that kd wrote, according to its ``run.json``."""
    names = {RUN_FILE, STATE_FILE, METRICS_FILE, CURVES_FILE, SAMPLES_FILE, LOCK_FILE}
    names |= {desc["file"] for desc in info.get("roles", {}).values() if isinstance(desc, dict) and "file" in desc}
    artifacts = info.get("artifacts", {})
    # an artifact may name a path outside the run (a --synthetic set it read): only its own entries count
    names |= {v for v in artifacts.values() if isinstance(v, str) and v and Path(v).name == v} if isinstance(
        artifacts, dict) else set()
    names |= {v["file"] for v in info.values() if isinstance(v, dict) and isinstance(v.get("file"), str)}
    return names


def refuse_cwd(path: Path, what: str) -> None:
    """``what`` (replacing, deleting) must never touch the current directory or one of its parents."""
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise KDError(f"{what} refuses {path}: it is the current directory or one of its parents")


def _leftovers_only(names: list[str]) -> bool:
    """Only what a killed kd process leaves in a directory it had just claimed (its lock, temp files)."""
    return all(name == LOCK_FILE or is_temp(name) for name in names)


def check_replaceable(path: Path) -> None:
    """``--overwrite PATH``: allowed only for a directory kd wrote: a readable ``run.json`` and nothing kd
    did not write inside (or only a killed run's lock and temp files); never the current directory."""
    refuse_cwd(path, "--overwrite")
    names = _list(path)
    if _leftovers_only(names):
        return
    if RUN_FILE not in names:
        raise KDError(f"--overwrite refuses {path}: it is not a kd run directory (no {RUN_FILE}); "
                      f"kd only replaces what it wrote. Choose another --out or empty it yourself")
    try:
        info = read_run(path)
    except KDError as err:
        raise KDError(f"--overwrite refuses {path}: {err}") from None
    known = known_entries(info)
    foreign = sorted(n for n in names if n not in known and not is_temp(n))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise KDError(f"--overwrite refuses {path}: it holds files kd did not write ({shown}); "
                      "move them away or choose another --out")


def _list(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as err:
        raise os_error(err, "read", path) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_temps(run_dir: Path) -> list[str]:
    """Delete the temp files of writes a killed process left behind; returns their names."""
    stale = [n for n in _list(run_dir) if is_temp(n)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            _remove(run_dir / name)
    return stale


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _describe_holder(raw: str) -> str:
    try:
        holder = json.loads(raw)
        return f"pid {int(holder['pid'])} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "another kd process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunLock:
    """The lock file of a run directory, held for as long as this process writes the run.

    On POSIX it is an ``flock`` the kernel releases when the process dies, so a killed run's lock is
    reclaimed by the next writer at once; elsewhere a lock whose pid is dead on this host is reclaimed.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        for _ in range(5):  # a lock file removed between open and flock: try again on the new one
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise os_error(err, "write in", self.path.parent) from None
            if fcntl is None:  # pragma: no cover - exercised on Windows only
                os.close(fd)
                self._acquire_without_flock()
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace")
                os.close(fd)
                raise KDError(f"{self.path.parent} is in use by {_describe_holder(holder)}; wait for it to finish "
                              "or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            text = json.dumps(_holder()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
            self.fd = fd
            return self
        raise KDError(f"{self.path.parent}: could not take its lock (it keeps changing); is another kd writing it?")

    def _acquire_without_flock(self) -> None:  # pragma: no cover - Windows only
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                raw = self.path.read_text(errors="replace")
                try:
                    holder = json.loads(raw)
                    stale = holder["host"] == socket.gethostname() and not _pid_alive(int(holder["pid"]))
                except (ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    raise KDError(f"{self.path.parent} is in use by {_describe_holder(raw)}; wait for it to finish "
                                  "or choose another --out") from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, json.dumps(_holder()).encode())
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before closing: no other process can hold this file's lock meanwhile
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


@dataclass
class Claim:
    """A run directory this process holds.

    Attributes:
        lock: its lock, held until :meth:`release`.
        created: this process made the directory.
        new: a new run starts in it (made, empty, or replacing a kd run); False for ``--resume``, whose
            directory is never cleaned up by :meth:`abandon`.
        replacing: ``--overwrite`` of a kd run whose files :meth:`clear` has yet to remove.
    """

    path: Path
    lock: RunLock
    created: bool
    new: bool = True
    replacing: bool = False

    def clear(self) -> None:
        """``--overwrite``: remove the previous run's files (all checked to be kd's when claimed)."""
        if not self.replacing:
            return
        names = _list(self.path)
        known = known_entries(read_run(self.path)) if RUN_FILE in names else set()
        for name in names:
            if name != LOCK_FILE and (name in known or is_temp(name)):
                try:
                    _remove(self.path / name)
                except OSError as err:
                    raise os_error(err, "remove", self.path / name) from None
        self.replacing = False

    def resumable(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def complete(self) -> bool:
        try:
            return read_run(self.path).get("status") == "complete"
        except KDError:
            return False

    def abandon(self) -> None:
        """A run that saved nothing to resume from: remove what this process wrote (and the directory, if it
        made it and nothing else is inside). Files kd did not write are never touched."""
        if not self.new or self.replacing or self.resumable() or self.complete():
            return  # a resumed run, a run not yet replaced, a run with a checkpoint, a finished run: all kept
        names = _list(self.path) if self.path.is_dir() else []
        known = known_entries(read_run(self.path)) if RUN_FILE in names and _readable(self.path) else set()
        known |= {RUN_FILE, METRICS_FILE, CURVES_FILE, SAMPLES_FILE}
        for name in names:
            if name != LOCK_FILE and (name in known or is_temp(name)):
                with contextlib.suppress(OSError):
                    _remove(self.path / name)
        self.lock.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty

    def release(self) -> None:
        self.lock.release()


def _readable(run_dir: Path) -> bool:
    try:
        read_run(run_dir)
    except KDError:
        return False
    return True


def _mkdir_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise KDError(f"cannot create {path}: {path.parent} is a file, not a directory") from None
    except OSError as err:
        raise os_error(err, "create", path) from None
    if not path.parent.is_dir():
        raise KDError(f"cannot create {path}: {path.parent} is not a directory")


def _make_dir(path: Path) -> bool:
    """Create ``path`` exclusively; False if it already exists."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    except OSError as err:
        raise os_error(err, "create", path) from None
    return True


def claim_run_dir(out: str | None, default_name: str, *, overwrite: bool = False, root: str = "runs") -> Claim:
    """Claim the directory of a new run before any data is loaded; raises a one-line KDError if it cannot be.

    ``--out`` given: a new directory is created; an existing empty one (or one holding only a killed
    run's lock and temp files) is reused; any other needs ``--overwrite`` and must be a kd run
    (:func:`check_replaceable`: its files are removed later, by :meth:`Claim.clear`, once the new run
    is known to start). Without ``--out``: ``root/default_name``, or ``-2``, ``-3``... if taken.
    A directory another process is writing is refused ("in use by pid N on HOST").
    """
    if not out:
        base = Path(root) / default_name
        _mkdir_parent(base)
        path, n = base, 1
        while not _make_dir(path):
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return Claim(path, RunLock(path).acquire(), created=True)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise KDError(f"--out {out} is a file, not a directory; choose another --out")
    if not path.exists():
        _mkdir_parent(path)
        if _make_dir(path):
            return Claim(path, RunLock(path).acquire(), created=True)
    lock = RunLock(path)
    if (path / LOCK_FILE).exists():
        lock.acquire()  # fails at once if a live process holds it
    try:
        names = _list(path)
        replacing = not _leftovers_only(names)
        if replacing and not overwrite:
            raise KDError(f"{out} already exists; pass --overwrite to replace it (only a kd run is replaced) "
                          f"or --resume {out} to continue it")
        if replacing:
            check_replaceable(path)
        if lock.fd is None:
            lock.acquire()
    except BaseException:
        lock.release()
        raise
    claim = Claim(path, lock, created=False, replacing=replacing)
    if not replacing:
        remove_temps(path)
    return claim


def claim_for_resume(run_dir: Path) -> Claim:
    """Lock an existing run to continue it, and delete the temp files a killed writer left."""
    claim = Claim(run_dir, RunLock(run_dir).acquire(), created=False, new=False)
    try:
        remove_temps(run_dir)
    except BaseException:
        claim.release()
        raise
    return claim
