"""libbpf (Debian's ``libbpf1``) through :mod:`ctypes`: load the TURN offload object, attach it
at TC ingress, and read and write its maps.

Why libbpf and not something else: it is the kernel's own loader library, maintained next to
the kernel by the BPF maintainers, shipped by every distribution, and does everything needed
here in one place: ELF loading with BTF-defined maps, TC attachment over netlink
(``bpf_tc_hook_create``/``bpf_tc_attach``, so no pyroute2 and no ``tc`` subprocess), and the
map syscalls. bcc compiles at run time and needs kernel headers (this kernel ships none);
pyroute2 can attach a program but not load an ELF object with BTF maps. The binding is
deliberately thin: a handful of functions with fixed signatures, and structs packed with
:mod:`struct` to match the C source (``bpf/turn_offload.bpf.c``).

Everything raises :class:`OffloadUnavailable` with the reason (missing library or object, no
permission, the verifier's refusal), so ``offload = "auto"`` can log it once and go on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import sys
from collections import deque
from pathlib import Path

logger = logging.getLogger("icerelay.turn.offload")

#: The object ``make bpf`` builds next to its source.
OBJECT = Path(__file__).with_name("bpf") / "turn_offload.bpf.o"
PROGRAM = "turn_offload"
MAPS = ("c2p", "p2c", "stats", "alive")

_BPF_TC_INGRESS = 1
_BPF_ANY = 0
#: enum bpf_attach_type's BPF_TCX_INGRESS (Linux 6.6): TC ingress through a BPF link, which
#: the kernel detaches by itself when its last descriptor closes, so a server killed without
#: a chance to clean up leaves nothing attached.
_BPF_TCX_INGRESS = 46


class OffloadUnavailable(Exception):
    """The kernel offload cannot be used here; the message says why."""


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
        ("_end", ctypes.c_size_t * 0),
    ]


class _TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("_end", ctypes.c_size_t * 0),
    ]


_lib: ctypes.CDLL | None = None
#: libbpf's latest messages (the verifier's log on a refused load ends up here), so that a
#: failure can say why; libbpf would otherwise print them all to stderr, including harmless
#: ones (the clsact qdisc already exists).
_messages: deque[str] = deque(maxlen=12)
_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_printer: object = None


def _install_printer(lib: ctypes.CDLL) -> None:
    """Route libbpf's messages to the log (DEBUG) and :data:`_messages`. The va_list is
    formatted by libc's vsnprintf (on x86-64 and arm64 Linux a va_list travels as a pointer)."""
    global _printer
    libc = ctypes.CDLL(None)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    buffer = ctypes.create_string_buffer(1024)

    def printer(level: int, fmt: bytes | None, args: int | None) -> int:
        if fmt is None:
            return 0
        vsnprintf(buffer, len(buffer), fmt, args)
        text = buffer.value.decode(errors="replace").rstrip()
        if text:
            _messages.append(text)
            logger.debug("%s", text)
        return 0

    _printer = _PRINT(printer)  # kept alive: libbpf holds the pointer
    lib.libbpf_set_print.restype = ctypes.c_void_p
    lib.libbpf_set_print.argtypes = [_PRINT]
    lib.libbpf_set_print(_printer)


def recent_messages() -> str:
    """libbpf's last messages, one line (for error reports)."""
    return " | ".join(_messages)


