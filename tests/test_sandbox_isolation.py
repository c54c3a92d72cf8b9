"""Issue 24, items 5 and 6: memory outside the address-space limit (System V shared memory,
message queues, semaphores, POSIX message queues, memfd, ``/dev/shm``) and socket families
outside the network namespace (``AF_VSOCK`` reaches the hypervisor; every family but
``AF_UNIX``, ``AF_INET`` and ``AF_INET6`` is refused).

Three classes:

* the seccomp program itself, run through a small classic-BPF interpreter for both
  architectures the filter knows (no kernel, no root needed): which syscalls and socket
  families it lets through, with which errno it refuses the rest;
* hostile probes run in the real sandbox (``run_tests``), each returning what it got
  (an errno, or how much it held): they must get exactly the refusal or bound below;
* honest programs that use sockets, threads, processes and POSIX shared memory the way
  ordinary solutions do: they must keep working.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import verify_code
from iprime.verifiers.sandbox import InsecureSandboxWarning, SandboxLimits, run_tests, runner

# ----------------------------------------------------------------- the filter, interpreted

# seccomp return values (include/uapi/linux/seccomp.h)
ALLOW = 0x7FFF0000


def refused(err: int) -> int:
    return 0x00050000 | err  # SECCOMP_RET_ERRNO | errno


def run_bpf(program: bytes, *, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate a classic-BPF seccomp program on one ``struct seccomp_data`` (little endian).

    ``seccomp_data`` = ``{int nr; u32 arch; u64 instruction_pointer; u64 args[6]}``: byte
    offset 0 is ``nr``, 4 ``arch``, 16 + 8*i the low word of ``args[i]``, 20 + 8*i its high word.
    Supports exactly the opcodes the filter uses (``ld [k]``, ``jeq``, ``jge``, ``jset``, ``ret``)
    and fails on any other, so a filter that grows a new opcode grows this interpreter too.
    """
    full_args = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *[a & (2**64 - 1) for a in full_args])
    ops = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (0x15, 0x35, 0x45):  # BPF_JMP | BPF_K with JEQ, JGE, JSET
            taken = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not understood by this interpreter")


# The syscall numbers, from the kernel's tables (arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h), written out here rather than read from the runner.
ARCHES = {
    "x86_64": {
        "audit": 0xC000003E,
        "socket": 41,
        "socketpair": 53,
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
        },  # fmt: skip
        "memfd_create": 319,
        "allowed": {"read": 0, "write": 1, "mmap": 9, "pipe2": 293, "connect": 42, "accept4": 288, "open": 2},
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "socket": 198,
        "socketpair": 199,
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
        },  # fmt: skip
        "memfd_create": 279,
        "allowed": {"read": 63, "write": 64, "mmap": 222, "pipe2": 59, "connect": 203, "accept4": 242, "openat": 56},
    },
}
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
AF_MAX = 46  # include/linux/socket.h (6.x); the filter must refuse numbers beyond it too


@pytest.fixture(params=sorted(ARCHES))
def arch(request, monkeypatch):
    """The filter as built for each architecture it knows (whatever machine runs the test)."""
    monkeypatch.setattr(runner, "_ARCH_INFO", runner._ARCH[request.param])
    info = ARCHES[request.param]
    return info, runner.seccomp_filter()


