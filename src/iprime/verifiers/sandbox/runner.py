"""The program that runs *inside* the sandbox (stdlib only; executed as a script).

:mod:`iprime.verifiers.sandbox.host` starts it as ``python -I runner.py`` with its
job (JSON) on stdin: as real root inside fresh network, PID, mount, IPC and UTS
namespaces (isolation ``"namespaces"``), as root of a fresh user namespace that maps
only the caller's uid (``"userns"``, for non-root users), or as a plain child process
(``"rlimits"``). This process, the *runner*, never executes a line of the candidate's
code. It

1. builds a new root file system in its mount namespace (``"namespaces"``/``"userns"``):
   a read-only tmpfs holding read-only bind mounts of ``/usr``, ``/etc``, the ``/lib``
   directories and the Python installation, a minimal ``/dev``, a fresh ``/proc``, and
   one size- and inode-limited tmpfs for ``/tmp`` (also ``/var/tmp`` and ``/dev/shm``),
   the only place the code can write. It then ``pivot_root``s into it and detaches the
   old root: home directories, the project checkout (and its data), ``/run`` and
   ``/var/run`` (daemon sockets), ``/sys`` and everything else are simply not there.
2. runs the *solution phase*: a forked child (``S``) drops its privileges (see
   :func:`confine`), loads the setup and the candidate's code, and evaluates the call
   expressions of host-judged tests (or runs the program once per stdin input), each in
   a forked child of its own with a timeout. It writes the resulting values (plain data
   only, see :func:`encode_plain`) or program outputs to the *values* pipe, which goes
   straight to the host. The host, which alone knows the expected values, compares.
3. runs each *judged* test (an assert that fits no pattern the host can judge) as a
   pair of fresh processes: a judge ``J`` that executes only the setup and the test's
   code, and a solution process that loads the candidate's code and answers the judge's
   calls over a pipe with plain data or opaque handles (:class:`_Remote`). The judge's
   verdict reaches the runner on a pipe only the judge holds, and counts only if the
   judge also exited with status 0. The runner forwards verdicts on the *report* pipe,
   which no other process holds.

``S`` and ``J`` run under different uids (``"namespaces"``), or, in a user namespace,
with every capability dropped, the judge non-dumpable and the solution in a PID
namespace of its own, from which the judge cannot even be addressed. Both get a fresh
session keyring, no new privileges, resource limits and a seccomp filter that refuses
new user namespaces, keyrings, ptrace, System V IPC, socket families other than
``AF_UNIX``/``AF_INET``/``AF_INET6`` and a few other kernel interfaces.
"""

from __future__ import annotations

import ast
import builtins
import collections
import ctypes
import ctypes.util
import importlib
import json
import os
import select
import signal
import struct
import sys
import time
import traceback
import types

# ----------------------------------------------------------------------------- plain data
#
# The one format in which values cross a process boundary (sandbox -> host, solution ->
# judge): JSON where every container is a two-element list ``[tag, payload]`` and every
# scalar is itself, so nothing is ambiguous. Only exact builtin types are accepted: an
# object of any other class (a custom ``__eq__``, a ``str`` subclass...) is not plain
# data, so its behaviour never reaches the side that compares. The receiving side builds
# fresh builtin objects from the JSON and never runs code the sender chose.

PLAIN_MAX_DEPTH = 100
PLAIN_MAX_NODES = 1_000_000
_INT_JSON_BITS = 12_000  # about 3,600 decimal digits: below int's str-conversion limit (4,300)


class PlainDataError(ValueError):
    """A value that is not plain data, or an encoding that is not valid."""


def _dict_types() -> tuple:
    return (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)


def encode_plain(value, handle=None):
    """``value`` as JSON-ready plain data; ``handle(obj) -> int`` names what is not (else it raises).

    Accepted: None, bool, int, float, complex, str, bytes, and list, tuple, dict (also
    OrderedDict, defaultdict, Counter, which compare like dicts), set and frozenset of
    those; numpy scalars as their Python value. Nothing of the value's own class runs:
    containers are read through the builtin types' methods.
    """
    dict_types = _dict_types()
    nodes = [0]

    def enc(v, depth):
        nodes[0] += 1
        if nodes[0] > PLAIN_MAX_NODES:
            raise PlainDataError(f"value has more than {PLAIN_MAX_NODES} parts")
        if depth > PLAIN_MAX_DEPTH:
            raise PlainDataError(f"value is nested more than {PLAIN_MAX_DEPTH} deep")
        t = type(v)
        if v is None or t is bool or t is str or t is float:
            return v
        if t is int:
            return v if v.bit_length() <= _INT_JSON_BITS else ["x", hex(v)]
        if t is list:
            return ["l", [enc(x, depth + 1) for x in list.copy(v)]]
        if t is tuple:
            return ["t", [enc(x, depth + 1) for x in v]]
        if t in dict_types:
            return ["d", [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in list(dict.items(v))]]
        if t is set:
            return ["s", [enc(x, depth + 1) for x in set.copy(v)]]
        if t is frozenset:
            return ["f", [enc(x, depth + 1) for x in v]]
        if t is complex:
            return ["c", [v.real, v.imag]]
        if t is bytes:
            return ["y", v.hex()]
        numpy = sys.modules.get("numpy")
        if numpy is not None and t.__module__ == "numpy" and isinstance(v, numpy.generic):
            item = v.item()  # numpy's own scalar types: their Python value
            if type(item) in (bool, int, float, complex, str, bytes):
                return enc(item, depth)
        if handle is not None:
            return ["h", int(handle(v))]
        raise PlainDataError(f"a {t.__module__}.{t.__qualname__} is not plain data")

    return enc(value, 0)


def decode_plain(data, handle=None):
    """Inverse of :func:`encode_plain`; ``handle(int)`` builds the object for a handle."""
    nodes = [0]

    def dec(d, depth):
        nodes[0] += 1
        if nodes[0] > PLAIN_MAX_NODES or depth > PLAIN_MAX_DEPTH:
            raise PlainDataError("encoded value too large or too deep")
        t = type(d)
        if d is None or t is bool or t is int or t is float or t is str:
            return d
        if t is not list or len(d) != 2 or type(d[0]) is not str:
            raise PlainDataError(f"not an encoded value: {t.__name__}")
        tag, payload = d
        try:
            if tag in ("l", "t", "s", "f", "d") and type(payload) is not list:
                raise PlainDataError(f"bad payload for {tag!r}")
            if tag == "l":
                return [dec(x, depth + 1) for x in payload]
            if tag == "t":
                return tuple(dec(x, depth + 1) for x in payload)
            if tag == "s":
                return {dec(x, depth + 1) for x in payload}
            if tag == "f":
                return frozenset(dec(x, depth + 1) for x in payload)
            if tag == "d":
                out = {}
                for pair in payload:
                    if type(pair) is not list or len(pair) != 2:
                        raise PlainDataError("bad dict item")
                    out[dec(pair[0], depth + 1)] = dec(pair[1], depth + 1)
                return out
            if tag == "x" and type(payload) is str:
                return int(payload, 16)
            if tag == "c" and type(payload) is list and len(payload) == 2:
                return complex(float(payload[0]), float(payload[1]))
            if tag == "y" and type(payload) is str:
                return bytes.fromhex(payload)
            if tag == "h" and type(payload) is int and handle is not None:
                return handle(payload)
        except (TypeError, ValueError, OverflowError) as exc:  # an unhashable key, bad hex, a bad float
            if isinstance(exc, PlainDataError):
                raise
            raise PlainDataError(str(exc)[:200]) from None
        raise PlainDataError(f"bad encoded value with tag {tag!r}")

    return dec(data, 0)


def dumps_plain(value, handle=None) -> str:
    return json.dumps(encode_plain(value, handle), separators=(",", ":"))