def libbpf() -> ctypes.CDLL:
    """The loaded libbpf with the signatures used here (loaded once)."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as error:
        raise OffloadUnavailable(f"libbpf not found ({error}); install libbpf1") from error
    vp, cp, i, u64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint64
    signatures: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_tc_hook_create": (i, [vp]),
        "bpf_tc_attach": (i, [vp, vp]),
        "bpf_tc_detach": (i, [vp, vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, u64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_link_create": (i, [i, i, i, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, vp, vp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, vp]),
    }
    for function, (restype, argtypes) in signatures.items():
        entry = getattr(lib, function)
        entry.restype = restype
        entry.argtypes = argtypes
    _install_printer(lib)
    _lib = lib
    return lib


def _failure(what: str, code: int) -> OffloadUnavailable:
    code = abs(code) or ctypes.get_errno()
    name = errno.errorcode.get(code, str(code))
    return OffloadUnavailable(f"{what}: {os.strerror(code)} ({name})")


class Maps:
    """The offload's maps by file descriptor: enough for a worker process that got the
    descriptors from the process that loaded the program."""

    def __init__(self, fds: dict[str, int]) -> None:
        self.fds = fds
        self._lib = libbpf()

    def update(self, name: str, key: bytes, value: bytes) -> None:
        """Insert or replace; raises OSError (e.g. ENOSPC when the map is full)."""
        code = self._lib.bpf_map_update_elem(self.fds[name], key, value, _BPF_ANY)
        if code:
            error = -code if code < 0 else ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    def delete(self, name: str, key: bytes) -> bool:
        """Remove *key*; False if it was not there."""
        return int(self._lib.bpf_map_delete_elem(self.fds[name], key)) == 0

    def lookup(self, name: str, key: bytes, size: int) -> bytes | None:
        """The value of *key* (``size`` bytes), or None."""
        buffer = ctypes.create_string_buffer(size)
        if self._lib.bpf_map_lookup_elem(self.fds[name], key, buffer):
            return None
        return buffer.raw

    def lookup_range(self, name: str, first: int, count: int, size: int) -> list[bytes] | None:
        """Values of keys *first* .. *first + count - 1* of an array map (``size`` bytes each)
        in one system call; None if the kernel refuses (the caller reads one by one)."""
        start = ctypes.c_uint32(first - 1)
        following = ctypes.c_uint32(0)
        keys = (ctypes.c_uint32 * count)()
        values = ctypes.create_string_buffer(count * size)
        wanted = ctypes.c_uint32(count)
        code = self._lib.bpf_map_lookup_batch(
            self.fds[name],
            ctypes.byref(start) if first > 0 else None,
            ctypes.byref(following),
            keys,
            values,
            ctypes.byref(wanted),
            None,
        )
        if code and abs(code) != errno.ENOENT:  # ENOENT: the map's end was reached
            return None
        if wanted.value != count or (count and keys[0] != first):
            return None
        raw = values.raw
        return [raw[index * size : (index + 1) * size] for index in range(count)]

    def keys(self, name: str, size: int) -> list[bytes]:
        """Every key of a hash map (for tests and diagnostics: one syscall per key)."""
        found: list[bytes] = []
        current: bytes | None = None
        following = ctypes.create_string_buffer(size)
        while self._lib.bpf_map_get_next_key(self.fds[name], current, following) == 0:
            current = following.raw
            found.append(current)
        return found


class LoadedProgram:
    """The object loaded into the kernel (its program and maps), attached to interfaces with
    :meth:`attach` and detached with :meth:`close`, which also unloads it."""

    def __init__(self, path: Path = OBJECT) -> None:
        lib = libbpf()
        if not path.exists():
            raise OffloadUnavailable(f"{path} not built (run `make bpf`; needs clang, libbpf-dev)")
        self._lib = lib
        self._object: int | None = lib.bpf_object__open_file(str(path).encode(), None)
        if not self._object:
            self._object = None
            raise _failure(f"cannot open {path}", 0)
        self._attached: list[tuple[_TcHook, _TcOpts]] = []
        #: (ifindex, link descriptor) of tcx attachments.
        self._links: list[tuple[int, int]] = []
        try:
            _messages.clear()
            code = lib.bpf_object__load(self._object)
            if code:
                error = _failure("the kernel refused the program (root and BPF needed)", code)
                raise OffloadUnavailable(f"{error}; libbpf: {recent_messages()[-600:]}")
            program = lib.bpf_object__find_program_by_name(self._object, PROGRAM.encode())
            if not program:
                raise OffloadUnavailable(f"no program {PROGRAM} in {path}")
            self.program_fd = int(lib.bpf_program__fd(program))
            fds: dict[str, int] = {}
            for name in MAPS:
                handle = lib.bpf_object__find_map_by_name(self._object, name.encode())
                if not handle:
                    raise OffloadUnavailable(f"no map {name} in {path}")
                fds[name] = int(lib.bpf_map__fd(handle))
            self.maps = Maps(fds)
        except BaseException:
            self.close()
            raise

    @property
    def interfaces(self) -> list[int]:
        """Interface indexes the program is attached to."""
        return [ifindex for ifindex, _fd in self._links] + [
            hook.ifindex for hook, _opts in self._attached
        ]

    @property
    def program_id(self) -> int:
        """The kernel's id of the loaded program (``bpftool prog show id N``)."""
        info = ctypes.create_string_buffer(256)
        size = ctypes.c_uint32(len(info))
        if self._lib.bpf_obj_get_info_by_fd(self.program_fd, info, ctypes.byref(size)):
            return 0
        return int.from_bytes(info.raw[4:8], sys.byteorder)  # struct bpf_prog_info.id

    @property
    def filters(self) -> list[tuple[int, int, int, int]]:
        """(ifindex, program id, handle, priority) of each TC filter made (as ``tc filter
        show dev IF ingress`` lists them: ``pref PRIORITY ... handle 0xHANDLE ... id ID``)."""
        return [
            (hook.ifindex, int(opts.prog_id), int(opts.handle), int(opts.priority))
            for hook, opts in self._attached
        ]

    def attach(self, ifindex: int, *, link: bool = True) -> None:
        """Attach at TC ingress of *ifindex*: a tcx link where the kernel has them (6.6+),
        else a cls_bpf filter on the clsact qdisc (made if missing and left in place
        afterwards: other programs may hang on it; the kernel picks a free priority, so
        several servers, or tests, can be attached to one interface at once)."""
        lib = self._lib
        if link:
            descriptor = lib.bpf_link_create(self.program_fd, ifindex, _BPF_TCX_INGRESS, None)
            if descriptor >= 0:
                self._links.append((ifindex, int(descriptor)))
                return
        hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=_BPF_TC_INGRESS)
        code = lib.bpf_tc_hook_create(ctypes.byref(hook))
        if code and code != -errno.EEXIST:
            raise _failure(f"cannot add the clsact qdisc to interface {ifindex}", code)
        opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=self.program_fd)
        code = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
        if code:
            raise _failure(f"cannot attach to interface {ifindex}", code)
        self._attached.append((hook, opts))

    def detach_all(self) -> list[str]:
        """Detach from every interface; the errors met (the interface may be gone)."""
        errors: list[str] = []
        while self._links:
            _ifindex, link = self._links.pop()
            os.close(link)
        while self._attached:
            hook, opts = self._attached.pop()
            # bpf_tc_detach identifies the filter by handle and priority only.
            query = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=opts.handle, priority=opts.priority)
            code = self._lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(query))
            if code:
                errors.append(f"interface {hook.ifindex}: {os.strerror(abs(code))}")
        return errors

    def close(self) -> list[str]:
        """Detach everything and unload (the maps go when no one holds them any more)."""
        errors = self.detach_all()
        if self._object is not None:
            self._lib.bpf_object__close(self._object)
            self._object = None
        return errors