class TestFilterProgram:
    def test_sysv_and_posix_ipc_are_refused_with_enosys(self, arch) -> None:
        info, program = arch
        for name, nr in info["ipc"].items():
            assert run_bpf(program, arch=info["audit"], nr=nr) == refused(errno.ENOSYS), name

    def test_memfd_stays_refused(self, arch) -> None:
        info, program = arch
        assert run_bpf(program, arch=info["audit"], nr=info["memfd_create"]) == refused(errno.EPERM)

    @pytest.mark.parametrize("call", ["socket", "socketpair"])
    def test_only_unix_inet_inet6_families_are_allowed(self, arch, call) -> None:
        info, program = arch
        allowed = set()
        for family in [*range(AF_MAX + 2), 64, 255, 0xFFFF, 2**31 - 1]:
            for sock_type in (1, 2, 3, 5, 0x80801):  # STREAM, DGRAM, RAW, SEQPACKET, |NONBLOCK|CLOEXEC
                verdict = run_bpf(program, arch=info["audit"], nr=info[call], args=(family, sock_type, 0))
                assert verdict in (ALLOW, refused(errno.EAFNOSUPPORT)), (family, verdict)
                if verdict == ALLOW:
                    allowed.add(family)
        assert allowed == {AF_UNIX, AF_INET, AF_INET6}

    @pytest.mark.parametrize("call", ["socket", "socketpair"])
    def test_family_is_read_as_the_kernel_reads_it(self, arch, call) -> None:
        """The kernel takes ``int family``: high bits of the register are ignored, so the
        filter must judge the low word (AF_VSOCK with bit 32 set is AF_VSOCK)."""
        info, program = arch
        nr = info[call]
        assert run_bpf(program, arch=info["audit"], nr=nr, args=((1 << 32) | 40, 1, 0)) == refused(errno.EAFNOSUPPORT)
        assert run_bpf(program, arch=info["audit"], nr=nr, args=((1 << 32) | AF_UNIX, 1, 0)) == ALLOW
        assert run_bpf(program, arch=info["audit"], nr=nr, args=(-1, 1, 0)) == refused(errno.EAFNOSUPPORT)

    def test_ordinary_syscalls_pass_and_foreign_abis_do_not(self, arch) -> None:
        info, program = arch
        for name, nr in info["allowed"].items():  # a first argument of 40 is not a family here
            assert run_bpf(program, arch=info["audit"], nr=nr, args=(40, 0, 0)) == ALLOW, name
        assert run_bpf(program, arch=0x40000003, nr=info["socket"], args=(AF_UNIX,)) == refused(errno.EPERM)  # i386

    def test_only_userns_keeps_only_the_user_namespace_rules(self, arch) -> None:
        info, _ = arch
        program = runner.seccomp_filter(only_userns=True)
        assert run_bpf(program, arch=info["audit"], nr=info["socket"], args=(40, 1, 0)) == ALLOW
        assert run_bpf(program, arch=info["audit"], nr=info["ipc"]["shmget"]) == ALLOW


# ----------------------------------------------------------------- hostile probes, for real


def probe(code: str, *, wall_s: float = 20.0):
    """Run ``probe()`` from ``code`` in the sandbox and return its value (or fail the test)."""
    run = run_tests(code, calls=[{"i": 0, "exprs": ["probe()"]}], limits=SandboxLimits(wall_s=wall_s))
    outcome = run.calls.get(0)
    assert outcome is not None and outcome.ok, (outcome, run.error, run.stderr[-2000:])
    return outcome.values[0]


LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"

# Each probe returns ("refused", errno) when the kernel said no, or what it got.
MEMORY_PROBES = {
    # The audit's attack: segments attached one at a time (each fits the 1 GiB address
    # space), touched and detached: 1.25 GiB held that no process's limit counts.
    "sysv_shm_segments_touched_and_detached": LIBC
    + """
libc.shmat.restype = ctypes.c_void_p
def probe():
    held = 0
    for _ in range(5):
        sid = libc.shmget(0, 256 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        if sid < 0:
            return ("refused", ctypes.get_errno()) if held == 0 else ("held MiB", held >> 20)
        addr = libc.shmat(sid, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return ("shmat failed", ctypes.get_errno())
        ctypes.memset(addr, 1, 256 << 20)
        libc.shmdt(ctypes.c_void_p(addr))
        held += 256 << 20
    return ("held MiB", held >> 20)
""",
    # One segment of 1.25 GiB: created even though it cannot be mapped under the limit.
    "sysv_shmget_1_25_gib": LIBC
    + """
def probe():
    sid = libc.shmget(0, 1280 << 20, 0o1600)
    return ("refused", ctypes.get_errno()) if sid < 0 else ("created", 1280)
""",
    "sysv_msgget_and_send": LIBC
    + """
def probe():
    qid = libc.msgget(0, 0o1600)
    if qid < 0:
        return ("refused", ctypes.get_errno())
    msg = ctypes.create_string_buffer((1).to_bytes(8, "little") + b"x" * 4096)  # mtype 1, 4 KiB
    sent = sum(libc.msgsnd(qid, msg, 4096, 0o4000) == 0 for _ in range(4))  # IPC_NOWAIT
    return ("sent", sent)
""",
    "sysv_semget": LIBC
    + """
def probe():
    sid = libc.semget(0, 8, 0o1600)
    return ("refused", ctypes.get_errno()) if sid < 0 else ("created", 8)
""",
    # shmctl/semctl/msgctl on ids that may exist: refused before the kernel looks.
    "sysv_ctl_on_guessed_ids": LIBC
    + """
def probe():
    out = []
    for fn in (libc.shmctl, libc.msgctl, libc.semctl):
        rc = fn(0, 2, None) if fn is not libc.semctl else fn(0, 0, 2, None)  # IPC_STAT
        out.append(ctypes.get_errno() if rc < 0 else "answered")
    return ("refused", sorted(set(out))[0]) if len(set(out)) == 1 else ("mixed", out)
""",
    "posix_mq_open": LIBC
    + """
import ctypes.util
def probe():
    rt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
    fd = rt.mq_open(b"/iprime-probe", 0o100 | 2, 0o600, None)  # O_CREAT | O_RDWR
    return ("refused", ctypes.get_errno()) if fd < 0 else ("opened", 1)
""",
    "memfd_create_write_1_5_gib": """
import os
def probe():
    try:
        fd = os.memfd_create("x")
    except OSError as exc:
        return ("refused", exc.errno)
    chunk, written = b"x" * (1 << 20), 0
    try:
        while written < (1536 << 20):
            written += os.write(fd, chunk)
    except OSError:
        pass
    return ("wrote MiB", written >> 20)
""",
}