def loads_plain(text, handle=None):
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlainDataError(f"not valid JSON: {str(exc)[:200]}") from None
    return decode_plain(data, handle)


# ----------------------------------------------------------------------------- the kernel


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _LIBC


_LIBC = None


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_CLONE_NEWUSER, _CLONE_NEWPID = 0x10000000, 0x20000000

# Syscall numbers the filter and the helpers need, per architecture.
_ARCH = {
    "x86_64": {
        "audit": 0xC000003E,
        "pivot_root": 155,
        "clone": 56,
        "unshare": 272,
        "keyctl": 250,
        "deny": {
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "perf_event_open": 298,
            "bpf": 321,
            "userfaultfd": 323,
            "memfd_create": 319,
            "io_uring_setup": 425,
            "memfd_secret": 447,
        },
        # System V IPC and POSIX message queues (arch/x86/entry/syscalls/syscall_64.tbl).
        "ipc": {
            "shmget": 29,
            "shmat": 30,
            "shmctl": 31,
            "shmdt": 67,
            "semget": 64,
            "semop": 65,
            "semctl": 66,
            "semtimedop": 220,
            "msgget": 68,
            "msgsnd": 69,
            "msgrcv": 70,
            "msgctl": 71,
            "mq_open": 240,
            "mq_unlink": 241,
            "mq_timedsend": 242,
            "mq_timedreceive": 243,
            "mq_notify": 244,
            "mq_getsetattr": 245,
        },
        "socket": 41,
        "socketpair": 53,
        "x32_bit": 0x40000000,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "pivot_root": 41,
        "clone": 220,
        "unshare": 97,
        "keyctl": 219,
        "deny": {
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "perf_event_open": 241,
            "bpf": 280,
            "userfaultfd": 282,
            "memfd_create": 279,
            "io_uring_setup": 425,
            "memfd_secret": 447,
        },
        # System V IPC and POSIX message queues (include/uapi/asm-generic/unistd.h).
        "ipc": {
            "mq_open": 180,
            "mq_unlink": 181,
            "mq_timedsend": 182,
            "mq_timedreceive": 183,
            "mq_notify": 184,
            "mq_getsetattr": 185,
            "msgget": 186,
            "msgctl": 187,
            "msgrcv": 188,
            "msgsnd": 189,
            "semget": 190,
            "semctl": 191,
            "semtimedop": 192,
            "semop": 193,
            "shmget": 194,
            "shmctl": 195,
            "shmat": 196,
            "shmdt": 197,
        },
        "socket": 198,
        "socketpair": 199,
        "x32_bit": None,
    },
}
_CLONE3 = 435  # the same number everywhere; refused with ENOSYS so that libc falls back to clone
# The socket families a sandboxed program may open (``socket``/``socketpair``); every other
# family gets EAFNOSUPPORT, as from a kernel built without it. AF_UNIX (1): socketpair() is
# how multiprocessing's Pipe and asyncio's event loop talk, and a path socket reaches only
# the sandbox's own /tmp (abstract names are per network namespace). AF_INET (2) and
# AF_INET6 (10): programs and libraries create them (a local server in a test, a library
# probing for IPv6); they live in the sample's network namespace, whose only interface is
# a loopback that is down. Not AF_VSOCK (40), which no network namespace confines and which
# reaches the hypervisor; not AF_NETLINK or AF_PACKET (the kernel's routing, audit,
# netfilter and uevent interfaces, raw frames), nor any of the ~40 others (AF_ALG, AF_XDP,
# AF_BLUETOOTH, AF_RDS, AF_TIPC...): kernel attack surface and module autoloading that no
# solution needs.
_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
_MOUNT_SETATTR = 442
_ARCH_INFO = _ARCH.get(os.uname().machine)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = _libc()
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} on {target}")


def _make_readonly(path: str) -> None:
    """Make the mount at ``path`` and every mount below it read-only, nosuid and nodev."""
    libc = _libc()

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    attr = MountAttr(0x1 | 0x2 | 0x4, 0, 0, 0)  # MOUNT_ATTR_RDONLY | NOSUID | NODEV
    rc = libc.syscall(_MOUNT_SETATTR, -100, path.encode(), 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc == 0:
        return
    if ctypes.get_errno() != 38:  # anything but ENOSYS (kernels before 5.12) is an error
        _check(-1, f"mount_setattr {path}")
    # Old kernels: remount each mount at or below path, keeping the flags a user
    # namespace does not let us clear.
    mounts = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path.rstrip("/") + "/"):
                mounts.append(point)
    for point in mounts:
        flags = os.statvfs(point).f_flag & (_MS_NOEXEC | 1024 | 2048 | 4096)  # noexec, atime flags
        _mount(None, point, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | flags)


def _bind(source: str, target: str, *, readonly: bool = True) -> None:
    _mount(source, target, None, _MS_BIND | _MS_REC)
    if readonly:
        _make_readonly(target)


def _pivot_root(new_root: str) -> None:
    libc = _libc()
    os.chdir(new_root)
    if _ARCH_INFO is not None:
        _check(libc.syscall(_ARCH_INFO["pivot_root"], b".", b"."), "pivot_root")
    else:
        _check(libc.pivot_root(b".", b"."), "pivot_root")
    # The old root now sits on top of the new one at "/": detach it.
    _check(libc.umount2(b".", _MNT_DETACH), "umount old root")
    os.chdir("/")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    libc = _libc()
    return _check(
        libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)
        ),
        f"prctl({option})",
    )


_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
_PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_CAP_AMBIENT = 24, 28, 47


def _drop_bounding_set() -> None:
    """Empty the capability bounding set: no execve can grant a capability again."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
    except OSError:
        last = 63
    for cap in range(last + 1):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError:
            pass  # caps the kernel does not know


def _drop_capabilities() -> None:
    """Give up every capability for good (root of a user namespace becomes a plain process)."""
    libc = _libc()
    # NOROOT, NO_SETUID_FIXUP and KEEP_CAPS, each locked: uid 0 gains nothing at execve.
    _prctl(_PR_SET_SECUREBITS, 0x01 | 0x02 | 0x04 | 0x08 | 0x20)
    _drop_bounding_set()
    try:
        _prctl(_PR_CAP_AMBIENT, 4)  # PR_CAP_AMBIENT_CLEAR_ALL
    except OSError:
        pass

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


def _fresh_session_keyring() -> None:
    """Join a new, empty session keyring: the caller's keys are not reachable from it."""
    if _ARCH_INFO is None:
        return
    libc = _libc()
    libc.syscall(_ARCH_INFO["keyctl"], 1, None)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous; best effort