# errno a kernel built without System V IPC / POSIX message queues gives: what portable code handles.
MEMORY_EXPECTED = {
    "sysv_shm_segments_touched_and_detached": ("refused", errno.ENOSYS),
    "sysv_shmget_1_25_gib": ("refused", errno.ENOSYS),
    "sysv_msgget_and_send": ("refused", errno.ENOSYS),
    "sysv_semget": ("refused", errno.ENOSYS),
    "sysv_ctl_on_guessed_ids": ("refused", errno.ENOSYS),
    "posix_mq_open": ("refused", errno.ENOSYS),
    "memfd_create_write_1_5_gib": ("refused", errno.EPERM),
}

# /dev/shm (POSIX shm_open, multiprocessing.shared_memory, sem_open) is the sandbox's /tmp
# tmpfs: each file is capped by the file-size limit (16 MiB), all of them by its quota (64 MiB).
DEV_SHM_PROBES = {
    "dev_shm_one_file_1_5_gib": """
import os
def probe():
    written = 0
    try:
        with open("/dev/shm/blob", "wb", buffering=0) as fh:
            while written < (1536 << 20):
                written += fh.write(b"x" * (1 << 20))
    except OSError:
        pass
    return written
""",
    "dev_shm_ftruncate_and_mmap": """
import mmap, os
def probe():
    fd = os.open("/dev/shm/sparse", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 1536 << 20)
    except OSError:
        return 0
    with mmap.mmap(fd, 1536 << 20) as m:  # touching past the quota: SIGBUS
        for off in range(0, 1536 << 20, 4096):
            m[off] = 1
    return 1536 << 20
""",
    "dev_shm_many_files": """
import os
def probe():
    written = 0
    for i in range(100):
        try:
            with open(f"/dev/shm/part{i}", "wb", buffering=0) as fh:
                for _ in range(15):
                    written += fh.write(b"x" * (1 << 20))
        except OSError:
            pass
    return written
""",
    "shared_memory_module_1_5_gib": """
from multiprocessing import shared_memory
def probe():
    try:
        shm = shared_memory.SharedMemory(create=True, size=1536 << 20)
    except OSError:
        return 0
    shm.buf[::4096] = b"x" * len(shm.buf[::4096])
    return shm.size
""",
}

SOCKET_PROBE = """
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
def probe():
    out = {}
    for family in FAMILIES:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
            try:
                socket.socket(family, kind).close()
                out[f"socket {family} {kind}"] = "created"
            except OSError as exc:
                out[f"socket {family} {kind}"] = exc.errno
            fds = (ctypes.c_int * 2)()
            rc = libc.socketpair(family, kind, 0, fds)
            out[f"socketpair {family} {kind}"] = "created" if rc == 0 else ctypes.get_errno()
    # the family with bits above 32 set, through the raw syscall: the kernel reads an int
    nr = {"x86_64": 41, "aarch64": 198}[__import__("os").uname().machine]
    rc = libc.syscall(ctypes.c_long(nr), ctypes.c_long((1 << 32) | 40), ctypes.c_long(1), ctypes.c_long(0))
    out["raw vsock high bits"] = "created" if rc >= 0 else ctypes.get_errno()
    return out
"""

# Families a sandboxed program must not open. AF_VSOCK reaches the hypervisor; the others
# are kernel attack surface (and module autoloading) no solution needs; AF_NETLINK and
# AF_PACKET live in the (empty) network namespace but still expose the kernel's routing,
# audit, netfilter and uevent interfaces and raw frames.
REFUSED_FAMILIES = {
    "AF_VSOCK": 40,
    "AF_PACKET": 17,
    "AF_NETLINK": 16,
    "AF_KEY": 15,
    "AF_ALG": 38,
    "AF_XDP": 44,
    "AF_BLUETOOTH": 31,
    "AF_UNSPEC": 0,
    "beyond AF_MAX": 200,
}


@needs_sandbox
class TestMemoryOutsideTheLimit:
    @pytest.mark.parametrize("name", sorted(MEMORY_PROBES))
    def test_ipc_and_memfd_are_refused(self, name: str) -> None:
        assert tuple(probe(MEMORY_PROBES[name])) == MEMORY_EXPECTED[name]

    @pytest.mark.parametrize("name", sorted(DEV_SHM_PROBES))
    def test_dev_shm_is_bounded_by_file_size_and_quota(self, name: str) -> None:
        limits = SandboxLimits()
        held = probe(DEV_SHM_PROBES[name])
        bound = limits.tmpfs_bytes if name == "dev_shm_many_files" else limits.file_size_bytes
        assert 0 <= held <= bound, held


LEAVE_BEHIND = (
    LIBC
    + """
def probe():
    # Created and never removed (no IPC_RMID): before the filter, under "rlimits" (no IPC
    # namespace of its own) these outlived the sample in the host's IPC namespace.
    return [libc.shmget(0, 1 << 20, 0o1600) >= 0, libc.msgget(0, 0o1600) >= 0, libc.semget(0, 1, 0o1600) >= 0]
"""
)


def host_ipc_objects() -> set[tuple[str, str]]:
    """(kind, id) of every System V IPC object in this process's IPC namespace."""
    found = set()
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
        found |= {(kind, row[1]) for row in rows if row}
    return found


@needs_sandbox
@pytest.mark.parametrize("isolation", ["namespaces", "rlimits"])
def test_no_ipc_object_outlives_the_sample(isolation: str) -> None:
    before = host_ipc_objects()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureSandboxWarning)
        run = run_tests(LEAVE_BEHIND, calls=[{"i": 0, "exprs": ["probe()"]}], isolation=isolation)
    assert run.calls[0].ok and run.calls[0].values == [[False, False, False]], run.calls[0]
    assert host_ipc_objects() - before == set()


@needs_sandbox
class TestSocketFamilies:
    @pytest.mark.parametrize("name", sorted(REFUSED_FAMILIES))
    def test_family_is_refused_for_socket_and_socketpair(self, name: str) -> None:
        got = probe(SOCKET_PROBE.replace("FAMILIES", repr([REFUSED_FAMILIES[name]])))
        assert set(got.values()) == {errno.EAFNOSUPPORT}, got

    def test_vsock_cannot_bind_a_port(self) -> None:
        code = """
import socket
def probe():
    try:
        s = socket.socket(40, socket.SOCK_STREAM)
        s.bind((0xFFFFFFFF, 0))  # VMADDR_CID_ANY, any port: listening for the hypervisor
        return ("bound", s.getsockname()[1])
    except OSError as exc:
        return ("refused", exc.errno)
"""
        assert tuple(probe(code)) == ("refused", errno.EAFNOSUPPORT)