def seccomp_filter(*, only_userns: bool = False) -> bytes | None:
    """The BPF program :func:`confine` installs (``None`` on an architecture it does not know).

    It refuses: new user namespaces (``clone``/``unshare`` with ``CLONE_NEWUSER``;
    ``clone3``, whose flags it cannot read, with ENOSYS so that libc falls back to
    ``clone``); keyrings; ptrace and cross-process memory access; memfd (memory outside
    every limit); io_uring, bpf, perf events and userfaultfd (kernel attack surface);
    System V shared memory, semaphores and message queues and POSIX message queues, with
    ENOSYS as from a kernel built without them (a segment, once detached, holds memory no
    process's address-space limit counts: five 256 MiB segments touched and detached one
    by one held 1.25 GiB beyond a 1 GiB limit); ``socket``/``socketpair`` of any family
    but :data:`_SOCKET_FAMILIES`, with EAFNOSUPPORT (the family is the low word of the
    first argument, an ``int`` to the kernel); and every syscall of another ABI (x32,
    i386), which would dodge the table (i386's ``socketcall``/``ipc`` multiplexers too).
    ``only_userns`` keeps just the user-namespace rules (tests use it to emulate a host
    that forbids unprivileged user namespaces).
    """
    if _ARCH_INFO is None:
        return None
    EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97  # the same numbers on x86-64 and AArch64
    ret_allow = 0x7FFF0000
    ret_errno = lambda e: 0x00050000 | e  # noqa: E731
    ld_w_abs, jeq_k, jset_k, jge_k, ret_k = 0x20, 0x15, 0x45, 0x35, 0x06
    prog: list[tuple[int, int, int, int]] = []

    def op(code, k=0, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    deny = {} if only_userns else dict(_ARCH_INFO["deny"])
    op(ld_w_abs, 4)  # seccomp_data.arch
    op(jeq_k, _ARCH_INFO["audit"], 1, 0)
    op(ret_k, ret_errno(EPERM))
    op(ld_w_abs, 0)  # seccomp_data.nr
    if _ARCH_INFO["x32_bit"] is not None:
        op(jge_k, _ARCH_INFO["x32_bit"], 0, 1)
        op(ret_k, ret_errno(EPERM))
    op(jeq_k, _CLONE3, 0, 1)
    op(ret_k, ret_errno(ENOSYS))
    for nr in sorted(set(deny.values())):
        op(jeq_k, nr, 0, 1)
        op(ret_k, ret_errno(EPERM))
    if not only_userns:
        for nr in sorted(set(_ARCH_INFO["ipc"].values())):
            op(jeq_k, nr, 0, 1)
            op(ret_k, ret_errno(ENOSYS))
        # socket/socketpair: the family (first argument, low word) against the allow-list.
        # Every path into the block's body returns, so a syscall that skips it still has
        # its number in the accumulator for the clone/unshare rule below.
        families = _SOCKET_FAMILIES
        op(jeq_k, _ARCH_INFO["socket"], 1, 0)
        op(jeq_k, _ARCH_INFO["socketpair"], 0, len(families) + 3)
        op(ld_w_abs, 16)  # seccomp_data.args[0], low 32 bits (little endian)
        for i, family in enumerate(families):
            last = i == len(families) - 1
            op(jeq_k, family, len(families) - 1 - i, 1 if last else 0)
        op(ret_k, ret_allow)
        op(ret_k, ret_errno(EAFNOSUPPORT))
    # clone/unshare: look at the flags (first argument, low word).
    op(jeq_k, _ARCH_INFO["clone"], 1, 0)
    op(jeq_k, _ARCH_INFO["unshare"], 0, 3)
    op(ld_w_abs, 16)  # seccomp_data.args[0], low 32 bits (little endian)
    op(jset_k, _CLONE_NEWUSER, 0, 1)
    op(ret_k, ret_errno(EPERM))
    op(ret_k, ret_allow)
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)


def install_seccomp(program: bytes) -> None:
    libc = _libc()

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    fprog = Fprog(len(program) // 8, ctypes.addressof(buf))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _check(libc.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp")


def _unshare(flags: int) -> None:
    libc = _libc()
    _check(libc.unshare(flags), "unshare")


# ----------------------------------------------------------------------------- the new root


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _python_paths() -> list[str]:
    """Where this interpreter and its packages live (bound read-only into the new root)."""
    paths = set()
    for p in (sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)):
        if p:
            paths.add(os.path.abspath(p))
            paths.add(os.path.realpath(p))
    return sorted(paths)


def iprime_package_dir() -> str:
    """The installed ``iprime`` package's directory: this file is ``iprime/verifiers/sandbox/runner.py``."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def build_root(boot: dict) -> None:
    """Build the sandbox's root file system on ``boot["root"]`` and pivot into it."""
    root = boot["root"]
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")

    def inside(path: str) -> str:
        return root + path

    def mkdirs(path: str) -> None:
        os.makedirs(inside(path), mode=0o755, exist_ok=True)

    bound: list[str] = []

    def covered(path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)

    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), inside(path))
        elif os.path.isdir(path):
            mkdirs(path)
            _bind(path, inside(path))
            bound.append(path)
    # The one writable place, with a size and an inode quota, mounted before the Python
    # installation is bound: an interpreter or virtual environment that lives under /tmp (a CI
    # checkout in /tmp) is bound on top of it and stays visible; mounted after, it would hide
    # them (the multiprocessing helpers that re-execute sys.executable, and every third-party
    # package, would be gone inside the sandbox).
    mkdirs("/tmp")
    quota = f"size={int(boot['tmp_bytes'])},nr_inodes={int(boot['max_files'])},mode=1777"
    _mount("tmpfs", inside("/tmp"), "tmpfs", _MS_NOSUID | _MS_NODEV, quota)
    for path in _python_paths():
        if path in ("/", "/tmp") or not os.path.isdir(path) or covered(path):
            continue
        if os.path.islink(inside(path)) or os.path.exists(inside(path)) and not os.path.isdir(inside(path)):
            continue
        mkdirs(path)
        _bind(path, inside(path))
        bound.append(path)
    # This package (benchmark data with answers among it) stays out of sight even when
    # it is installed inside a bound directory.
    package = iprime_package_dir()
    if covered(package) and os.path.isdir(inside(package)):
        _mount("tmpfs", inside(package), "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_RDONLY, "size=4k,mode=0755")

    mkdirs("/dev")
    _mount("tmpfs", inside("/dev"), "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for name in _DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(inside(f"/dev/{name}"), "w").close()
            _mount(f"/dev/{name}", inside(f"/dev/{name}"), None, _MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, inside(f"/dev/{name}"))
    os.symlink("/proc/self/fd/1", inside("/dev/stdout"))
    os.symlink("/proc/self/fd/2", inside("/dev/stderr"))

    mkdirs("/proc")
    _mount("proc", inside("/proc"), "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)

    for alias in ("/var/tmp", "/dev/shm"):
        mkdirs(alias)
        _mount(inside("/tmp"), inside(alias), None, _MS_BIND)  # not recursive: the /tmp tmpfs alone
    for empty in ("/run", "/var/run", "/home"):
        mkdirs(empty)  # empty, on the read-only root: sockets and homes are not there

    _mount(None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    _pivot_root(root)


# ----------------------------------------------------------------------------- confinement


def _close_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _stdin_devnull() -> None:
    null = os.open("/dev/null", os.O_RDWR)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)


def _apply_limits(limits: dict, nproc: bool) -> None:
    import resource  # POSIX only: the host imports this module (plain data) on every platform

    def setl(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    cpu = int(limits["cpu_s"])
    setl(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at soft, SIGKILL at hard
    setl(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    setl(resource.RLIMIT_FSIZE, int(limits["file_size_bytes"]))
    setl(resource.RLIMIT_NOFILE, int(limits["max_open_files"]))
    setl(resource.RLIMIT_CORE, 0)
    if nproc:
        setl(resource.RLIMIT_NPROC, int(limits["max_processes"]))


def confine(job: dict, role: str, keep: set[int], cwd: str) -> None:
    """Turn this freshly forked child into an unprivileged sandbox process.

    ``role`` is ``"solution"`` (runs the candidate's code) or ``"judge"`` (runs only
    the tests' code). Must run before any untrusted byte is executed.
    """
    boot = job["boot"]
    os.setsid()  # own session and process group
    _close_fds(keep)
    _stdin_devnull()
    os.chdir(cwd)  # while still privileged: the directory may lie below one we cannot traverse
    if boot["switch_uid"]:
        uid = int(boot["uid_solution"] if role == "solution" else boot["uid_judge"])
        _drop_bounding_set()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # real, effective and saved: no way back
        if os.getuid() != uid or os.geteuid() != uid:
            raise RuntimeError("failed to drop privileges")
    elif boot["isolation"] == "userns":
        _drop_capabilities()
    _fresh_session_keyring()
    if role == "judge":
        _prctl(_PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/mem or fd for anyone else
    _apply_limits(job["limits"], nproc=boot["switch_uid"] or boot["isolation"] == "userns")
    program = seccomp_filter()
    if program is not None:
        install_seccomp(program)
    else:
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)


# ----------------------------------------------------------------------------- channels


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def send(fd: int, **message) -> None:
    try:
        _write_all(fd, (json.dumps(message, separators=(",", ":")) + "\n").encode())
    except OSError:
        pass  # the reader is gone: it is killing us anyway


def _read_until(fd: int, deadline: float, limit: int) -> tuple[bytes, bool]:
    """Read ``fd`` until EOF, the deadline or ``limit`` bytes; (data, timed out)."""
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        try:
            ready, _, _ = select.select([fd], [], [], remaining)
        except InterruptedError:
            continue
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks), False
        chunks.append(data)
        size += len(data)
        if size > limit:
            return b"".join(chunks), False


class _LineReader:
    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.limit, self.buffer = fd, limit, bytearray()

    def readline(self, deadline: float | None) -> bytes | None:
        """One line (without the newline); None at EOF; raises TimeoutError / ValueError."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > self.limit:
                raise ValueError(f"message longer than {self.limit} bytes")
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    ready, _, _ = select.select([self.fd], [], [], remaining)
                except InterruptedError:
                    continue
                if not ready:
                    continue
            data = os.read(self.fd, 1 << 20)
            if not data:
                return None
            self.buffer += data


def _short_exc(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except BaseException:  # noqa: BLE001 - e.g. a __str__ that raises
        text = type(exc).__name__
    return text[-500:]


def _signal_hint(sig: int) -> str:
    return {
        signal.SIGXCPU: " (CPU time limit)",
        signal.SIGKILL: " (CPU time limit or killed)",
        signal.SIGXFSZ: " (file size / output limit)",
        signal.SIGSEGV: " (crash: a C stack overflow from deep recursion, or the memory limit)",
    }.get(sig, "")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}" + _signal_hint(sig)
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _kill_tree(pid: int) -> None:
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except OSError:
            pass


# ----------------------------------------------------------------------------- solution phase


def _fork_test(fn, timeout_s: float, limit: int, *, exit_zero_finishes: bool = False) -> tuple[str, str]:
    """Run ``fn() -> str`` in a forked child with its own process group.

    Returns ``("ok", text)``, ``("error", reason)`` or ``("timeout", reason)``. Runs in the
    (untrusted) solution process: it only organises the candidate's own work.

    A test finishes when ``fn`` returns. With ``exit_zero_finishes`` (a stdin/stdout program,
    whose result is its output, compared on the host) a child that ends itself with status 0
    before ``fn`` returns (``os._exit(0)`` after flushing, as competitive programs do) has
    finished too, with the text ``""``; where ``fn`` computes a value (calls), ending early
    proves nothing and stays an error.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return "error", f"could not fork test process: {exc}"
    if pid == 0:  # child: whatever happens, it ends in os._exit below
        code, message = 1, "E" + "test process failed"
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            text = fn()
            sys.stdout.flush()
            code, message = 0, "V" + text
        except BaseException as exc:  # noqa: BLE001 - reported as the test's failure
            exc.__traceback__ = None
            try:
                if isinstance(exc, SystemExit):
                    message = f"ESystemExit({exc.code!r}) before the test finished"
                else:
                    message = "E" + _short_exc(exc)
            except BaseException:  # noqa: BLE001
                message = "E" + type(exc).__name__
        finally:
            _flush_before_exit()
            try:
                _write_all(write_fd, message.encode(errors="replace"))
            except BaseException:  # noqa: BLE001
                pass
            os._exit(code)
    os.close(write_fd)
    data, timed_out = _read_until(read_fd, time.monotonic() + timeout_s, limit)
    os.close(read_fd)
    if timed_out:
        _kill_tree(pid)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return "timeout", f"test timed out after {timeout_s:.3g}s"
    if len(data) > limit:
        return "error", f"result larger than {limit} bytes"
    text = data.decode(errors="replace")
    if text.startswith("V") and os.waitstatus_to_exitcode(status) == 0:
        return "ok", text[1:]
    if text.startswith("E"):
        return "error", text[1:4001]
    if exit_zero_finishes and not text and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "ok", ""
    return "error", f"test process {_describe_status(status)} without finishing"


def _module_namespace(name: str) -> dict:
    """A fresh module registered as ``sys.modules[name]``; its ``__dict__`` is the namespace the
    code runs in. What finds a definition through its module's name finds the candidate's:
    ``pickle`` (``multiprocessing.Pool.map`` of a function the code defines), ``dataclasses``
    (which reads ``sys.modules[cls.__module__].__dict__``), ``typing.get_type_hints``. This
    process (or the forked test child it is in) is the candidate's own, so the registration
    changes nothing any other process sees."""
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules[name] = module
    return module.__dict__


def _load(job: dict, namespace: dict, values_fd: int, with_code: bool) -> bool:
    try:
        setup_code = compile(job.get("setup") or "", "<setup>", "exec")
        solution_code = compile(job["code"], "<solution>", "exec")
    except SyntaxError as exc:
        send(values_fd, load_error="compile error: " + _short_exc(exc))
        return False
    except BaseException as exc:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        send(values_fd, load_error="compile error: " + _short_exc(exc))
        return False
    namespace["__solution_code__"] = solution_code
    try:
        exec(setup_code, namespace)
    except BaseException as exc:  # noqa: BLE001
        send(values_fd, load_error="setup error: " + _short_exc(exc))
        return False
    if not with_code:
        return True
    try:
        exec(solution_code, namespace)
    except SystemExit as exc:
        send(values_fd, load_error=f"code error: solution called exit({exc.code!r}) at import")
        return False
    except BaseException as exc:  # noqa: BLE001
        send(values_fd, load_error="code error: " + _short_exc(exc))
        return False
    return True


def _resolve_function(namespace: dict, name: str):
    """APPS's rule: a ``Solution`` class with the method wins, else the top-level function."""
    cls = namespace.get("Solution")
    if isinstance(cls, type) and hasattr(cls, name):
        return getattr(cls(), name)
    if name in namespace and callable(namespace[name]):
        return namespace[name]
    raise NameError(f"the code defines no function {name!r} (nor a class Solution with that method)")


def solution_phase(job: dict, values_fd: int, input_fds: list[int | str] | None = None) -> None:
    """In ``S``: load the code, evaluate every call (or run every input), report to the host.

    ``input_fds`` (stdio mode): per stdin input, the runner's read-only file holding it
    (:func:`input_files`), or why it could not be made.
    """
    deadline = time.monotonic() + float(job["deadline_s"])
    test_timeout = float(job["test_timeout_s"])
    limit = int(job["limits"]["file_size_bytes"])
    namespace = _module_namespace("__solution__")
    if job["mode"] == "calls":
        if not _load(job, namespace, values_fd, with_code=True):
            return
        for call in job["calls"]:
            index = call["i"]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                send(values_fd, i=index, error="not run: sample time limit reached")
                continue

            def evaluate(call=call) -> str:
                os.close(values_fd)
                if "fn" in call:
                    fn = _resolve_function(namespace, call["fn"])
                    results = [fn(*decode_plain(call["args"]))]
                else:
                    results = [eval(compile(src, "<test>", "eval"), namespace) for src in call["exprs"]]
                return dumps_plain(results)

            status, text = _fork_test(evaluate, min(test_timeout, remaining), limit)
            if status == "ok":
                send(values_fd, i=index, v=text)
            else:
                send(values_fd, i=index, error=text)
    elif job["mode"] == "stdio":
        if not _load(job, namespace, values_fd, with_code=False):
            return
        solution_code = namespace.pop("__solution_code__")
        input_fds = list(input_fds or [])
        open_inputs = {fd for fd in input_fds if isinstance(fd, int)}  # those not yet run (and closed)
        for index in range(len(job["stdin_inputs"])):
            remaining = deadline - time.monotonic()
            in_fd = input_fds[index] if index < len(input_fds) else "no input file"
            if remaining <= 0:
                send(values_fd, i=index, ok=False, stdout="", reason="not run: sample time limit reached")
                continue
            if not isinstance(in_fd, int):
                send(values_fd, i=index, ok=False, stdout="", reason=f"could not prepare the test: {in_fd}")
                continue
            try:
                os.lseek(in_fd, 0, os.SEEK_SET)
                out_fd = os.open(f"stdout_{index}.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as exc:
                send(values_fd, i=index, ok=False, stdout="", reason=f"could not prepare the test: {exc}")
                continue

            def run_program(in_fd=in_fd, out_fd=out_fd) -> str:
                os.close(values_fd)
                os.dup2(in_fd, 0)
                os.dup2(out_fd, 1)
                for fd in open_inputs:  # every input's file: the program keeps only its own, as fd 0
                    os.close(fd)
                os.close(out_fd)
                program_ns = _module_namespace("__main__")  # as `python program.py` runs it
                program_ns.update((k, v) for k, v in namespace.items() if k not in program_ns)
                try:
                    exec(solution_code, program_ns)
                except SystemExit as exc:  # exit()/sys.exit() ends a stdio program normally
                    if exc.code not in (None, 0):
                        raise RuntimeError(f"program exited with status {exc.code!r}") from None
                return ""

            # Exit status 0 ends a stdio program normally, os._exit(0) included; what it printed
            # but left in Python's buffer at os._exit is lost, as in CPython anywhere.
            status, reason = _fork_test(run_program, min(test_timeout, remaining), 4096, exit_zero_finishes=True)
            os.close(in_fd)
            open_inputs.discard(in_fd)
            out = os.pread(out_fd, limit + 1, 0)  # from our descriptor: whatever the path became
            os.close(out_fd)
            try:
                os.unlink(f"stdout_{index}.txt")
            except OSError:
                pass
            send(
                values_fd,
                i=index,
                ok=status == "ok",
                stdout=out[:limit].decode(errors="replace"),
                reason="" if status == "ok" else reason,
            )
    send(values_fd, done=True)


# ----------------------------------------------------------------------------- judged tests

_RPC_LIMIT = 64 << 20


class SolutionError(RuntimeError):
    """The solution raised an exception that is not a builtin one."""


class _Remote:
    """The judge's stand-in for an object that lives in the solution process.

    Calling it, reading an attribute or iterating it asks the solution process, which answers
    with plain data or another handle (iteration: ``iter`` gives a handle to the solution's
    iterator, each ``next`` its next item, ``StopIteration`` at the end, as a generator the test
    consumes in process). It has no other behaviour: no ``__eq__`` but identity, no
    ``__len__``, no ``__contains__`` (``in`` iterates, comparing the plain items here), so it
    never agrees with an expected value by itself.
    """

    __slots__ = ("_ref", "_rpc")

    def __init__(self, ref: int, rpc) -> None:
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_rpc", rpc)

    def __call__(self, *args, **kwargs):
        return self._rpc.request("call", self._ref, args=list(args), kwargs=kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._rpc.request("getattr", self._ref, name=name)

    def __iter__(self):
        return self._rpc.request("iter", self._ref)

    def __next__(self):
        return self._rpc.request("next", self._ref)

    def __setattr__(self, name, value) -> None:
        raise AttributeError("objects of the solution are read-only to the tests")

    def __repr__(self) -> str:
        return f"<object #{self._ref} of the solution>"


class _RpcClient:
    """The judge's end of the pipe pair to the solution process."""

    def __init__(self, req_fd: int, resp_fd: int, deadline: float, deferred: _Deferred) -> None:
        self.req_fd, self.reader, self.deadline = req_fd, _LineReader(resp_fd, _RPC_LIMIT), deadline
        self.deferred = deferred

    def _handle(self, value) -> int:
        if type(value) is _Remote:
            return object.__getattribute__(value, "_ref")
        raise PlainDataError(f"a {type(value).__qualname__} cannot be passed to the solution (not plain data)")

    def _decode(self, data):
        return decode_plain(data, handle=lambda ref: _Remote(ref, self))

    def receive(self):
        try:
            line = self.reader.readline(self.deadline)
        except TimeoutError:
            raise TimeoutError("the solution did not answer in time") from None
        if line is None:
            raise SolutionError("the solution process ended")
        message = json.loads(line)
        if type(message) is not dict:
            raise SolutionError("bad answer from the solution process")
        return message

    def request(self, op: str, ref: int, **fields):
        try:
            payload = {key: encode_plain(value, self._handle) for key, value in fields.items()}
        except PlainDataError as exc:
            raise TypeError(str(exc)) from None
        _write_all(self.req_fd, (json.dumps({"op": op, "ref": ref, **payload}) + "\n").encode())
        answer = self.receive()
        if op == "call":
            self._copy_back(answer.get("mutated"), fields.get("args", []), fields.get("kwargs", {}))
        if "error" in answer:
            raise self._exception(answer["error"])
        return self._decode(answer.get("value"))

    def _exception(self, error) -> Exception:
        """The test's exception for the solution's: the builtin class nearest it (a candidate's
        ``class NegativeError(ValueError)`` is a ``ValueError`` here) with the same ``args``
        when they are plain data (``str(e)`` and ``e.args`` as the test would see them in
        process), else the solution's text."""
        name, text, args = (list(error) + ["", "", None])[:3] if type(error) is list else ("", "", None)
        cls = getattr(builtins, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = SolutionError
        if args is not None and cls is not SolutionError:
            try:
                return cls(*decode_plain(args))
            except Exception:  # noqa: BLE001 - args the class does not take, or not plain data
                pass
        return cls(f"{str(text)[:500]}")

    def _copy_back(self, mutated, args: list, kwargs: dict) -> None:
        """Hand :attr:`deferred` what the call changed in the solution's copies of the test's
        arguments, for the test's own objects (``a = [3, 1]; sort_in_place(a); assert a == [1, 3]``):
        arguments cross the pipe as plain data, so without this an in-place change would be lost.
        The change lands when the test statement that made the call ends (:class:`_Deferred`)."""
        if type(mutated) is not dict:
            return
        for where, key, data in [("a", i, d) for i, d in (mutated.get("args") or [])] + [
            ("k", k, d) for k, d in (mutated.get("kwargs") or [])
        ]:
            try:
                target = args[int(key)] if where == "a" else kwargs[str(key)]
                self.deferred.record(target, self._decode(data))
            except (LookupError, TypeError, ValueError):
                continue


def _assign_in_place(target, value) -> bool:
    """Make the container ``target`` equal to ``value`` in place, keeping the identity of
    ``target`` and, where the shapes agree, of the containers inside it (a test may hold a row
    of the matrix it passed). False when ``target`` cannot take ``value`` in place (another
    type, an immutable value): its holder keeps it, as a call in process would leave it."""
    if type(target) is list and type(value) is list:
        if len(target) == len(value):
            for i, item in enumerate(value):
                if not _assign_in_place(target[i], item):
                    target[i] = item
        else:
            target[:] = value
        return True
    if type(target) is dict and type(value) is dict:
        for key in [k for k in target if k not in value]:
            del target[key]
        for key, item in value.items():
            if not (key in target and _assign_in_place(target[key], item)):
                target[key] = item
        return True
    if type(target) is set and type(value) is set:
        target.clear()
        target.update(value)
        return True
    if type(target) is tuple and type(value) is tuple and len(target) == len(value):
        # A tuple cannot change, but the lists inside it can.
        return all(_assign_in_place(t, v) or t == v for t, v in zip(target, value))
    return False


# The judge's hooks in the test's code (:func:`defer_changes`): dunder names, which the candidate
# cannot take (judge_process binds none of its names that starts with "__"). A code object that
# names the flush hook is a *statement frame*'s: the test's module or one of its instrumented
# functions.
_FLUSH = "__iprime_judge_flush__"
_LEAVE = "__iprime_judge_leave__"


def _statement_frame(frame):
    """The innermost frame from ``frame`` outwards that runs the test's statements (its module or
    an instrumented function), or None. Lambdas, comprehensions, generator functions and class
    bodies are not statement frames: what they do belongs to the statement that runs them."""
    while frame is not None and _FLUSH not in frame.f_code.co_names:
        frame = frame.f_back
    return frame


class _Deferred:
    """A call's in-place changes to the test's arguments, held until the test statement that made
    the call ends (issue 24): within one statement the test sees its arguments as the statement
    found them, so an expected value it computes from an argument after the call
    (``assert f(d) == sorted(d)``, ``== len(d)``, a comprehension over ``d``) is out of the
    candidate's reach; from the next statement on (``f(nums)`` then ``assert nums == [...]``;
    ``k = f(nums)`` then ``nums[:k]``) the test sees them, as in process.

    Each change is ``(frame, target, value)``: the statement frame that was running the call
    (:func:`_statement_frame`), the test's object and the plain value the call left in the
    solution's copy. ``flush`` (after every statement, and first in every block after a header:
    :func:`defer_changes`) applies the changes of its own frame only, so a statement of a test
    helper called in the middle of another statement does not apply that statement's changes.
    ``leave`` (when an instrumented function exits, by ``return`` or an exception) hands its
    frame's changes to the statement that called it: a ``return candidate(x)`` ends with the
    caller's statement. A statement that raises keeps its changes for its frame's next flush
    (first in the ``except`` block that catches it): the call ended, and in process the test
    would see what it changed before raising."""

    def __init__(self) -> None:
        self.pending: list[tuple[object, object, object]] = []

    def record(self, target, value) -> None:
        frame = _statement_frame(sys._getframe(1))
        if frame is None:  # no test statement is running: nothing can compare against it
            _apply([(None, target, value)])
        else:
            self.pending.append((frame, target, value))

    def flush(self) -> None:
        if not self.pending:
            return
        frame = sys._getframe(1)
        mine = [p for p in self.pending if p[0] is frame]
        self.pending = [p for p in self.pending if p[0] is not frame]
        _apply(mine)

    def leave(self) -> None:
        if not self.pending:
            return
        frame = sys._getframe(1)
        outer = _statement_frame(frame.f_back)
        handed = [(outer, t, v) for f, t, v in self.pending if f is frame]
        self.pending = [p for p in self.pending if p[0] is not frame]
        if outer is None:
            _apply(handed)
        else:
            self.pending += handed


def _apply(changes: list) -> None:
    for _, target, value in changes:
        try:
            _assign_in_place(target, value)
        except (LookupError, TypeError, ValueError):  # as a copy the test's object cannot take
            continue


def stub_names(setup: str) -> set[str]:
    """Top-level functions and classes of ``setup`` that are only a signature and a docstring.

    HumanEval's prompt declares the entry point that way (some with an ``import`` before
    the docstring); the candidate's code provides the body. Every other name the setup
    binds belongs to the tests.
    """

    def is_stub_body(body) -> bool:
        for node in body:
            if isinstance(node, (ast.Pass, ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                if isinstance(node.value.value, str) or node.value.value is Ellipsis:
                    continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_stub_body(node.body):
                continue
            return False
        return True

    try:
        tree = ast.parse(setup or "")
    except SyntaxError:
        return set()
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and is_stub_body(node.body)
    }


def test_modules(source: str) -> set[str]:
    """Standard-library modules ``source`` uses by name (``math`` in ``math.isclose(...)``): the
    names that are the base of an attribute and a module's name."""
    try:
        tree = ast.parse(source or "")
    except (SyntaxError, ValueError, RecursionError):
        return set()
    return {
        node.value.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in sys.stdlib_module_names
    }


# try/except and, from Python 3.11, try/except*.
_TRY = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)


def _hook(name: str, where: ast.AST) -> ast.stmt:
    """``name()`` as a statement, at the location of ``where`` (the test's line numbers stay)."""
    call = ast.Expr(ast.Call(ast.Name(name, ast.Load()), [], []))
    return ast.fix_missing_locations(ast.copy_location(call, where))


def _is_generator(node: ast.FunctionDef) -> bool:
    """``node`` yields (a generator function): its frame runs between its consumer's statements."""

    def walk(n):
        for child in ast.iter_child_nodes(n):
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                return True
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)) and walk(child):
                return True
        return False

    return walk(node)


def _flushed(body: list[ast.stmt], *, first: bool) -> list[ast.stmt]:
    """``body`` with a flush after each statement (its nested blocks done too), and one first
    when ``first`` (a block after a header: the header's calls land before the block runs)."""
    out = [_hook(_FLUSH, body[0])] if first and body else []
    for stmt in body:
        out += [_instrument(stmt), _hook(_FLUSH, stmt)]
    return out


def _instrument(stmt: ast.stmt) -> ast.stmt:
    """``stmt`` with its blocks flushed (:func:`_flushed`); a function's body also ends, by
    ``return`` or an exception, with ``leave`` (``try: ... finally: leave()``). Generator and
    async functions and class bodies are left as they are (not statement frames, see
    :func:`_statement_frame`), but the methods of a class are instrumented."""
    if isinstance(stmt, ast.FunctionDef) and not _is_generator(stmt):
        doc = stmt.body[:1] if ast.get_docstring(stmt, clean=False) is not None else []
        rest = stmt.body[len(doc) :] or [ast.copy_location(ast.Pass(), stmt)]
        guarded = ast.Try(body=_flushed(rest, first=False), handlers=[], orelse=[], finalbody=[_hook(_LEAVE, rest[-1])])
        stmt.body = doc + [ast.copy_location(guarded, rest[0])]
    elif isinstance(stmt, ast.ClassDef):
        stmt.body = [_instrument(s) if isinstance(s, (ast.FunctionDef, ast.ClassDef)) else s for s in stmt.body]
    elif isinstance(stmt, (ast.If, ast.For, ast.While)):
        stmt.body, stmt.orelse = _flushed(stmt.body, first=True), _flushed(stmt.orelse, first=True)
    elif isinstance(stmt, ast.With):
        stmt.body = _flushed(stmt.body, first=True)
    elif isinstance(stmt, _TRY):
        stmt.body, stmt.orelse = _flushed(stmt.body, first=True), _flushed(stmt.orelse, first=True)
        stmt.finalbody = _flushed(stmt.finalbody, first=True)
        for handler in stmt.handlers:
            handler.body = _flushed(handler.body, first=True)
    elif isinstance(stmt, ast.Match):
        for case in stmt.cases:
            case.body = _flushed(case.body, first=True)
    return stmt


def defer_changes(source: str) -> ast.Module:
    """The test's (or setup's) code with the judge's statement hooks (:class:`_Deferred`): a flush
    after every statement of every block, first in every block after a header (``if``/``while``
    test, ``for`` iterable, ``with`` items, an exception caught), and a ``leave`` when a function
    of the test ends. A header's own expression runs with its calls' changes deferred, as one
    statement. The module's docstring and ``from __future__`` imports stay first. Line numbers are
    the test's own. Raises SyntaxError as ``compile`` would."""
    tree = ast.parse(source, mode="exec")
    head = 0
    while head < len(tree.body) and (
        (head == 0 and ast.get_docstring(tree, clean=False) is not None)
        or (isinstance(tree.body[head], ast.ImportFrom) and tree.body[head].module == "__future__")
    ):
        head += 1
    tree.body = tree.body[:head] + _flushed(tree.body[head:], first=False)
    return tree


def judge_process(job: dict, tests_fd: int, index: int, req_fd: int, resp_fd: int, verdict_fd: int) -> None:
    """In ``J``: run test ``index`` with the solution's names standing for remote objects."""
    deadline = time.monotonic() + float(job["judge_timeout_s"])
    try:
        size = os.fstat(tests_fd).st_size
        judged = json.loads(os.pread(tests_fd, size, 0))
        os.close(tests_fd)
        setup, source = judged["setup"], judged["tests"][index]
        deferred = _Deferred()
        rpc = _RpcClient(req_fd, resp_fd, deadline, deferred)
        hello = rpc.receive()
        if "load_error" in hello:
            send(verdict_fd, passed=False, reason=str(hello["load_error"])[:600], load_error=True)
            return
        namespace: dict = {"__name__": "__solution__", "__builtins__": builtins}
        namespace[_FLUSH], namespace[_LEAVE] = deferred.flush, deferred.leave
        exec(compile(defer_changes(setup or ""), "<setup>", "exec"), namespace)
        stubs = stub_names(setup)
        names = hello.get("names")
        modules = hello.get("modules")
        if type(names) is not dict or type(modules) is not dict:
            raise SolutionError("bad greeting from the solution process")

        def free(name) -> bool:  # builtins and the setup's own helpers stay the tests'
            if type(name) is not str or not name.isidentifier() or name.startswith("__"):
                return False
            return not hasattr(builtins, name) and (name not in namespace or name in stubs)

        for name in sorted(test_modules(setup) | test_modules(source)):
            # The modules the test uses by name are its own, imported here, even where it never
            # imports them (MBPP rows without test_imports): never a name the candidate bound,
            # which could be an object posing as the module.
            if name not in namespace:
                try:
                    namespace[name] = importlib.import_module(name)
                except ImportError:
                    pass
        for name, module in modules.items():
            # The tests may use what the solution imported (MBPP's do): the judge imports
            # the same standard-library module itself; nothing else is taken.
            if free(name) and type(module) is str and module.split(".")[0] in sys.stdlib_module_names:
                try:
                    namespace[name] = importlib.import_module(module)
                except ImportError:
                    pass
        for name, data in names.items():
            if free(name):
                namespace[name] = rpc._decode(data)
        try:
            test_code = compile(defer_changes(source), f"<test {index}>", "exec")
        except SyntaxError as exc:
            send(verdict_fd, passed=False, reason="test does not compile: " + _short_exc(exc))
            return
        exec(test_code, namespace)
    except BaseException as exc:  # noqa: BLE001 - the test failed, whatever it was
        exc.__traceback__ = None
        if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
            reason = f"test timed out after {float(job['judge_timeout_s']):.3g}s"
        else:
            reason = _short_exc(exc)
        send(verdict_fd, passed=False, reason=reason)
        return
    send(verdict_fd, passed=True, reason="passed")


def rpc_server(job: dict, req_fd: int, resp_fd: int) -> None:
    """In the solution process of a judged test: load the code, then answer the judge."""
    namespace = _module_namespace("__solution__")
    if not _load(job, namespace, resp_fd, with_code=False):
        return
    before = {name: id(value) for name, value in namespace.items()}
    solution_code = namespace.pop("__solution_code__")
    try:
        exec(solution_code, namespace)
    except SystemExit as exc:
        send(resp_fd, load_error=f"code error: solution called exit({exc.code!r}) at import")
        return
    except BaseException as exc:  # noqa: BLE001
        send(resp_fd, load_error="code error: " + _short_exc(exc))
        return
    objects: list = []

    def handle(value) -> int:
        if len(objects) >= 100_000:
            raise PlainDataError("too many objects")
        objects.append(value)
        return len(objects) - 1

    names, modules = {}, {}
    for name, value in list(namespace.items()):
        if name.startswith("__") or before.get(name) == id(value):
            continue
        if isinstance(value, types.ModuleType):
            modules[name] = str(getattr(value, "__name__", ""))
            continue
        try:
            names[name] = encode_plain(value, handle)
        except PlainDataError:
            continue
    send(resp_fd, names=names, modules=modules)
    reader = _LineReader(req_fd, _RPC_LIMIT)
    while True:
        line = reader.readline(None)
        if line is None:
            return
        answer: dict = {}
        args, kwargs = [], {}
        try:
            request = json.loads(line)
            target = objects[int(request["ref"])]
            if request["op"] == "call":
                args = decode_plain(request["args"], objects.__getitem__)
                kwargs = decode_plain(request["kwargs"], objects.__getitem__)
                result = target(*args, **{str(k): v for k, v in kwargs.items()})
            elif request["op"] == "getattr":
                result = getattr(target, str(decode_plain(request["name"])))
            elif request["op"] == "iter":
                result = iter(target)
            elif request["op"] == "next":
                result = next(target)
            else:
                raise ValueError(f"unknown request {request['op']!r}")
            answer["value"] = encode_plain(result, handle)
        except BaseException as exc:  # noqa: BLE001 - the judge sees the exception
            answer["error"] = _error_answer(exc)
        if args or kwargs:  # also after an exception: what the call changed before it raised
            answer["mutated"] = _mutated(request, args, kwargs, handle)
        _write_all(resp_fd, (json.dumps(answer, separators=(",", ":")) + "\n").encode())


def _error_answer(exc: BaseException) -> list:
    """``[builtin class name, text, args]`` of the solution's exception for the judge
    (:meth:`_RpcClient._exception`): the nearest builtin class in its MRO, its message, and its
    ``args`` as plain data (None when they are not)."""
    if isinstance(exc, SystemExit):
        return ["SystemExit", f"exit({exc.code!r}) called", None]
    base = next((c for c in type(exc).__mro__ if getattr(builtins, c.__name__, None) is c), BaseException)
    try:
        args = encode_plain(tuple(BaseException.args.__get__(exc)))
    except BaseException:  # noqa: BLE001 - args that are not plain data, or a hostile args attribute
        args = None
    return [base.__name__, str(_short_exc(exc)), args]


def _mutated(request: dict, args: list, kwargs: dict, handle) -> dict:
    """``{"args": [[i, value]...], "kwargs": [[name, value]...]}``: each container argument of a
    call whose plain-data encoding the call changed (an in-place change), encoded for the judge."""
    sent_args = dict(enumerate(request["args"][1]))
    sent_kwargs = {pair[0]: pair[1] for pair in request["kwargs"][1]}
    changed: dict = {"args": [], "kwargs": []}
    for where, items, sent in (("args", enumerate(args), sent_args), ("kwargs", kwargs.items(), sent_kwargs)):
        for key, value in items:
            if type(value) not in (list, dict, set, tuple):
                continue
            try:
                now = encode_plain(value, handle)
            except BaseException:  # noqa: BLE001 - made unencodable (a cycle): the test keeps its own
                continue
            if now != sent.get(key):
                changed[where].append([key, now])
    return changed


# ----------------------------------------------------------------------------- the runner

# Sealed: no write, resize or new seal, by anyone, through any descriptor of the file.
_INPUT_SEALS = ("F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE")


def input_files(texts: list[str], first_fd: int) -> list[int | str]:
    """Each stdin input as a sealed, read-only memory file, made by the runner: per input its
    descriptor (numbered from ``first_fd`` up), or the reason it could not be made.

    The runner writes them because it has no file-size limit: an input is the test's, so it must
    not count against what the program may write (``RLIMIT_FSIZE``, the ``/tmp`` quota), which
    it would if the sandboxed process wrote it into its own directory. A memory file (like the
    file a judge redirects) is regular, seekable, its size known to ``fstat``, unlike a pipe.
    The descriptors sit at ``first_fd`` and above (``max_open_files``, the sandbox process's
    own limit), so they take none of the numbers the program may open; the soft descriptor
    limit of the runner is raised to its hard limit for them.
    """
    import fcntl  # POSIX only, like resource (see _apply_limits); the runner imports both in main
    import resource

    seals = 0
    for name in _INPUT_SEALS:
        seals |= getattr(fcntl, name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass  # then fewer inputs get a file; each one that does not says why
    result: list[int | str] = []
    for index, text in enumerate(texts):
        fd = -1
        try:
            fd = os.memfd_create(f"stdin_{index}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            _write_all(fd, text.encode())
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            result.append(fcntl.fcntl(fd, fcntl.F_DUPFD, first_fd))
        except OSError as exc:
            result.append(f"could not store the input: {exc}")
        finally:
            if fd >= 0:
                os.close(fd)
    return result


class Runner:
    def __init__(self, job: dict) -> None:
        self.job = job
        self.boot = job["boot"]
        self.report_fd = int(job["fds"]["report"])
        self.values_fd = int(job["fds"]["values"])
        self.tests_fd = job["fds"].get("judged")
        self.deadline = time.monotonic() + float(job["deadline_s"])
        self.is_init = os.getpid() == 1  # "namespaces"/"userns": we are the PID namespace's init
        self.cwd = "/tmp" if self.boot["isolation"] in ("namespaces", "userns") else self.boot["workdir"]
        self.statuses: dict[int, int] = {}

    def report(self, **event) -> None:
        send(self.report_fd, **event)

    def fork(self, role: str, keep: set[int], body, *, own_pid_ns: bool) -> int:
        """Fork a sandbox process; with ``own_pid_ns`` it is the init of a new PID namespace."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 70
        try:
            cwd = self.cwd if role == "solution" else "/"
            if own_pid_ns and self.is_init:
                # An intermediate process: the next fork is the new namespace's init,
                # which no process of the candidate can signal or outlive.
                _unshare(_CLONE_NEWPID)
                child = os.fork()
                if child:
                    _close_fds(set())
                    _, status = os.waitpid(child, 0)
                    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
            confine(self.job, role, keep, cwd)
            body()
            code = 0
        except BaseException as exc:  # noqa: BLE001
            try:
                sys.stderr.write(f"sandbox {role} process failed: {_short_exc(exc)}\n")
            except BaseException:  # noqa: BLE001
                pass
        finally:
            _flush_before_exit()
            os._exit(code)

    def wait(self, pids: list[int], deadline: float) -> bool:
        """Wait until ``pids`` exited or the deadline; True if they did. Reaps orphans too."""
        pending = set(pids) - set(self.statuses)
        while pending:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid:
                self.statuses[pid] = status
                pending.discard(pid)
                continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def kill_all(self, pids: list[int]) -> None:
        """Kill every sandbox process of the phase that just ended."""
        if self.is_init:
            try:
                os.kill(-1, signal.SIGKILL)  # from the namespace's init: everyone in it but us
            except OSError:
                pass
        for pid in pids:
            _kill_tree(pid)
        if not self.is_init and self.boot["switch_uid"]:
            _kill_uids({int(self.boot["uid_solution"]), int(self.boot["uid_judge"])})
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.statuses[pid] = status

    def run(self) -> None:
        job = self.job
        if job["mode"] in ("calls", "stdio"):
            inputs: list[int | str] = []
            if job["mode"] == "stdio":
                inputs = input_files(job["stdin_inputs"], int(job["limits"]["max_open_files"]))
            keep = {self.values_fd, *(fd for fd in inputs if isinstance(fd, int))}
            pid = self.fork("solution", keep, lambda: solution_phase(job, self.values_fd, inputs), own_pid_ns=True)
            for fd in inputs:
                if isinstance(fd, int):
                    os.close(fd)
            if not self.wait([pid], self.deadline):
                self.report(event="timed_out")
            self.kill_all([pid])
        os.close(self.values_fd)
        failed = False
        for index in range(int(job.get("num_judged", 0))):
            if failed and job["stop_on_failure"]:
                break
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.report(event="judged", index=index, passed=False, reason="not run: sample time limit reached")
                continue
            timeout = min(float(job["test_timeout_s"]), remaining)
            passed, reason = self.judge(index, timeout)
            self.report(event="judged", index=index, passed=passed, reason=reason)
            failed = failed or not passed
        self.report(event="done")

    def judge(self, index: int, timeout: float) -> tuple[bool, str]:
        job = dict(self.job, judge_timeout_s=timeout)
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        solution = self.fork("solution", {req_r, resp_w}, lambda: rpc_server(job, req_r, resp_w), own_pid_ns=True)
        tests_fd = int(self.tests_fd)
        judge = self.fork(
            "judge",
            {req_w, resp_r, verdict_w, tests_fd},
            lambda: judge_process(job, tests_fd, index, req_w, resp_r, verdict_w),
            own_pid_ns=False,
        )
        for fd in (req_r, req_w, resp_r, resp_w, verdict_w):
            os.close(fd)
        deadline = time.monotonic() + timeout + 0.5
        data, timed_out = _read_until(verdict_r, deadline, 65536)
        os.close(verdict_r)
        if not timed_out:
            self.wait([judge], min(deadline, time.monotonic() + 2.0))
        self.kill_all([solution, judge])
        if timed_out:
            return False, f"test timed out after {timeout:.3g}s"
        try:
            verdict = json.loads(data.decode().splitlines()[0])
        except (ValueError, IndexError):
            return False, "the judge process ended without a verdict"
        if type(verdict) is not dict:
            return False, "the judge process ended without a verdict"
        passed = verdict.get("passed") is True
        # A pass counts only from a judge that also exited normally (status set by the kernel).
        if passed and self.statuses.get(judge) != 0:
            return False, "the judge process did not exit cleanly"
        return passed, str(verdict.get("reason", ""))[:600]


def _flush_before_exit() -> None:
    """Flush stdout and stderr in a child about to ``os._exit``; a failure (a closed or full
    descriptor, an exception from the program's own stream objects) must not stop the exit."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def _kill_uids(uids: set[int]) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            os.kill(int(entry), signal.SIGKILL)
                        break
        except (OSError, ValueError):
            continue


def main() -> None:
    # Everything the sandbox processes import from the standard library is imported while
    # the runner can still read it (with "rlimits" they may run as a uid that cannot): the
    # module's imports, and resource and fcntl, kept out of them for the host's sake (see
    # _apply_limits, input_files).
    import fcntl  # noqa: F401
    import resource  # noqa: F401

    job = json.loads(sys.stdin.buffer.read())
    report_fd = int(job["fds"]["report"])
    boot = job["boot"]
    try:
        _prctl(_PR_SET_DUMPABLE, 0)  # nothing in the sandbox may read this process
        if os.getpid() == 1:
            # As the namespace's init we receive only the signals we handle: none.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if boot["isolation"] in ("namespaces", "userns"):
            build_root(boot)
            if boot["isolation"] == "userns":
                try:  # no user namespace below this one (the seccomp filter says so too)
                    with open("/proc/sys/user/max_user_namespaces", "w") as fh:
                        fh.write("0")
                except OSError:
                    pass
        _stdin_devnull()  # fd 0 stays taken, so no pipe of ours ever gets a standard number
    except BaseException as exc:  # noqa: BLE001
        send(report_fd, event="boot_error", reason=_short_exc(exc))
        sys.exit(70)
    send(report_fd, event="started", pid=os.getpid())
    Runner(job).run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