HONEST = {
    "unix_socketpair_echo": """
import socket
def probe():
    a, b = socket.socketpair()
    a.sendall(b"ping")
    return b.recv(4).decode()
""",
    "inet_sockets_can_be_created": """
import socket
def probe():
    kinds = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            socket.socket(fam, kind).close()
            kinds.append(1)
    return len(kinds)
""",
    "unix_listener_in_tmp": """
import os, socket, threading
def probe():
    srv = socket.socket(socket.AF_UNIX)
    srv.bind("/tmp/srv.sock")
    srv.listen(1)
    threading.Thread(target=lambda: socket.socket(socket.AF_UNIX).connect("/tmp/srv.sock"), daemon=True).start()
    conn, _ = srv.accept()
    return conn.family == socket.AF_UNIX
""",
    "threads": """
import threading
def probe():
    out = []
    ts = [threading.Thread(target=out.append, args=(i * i,)) for i in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
    return sum(out)
""",
    "multiprocessing_pool": """
import multiprocessing
def probe():
    with multiprocessing.get_context("fork").Pool(2) as pool:  # a builtin: pickled by name
        return sum(pool.starmap(pow, [(x, 2) for x in range(10)]))
""",
    "multiprocessing_pipe_and_queue": """
import multiprocessing
def child(conn, q):
    conn.send(conn.recv() + 1)
    q.put(7)
def probe():
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(b, q))
    p.start()
    a.send(41)
    got = a.recv() + q.get(timeout=10)
    p.join()
    return got
""",
    "shared_memory_small": """
from multiprocessing import shared_memory
def probe():
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    shm.buf[:3] = b"abc"
    data = bytes(shm.buf[:3]).decode()
    shm.close(); shm.unlink()
    return data
""",
    # glibc asks netlink which address families are configured; refused, it assumes both.
    "getaddrinfo_addrconfig": """
import socket
def probe():
    return len(socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)) > 0
""",
    "asyncio": """
import asyncio
async def twice(x):
    await asyncio.sleep(0)
    return 2 * x
def probe():
    return asyncio.run(twice(21))
""",
}
HONEST_EXPECTED = {
    "unix_socketpair_echo": "ping",
    "inet_sockets_can_be_created": 4,
    "unix_listener_in_tmp": True,
    "threads": sum(i * i for i in range(8)),
    "multiprocessing_pool": sum(i * i for i in range(10)),
    "multiprocessing_pipe_and_queue": 49,
    "shared_memory_small": "abc",
    "asyncio": 42,
    "getaddrinfo_addrconfig": True,
}


@needs_sandbox
class TestHonestProgramsStillWork:
    @pytest.mark.parametrize("name", sorted(HONEST))
    def test_probe_value(self, name: str) -> None:
        assert probe(HONEST[name]) == HONEST_EXPECTED[name]

    def test_scored_through_verify_code(self) -> None:
        code = HONEST["multiprocessing_pipe_and_queue"] + "\ndef answer():\n    return probe()\n"
        tests = {"setup": "", "asserts": ["assert answer() == 49"]}
        assert verify_code(f"```python\n{code}\n```", tests, timeout_s=10) == 1.0


PROBE_FROM_A_VENV = """
import json, sys
from iprime.verifiers.sandbox import SandboxLimits, run_tests
code = sys.argv[1]
run = run_tests(code, calls=[{"i": 0, "exprs": ["probe()"]}], limits=SandboxLimits(wall_s=20), isolation="namespaces")
outcome = run.calls.get(0)
print(json.dumps([outcome.ok, outcome.values, outcome.reason] if outcome else [False, [], run.error]))
"""


@needs_sandbox
def test_an_interpreter_under_tmp_stays_visible_inside(tmp_path: Path) -> None:
    """The sandbox's /tmp is a fresh tmpfs; a virtual environment that lives under the host's
    /tmp (a CI checkout there) must still be visible inside it: its third-party packages, and
    the interpreter that multiprocessing re-executes (``shared_memory``'s resource tracker).
    Mounted over them, they were gone: the tracker's exec failed silently and the program got
    ``BrokenPipeError``, and every third-party import ``ModuleNotFoundError``."""
    if not str(tmp_path).startswith("/tmp/") or os.geteuid() != 0:
        pytest.skip("needs a temporary folder under /tmp and root (isolation='namespaces')")
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "probe_third_party.py").write_text("VALUE = 'third-party'\n")
    code = HONEST["shared_memory_small"] + "\nimport probe_third_party\n_probe = probe\n"
    code += "def probe():\n    return [_probe(), probe_third_party.VALUE]\n"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *sys.path[1:]])}
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE_FROM_A_VENV, code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, values, reason = json.loads(done.stdout.strip().splitlines()[-1])
    assert ok and values == [["abc", "third-party"]], reason
