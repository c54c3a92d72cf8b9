"""Issue 14: hostile programs from the sandbox audit. Each one got through the old sandbox
(reward hacks scored 1.0, leaks reached the host, cleanup or the host itself failed);
none may get through now. The attack tests use only ``verify_code``/``verify_code_detailed``
with dict tests, so this file also runs against the old code (where they fail).

The non-root tests run the verifier as a real unprivileged uid (``setpriv``-style, from
root, in a private mount namespace that makes the interpreter reachable), once where the
kernel allows unprivileged user namespaces and once where a seccomp filter forbids them
(as Docker's default profile does).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
import warnings
from pathlib import Path

import pytest
from sandbox_available import needs_sandbox

import iprime
from iprime.verifiers import verify_code, verify_code_detailed

TIMEOUT = 3.0
REPO = Path(__file__).resolve().parents[1]
SRC = Path(iprime.__file__).resolve().parents[1]  # the iprime under test (the unprivileged runs import it too)


def py(code: str) -> str:
    return f"My solution:\n```python\n{code}\n```\n"


# Two shapes of the same tests: asserts the host can judge itself, and a HumanEval-style
# check(candidate) block that only a judge process can run.
ADD_PATTERN = {"setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
ADD_JUDGED = {
    "setup": 'def add(a, b):\n    """Return a + b."""\n',
    "asserts": [
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n\ncheck(add)"
    ],
}
SHAPES = {"pattern": ADD_PATTERN, "judged": ADD_JUDGED}
RIGHT = "def add(a, b):\n    return a + b"

# ------------------------------------------------------------------ reward hacks
# The old sandbox ran the solution in the same interpreter as the harness that decided
# whether a test passed. Every program below has a wrong (or no real) add().

REWARD_HACKS = {
    "eq_always_true": """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
def add(a, b):
    return Anything()
""",
    "replace_builtins_exec": """
import builtins
_real_exec = builtins.exec
def _exec(code, *args, **kwargs):
    if getattr(code, "co_filename", "").startswith("<test"):
        return None  # the test "ran" and raised nothing
    return _real_exec(code, *args, **kwargs)
builtins.exec = _exec
def add(a, b):
    return 0
""",
    "patch_harness_through_main": """
import __main__
for _name, _fn in list(vars(__main__).items()):
    if callable(_fn) and any(w in _name.lower() for w in ("fork", "judge", "verdict")):
        setattr(__main__, _name, lambda *a, **k: (True, "passed"))
def add(a, b):
    return 0
""",
    "stack_walk_to_reporter": """
import os, sys
_f = sys._getframe(0)
while _f is not None:
    _rep, _job = _f.f_locals.get("reporter"), _f.f_locals.get("job")
    if _rep is not None and isinstance(_job, dict):
        for _i in range(len(_job.get("asserts", []))):
            _rep.send(event="test", index=_i, passed=True, reason="passed")
        _rep.send(event="done")
        os._exit(0)
    _f = _f.f_back
def add(a, b):
    return 0
""",
    "patch_os_write_and_exit": """
import os
_write, _exit = os.write, os._exit
def _forged_write(fd, data):
    if isinstance(data, (bytes, bytearray)) and b":fail:" in data:
        data = bytes(data).split(b":fail:")[0] + b":ok"
    return _write(fd, data)
os.write = _forged_write
os._exit = lambda code: _exit(0)
def add(a, b):
    return 0
""",
    "hard_code_answers_from_harness_memory": """
import gc, re, sys
_answers = {}
def _scan(text):
    for m in re.finditer(r"\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)", text):
        _answers[(int(m[1]), int(m[2]))] = int(m[3])
_f = sys._getframe(0)
while _f is not None:  # the harness's frames: its job and its tests
    for _v in list(_f.f_locals.values()):
        if isinstance(_v, dict):
            _scan(repr(_v))
    _f = _f.f_back
for _o in gc.get_objects():  # and every string anywhere in this process
    if isinstance(_o, (dict, list, tuple)):
        for _v in (_o.values() if isinstance(_o, dict) else _o):
            if isinstance(_v, str) and "==" in _v:
                _scan(_v)
def add(a, b):
    return _answers.get((a, b), 0)
""",
}


@needs_sandbox
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_right_answer_passes_in_both_shapes(shape: str) -> None:
    assert verify_code(py(RIGHT), SHAPES[shape], timeout_s=TIMEOUT) == 1.0
    assert verify_code(py("def add(a, b):\n    return a - b"), SHAPES[shape], timeout_s=TIMEOUT) == 0.0


@needs_sandbox
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("hack", sorted(REWARD_HACKS))
def test_reward_hack_scores_zero(hack: str, shape: str) -> None:
    result = verify_code_detailed(py(REWARD_HACKS[hack]), SHAPES[shape], timeout_s=TIMEOUT)
    assert result.score == 0.0, result.reason


@needs_sandbox
def test_judge_process_is_out_of_the_solutions_reach() -> None:
    # The judge holds the expected values of a judged test. From the solution process,
    # try to signal or read every other process in sight; add() is right only if one of
    # those attempts succeeded, so a score of 1.0 would mean the judge was reachable.
    code = """
import os, signal
def add(a, b):
    me = os.readlink("/proc/self")
    reached = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        for name in ("mem", "environ"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as fh:
                    fh.read(1)
                reached.append((pid, name))
            except OSError:
                pass
        if int(pid) == os.getpid():
            continue  # as the init of its own PID namespace, "1" is this process
        try:
            os.kill(int(pid), signal.SIGSTOP)
            os.kill(int(pid), signal.SIGCONT)
            reached.append((pid, "signal"))
        except OSError:
            pass
    return a + b if reached else 0
"""
    result = verify_code_detailed(py(code), ADD_JUDGED, timeout_s=TIMEOUT)
    assert result.score == 0.0, result.reason


@needs_sandbox
@pytest.mark.parametrize("shape", ["pattern", "call", "stdio"])
def test_forged_messages_on_every_descriptor_neither_pass_nor_crash_the_host(shape: str) -> None:
    # Whatever reaches the host from the candidate's side is parsed defensively: junk,
    # absurd numbers, malformed encodings and claims of success change nothing.
    junk = [
        b'{"event": "judged", "index": 0, "passed": true, "reason": "passed"}',
        b'{"event": "done"}',
        b'{"i": 0, "v": "[\\"l\\", []]"}',
        b'{"i": 0, "v": "[\\"y\\", \\"zz\\"]"}',
        b'{"i": 0, "v": "[\\"x\\", \\"0xZZ\\"]"}',
        b'{"i": 0, "v": "' + b"[" * 5000 + b'"}',
        b'{"i": 0, "v": 1' + b"0" * 5000 + b"}",
        b'{"i": 0, "stdout": 3, "ok": true}',
        b'{"i": "0", "v": "3"}',
        b"[1, 2, 3]",
        b"\xff\xfe not json",
    ]
    code = (
        "import os\n"
        f"junk = {junk!r}\n"
        "for fd in range(3, 64):\n"
        "    for line in junk:\n"
        "        try:\n            os.write(fd, line + b'\\n')\n        except OSError:\n            pass\n"
        "def add(a, b):\n    return 0\n"
    )
    tests = {
        "pattern": ADD_PATTERN,
        "call": {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]},
        "stdio": {"inputs": [""], "outputs": ["3"]},
    }[shape]
    result = verify_code_detailed(py(code), tests, timeout_s=TIMEOUT)
    assert result.score == 0.0, result.reason


# ------------------------------------------------------------------ leaks


@needs_sandbox
def test_output_symlink_to_a_root_only_file_leaks_nothing(tmp_path) -> None:
    secret = f"TOPSECRET-{uuid.uuid4().hex}"
    target = tmp_path / "root-only.txt"
    target.write_text(secret)
    os.chmod(target, 0o600)
    code = f"import os\nos.unlink('stdout_0.txt')\nos.symlink({str(target)!r}, 'stdout_0.txt')"
    # Had the host read the link's target, the "output" would be the secret: a pass.
    result = verify_code_detailed(py(code), {"inputs": [""], "outputs": [secret]}, timeout_s=TIMEOUT)
    assert result.score == 0.0, result.reason
    result = verify_code_detailed(py(code), {"inputs": [""], "outputs": ["42"]}, timeout_s=TIMEOUT)
    assert result.score == 0.0 and "TOPSECRET" not in result.reason, result.reason


@needs_sandbox
def test_output_symlink_to_proc_self_environ_leaks_nothing(monkeypatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("IPRIME_AUDIT_CANARY", canary)
    code = "import os\nos.unlink('stdout_0.txt')\nos.symlink('/proc/self/environ', 'stdout_0.txt')"
    with open("/proc/self/environ") as fh:
        environ = fh.read()
    result = verify_code_detailed(py(code), {"inputs": [""], "outputs": [environ]}, timeout_s=TIMEOUT)
    assert result.score == 0.0 and canary not in result.reason.split("expected")[0], result.reason


@needs_sandbox
def test_fifo_in_place_of_the_output_does_not_block_the_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = "import os\nos.unlink('stdout_0.txt')\nos.mkfifo('stdout_0.txt')\nprint('1')"
    results = []
    worker = threading.Thread(
        target=lambda: results.append(verify_code(py(code), {"inputs": [""], "outputs": ["1"]}, timeout_s=TIMEOUT)),
        daemon=True,
    )
    worker.start()
    worker.join(TIMEOUT + 30)
    blocked = worker.is_alive()
    if blocked:  # unblock the host (open the FIFO's other end), so the failure leaves nothing behind
        for fifo in tmp_path.rglob("stdout_*"):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(10)
    assert not blocked, "the host blocked on a FIFO the sandbox made"
    assert results == [1.0]  # what the program printed, to the file it was given


@needs_sandbox
@pytest.mark.parametrize("isolation", [None, "rlimits"])
def test_deep_directories_cannot_defeat_cleanup(tmp_path, monkeypatch, isolation) -> None:
    # 2,500 nested directories (past the recursion limit of shutil.rmtree and past
    # PATH_MAX) with a file at the bottom; the solution is otherwise right.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    os.chmod(tmp_path, 0o755)  # rlimits as root: the sandbox's uid must reach its directory
    code = (
        "import os\n"
        "for _ in range(2500):\n    os.mkdir('d')\n    os.chdir('d')\n"
        "open('hidden.bin', 'wb').write(b'x' * 100000)\n" + RIGHT
    )
    kwargs = {} if isolation is None else {"isolation": isolation}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rlimits warns; that is tested elsewhere
            score = verify_code(py(code), ADD_PATTERN, timeout_s=TIMEOUT, **kwargs)
        assert score == 1.0
        assert list(tmp_path.iterdir()) == [], "the sample's files outlived it"
    finally:  # whatever is left (a failure) must not trip pytest's own cleanup later
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path)], check=False)


@needs_sandbox
def test_disk_quota_caps_the_number_of_files() -> None:
    code = """
def touch(n):
    made = 0
    try:
        for i in range(n):
            open(f"f{i}", "w").close()
            made += 1
    except OSError:
        pass
    return made
"""
    assert verify_code(py(code), {"setup": "", "asserts": ["assert touch(5000) == 5000"]}, timeout_s=10) == 0.0


@needs_sandbox
def test_disk_quota_caps_bytes_written() -> None:
    # One sample of the audit wrote 960 MB in 1.6 s. Here 12 files of 8 MiB (each below
    # the file-size limit) would be 96 MiB; the quota stops it.
    code = """
def fill():
    written = 0
    try:
        for i in range(12):
            with open(f"blob{i}", "wb") as fh:
                for _ in range(8):
                    fh.write(b"x" * (1 << 20))
                    written += 1 << 20
    except OSError:
        pass
    return written
"""
    assert verify_code(py(code), {"setup": "", "asserts": ["assert fill() == 96 * 2 ** 20"]}, timeout_s=10) == 0.0


_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
_ADD_KEY = {"x86_64": 248, "aarch64": 217}.get(os.uname().machine)


@needs_sandbox
@pytest.mark.skipif(_KEYCTL is None, reason="keyctl syscall number unknown on this architecture")
def test_session_keyring_is_not_readable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # A session keyring of this test process alone, holding a secret key.
    if libc.syscall(_KEYCTL, 1, b"iprime-audit") < 0:  # KEYCTL_JOIN_SESSION_KEYRING
        pytest.skip(f"cannot create a session keyring: {os.strerror(ctypes.get_errno())}")
    secret = f"keyring-secret-{uuid.uuid4().hex}".encode()
    key = libc.syscall(_ADD_KEY, b"user", b"iprime-audit-key", secret, len(secret), -3)
    if key < 0:
        pytest.skip(f"cannot add a key: {os.strerror(ctypes.get_errno())}")
    code = f"""
import ctypes, struct
def steal():
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(65536)
    n = libc.syscall({_KEYCTL}, 11, -3, buf, 65536)  # KEYCTL_READ the session keyring: its key ids
    if n < 0:
        return ""
    for kid in struct.unpack(f"{{n // 4}}i", buf.raw[: n - n % 4]):
        m = libc.syscall({_KEYCTL}, 11, kid, buf, 65536)
        if m > 0 and buf.raw[:m].startswith(b"keyring-secret-"):
            return buf.raw[:m].decode()
    return ""
"""
    try:
        tests = {"setup": "", "asserts": [f"assert steal() == {secret.decode()!r}"]}
        assert verify_code(py(code), tests, timeout_s=TIMEOUT) == 0.0
    finally:
        libc.syscall(_KEYCTL, 3, key)  # KEYCTL_REVOKE


@needs_sandbox
def test_unix_sockets_under_run_are_unreachable() -> None:
    path = f"/run/iprime-audit-{uuid.uuid4().hex[:12]}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen(1)
        listener.setblocking(False)
        code = f"""
import socket
def connected():
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({path!r})
        s.sendall(b"hello from the sandbox")
        return True
    except OSError:
        return False
"""
        assert verify_code(py(code), {"setup": "", "asserts": ["assert connected()"]}, timeout_s=TIMEOUT) == 0.0
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


@needs_sandbox
def test_no_user_namespaces_inside_the_sandbox() -> None:
    code = """
import ctypes, subprocess
def nested_userns():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
        return True
    try:
        return subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0
    except OSError:
        return False
"""
    assert verify_code(py(code), {"setup": "", "asserts": ["assert nested_userns()"]}, timeout_s=TIMEOUT) == 0.0


@needs_sandbox
def test_no_read_access_to_the_checkout_data_or_home_directories() -> None:
    readme = REPO / "README.md"
    data = REPO / "src" / "iprime" / "eval" / "data" / "humaneval.jsonl.gz"
    homes = sorted(os.listdir("/home")) if os.path.isdir("/home") else []
    assert readme.exists() and data.exists()
    code = f"""
import gzip, os
def look():
    found = []
    try:
        found.append(open({str(readme)!r}).read(10) != "")
    except OSError:
        found.append(False)
    try:
        found.append("check" in gzip.open({str(data)!r}, "rt").read())  # the benchmark's tests
    except OSError:
        found.append(False)
    found.append(sorted(os.listdir("/home")) if os.path.isdir("/home") else [])
    return found
"""
    tests = {"setup": "", "asserts": [f"assert look() == [True, True, {homes!r}]"]}
    assert verify_code(py(code), tests, timeout_s=TIMEOUT) == 0.0


# ------------------------------------------------------------------ isolation options


@needs_sandbox
def test_rlimits_isolation_is_an_opt_in_that_warns(monkeypatch) -> None:
    from iprime.verifiers.sandbox import InsecureSandboxWarning

    with pytest.warns(InsecureSandboxWarning, match="rlimits"):
        assert verify_code(py(RIGHT), ADD_PATTERN, timeout_s=TIMEOUT, isolation="rlimits") == 1.0
    monkeypatch.setenv("IPRIME_SANDBOX", "rlimits")
    with pytest.warns(InsecureSandboxWarning):
        assert verify_code(py(RIGHT), ADD_JUDGED, timeout_s=TIMEOUT) == 1.0
    monkeypatch.setenv("IPRIME_SANDBOX", "chroot")
    with pytest.raises(ValueError, match="IPRIME_SANDBOX"):
        verify_code(py(RIGHT), ADD_PATTERN)


# ------------------------------------------------------------------ non-root users

UNPRIVILEGED_UID = 2_345_678  # no passwd entry, outside the sandbox's own uid range

# Runs as root inside `unshare --mount`: covers the directories the uid cannot traverse
# on the way to the interpreter and the checkout with tmpfs mounts holding just those
# paths (bound back), drops to the uid, optionally forbids user namespaces with a seccomp
# filter, and runs the script.
LAUNCHER = r"""
import ctypes, ctypes.util, json, os, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s else None
    if libc.mount(enc(src), dst.encode(), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {src} on {dst}")
uid, script, restrict, needed = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", json.loads(sys.argv[4])
blocked = {}
for path in sorted({os.path.realpath(p) for p in needed} | {os.path.abspath(p) for p in needed}):
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & 0o001:
            blocked.setdefault(ancestor, []).append(path)
            break
for ancestor, inner in blocked.items():
    handles = [(p, os.open(p, os.O_PATH)) for p in inner if os.path.exists(p)]
    mount("tmpfs", ancestor, "tmpfs", 0, "size=1m,mode=0755")
    for path, fd in handles:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, 4096 | 16384)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
if restrict:  # refuse unshare/clone with CLONE_NEWUSER (and clone3), as Docker's default profile does
    import struct
    audit, clone, unshare = {"x86_64": (0xC000003E, 56, 272), "aarch64": (0xC00000B7, 220, 97)}[os.uname().machine]
    prog = [(0x20, 0, 0, 4), (0x15, 1, 0, audit), (0x06, 0, 0, 0x7FFF0000), (0x20, 0, 0, 0),
            (0x15, 0, 1, 435), (0x06, 0, 0, 0x50026), (0x15, 1, 0, clone), (0x15, 0, 3, unshare),
            (0x20, 0, 0, 16), (0x45, 0, 1, 0x10000000), (0x06, 0, 0, 0x50001), (0x06, 0, 0, 0x7FFF0000)]
    code = b"".join(struct.pack("=HBBI", *op) for op in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    libc.prctl(38, 1, 0, 0, 0)
    if libc.prctl(22, 2, ctypes.byref(Fprog(len(prog), ctypes.addressof(buf))), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONPATH": needed[-1]}
env.update(json.loads(sys.argv[5]))
os.execve(sys.executable, [sys.executable, script], env)
"""


def run_unprivileged(tmp_path: Path, script: str, *, restrict_userns: bool = False, env: dict | None = None) -> dict:
    if os.geteuid() != 0:
        pytest.skip("creating an unprivileged user for the test needs root")
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    work = Path(tempfile.mkdtemp(prefix="iprime-nonroot-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        (work / "launcher.py").write_text(LAUNCHER)
        (work / "script.py").write_text(textwrap.dedent(script))
        for name in ("launcher.py", "script.py"):
            os.chmod(work / name, 0o644)
        needed = [sys.base_prefix, sys.prefix, str(SRC)]
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-I", str(work / "launcher.py")]
            + [str(UNPRIVILEGED_UID), str(work / "script.py"), "1" if restrict_userns else "0"]
            + [json.dumps(needed), json.dumps(env or {})],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


def _userns_allowed_here() -> str | None:
    for path, bad in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                return f"{path} is {bad}: this kernel gives unprivileged users no user namespaces"
        except OSError:
            continue
    return None


NON_ROOT_SCRIPT = """
import json, os, warnings
from iprime.verifiers.code import verify_code, verify_code_detailed
from iprime.verifiers import sandbox

def py(code):
    return "```python\\n" + code + "\\n```"

out = {"uid": os.getuid()}
ADD = {"setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
JUDGED = {"setup": "", "asserts": ["def check(c):\\n    assert c(1, 2) == 3\\n\\ncheck(add)"]}
right, wrong = "def add(a, b):\\n    return a + b", "def add(a, b):\\n    return a - b"
out["scores"] = [verify_code(py(c), t, timeout_s=5) for t in (ADD, JUDGED) for c in (right, wrong)]
out["stdio"] = verify_code(py("a, b = map(int, input().split())\\nprint(a + b)"), {"inputs": ["1 2"], "outputs": ["3"]})
out["call"] = verify_code(py(right), {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]})
out["isolation"] = sandbox.check_isolation_available()

secret = os.path.join(os.environ["SECRET_DIR"], "mine.txt")
probe = '''
import ctypes, os, socket, subprocess
def probe():
    found = {"uid": os.getuid(), "home": sorted(os.listdir("/home")) if os.path.isdir("/home") else []}
    found["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
    found["userns"] = ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0
    try:
        found["secret"] = open(SECRET).read()
    except OSError as exc:
        found["secret"] = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", 22), timeout=1)
        found["net"] = "connected"
    except OSError as exc:
        found["net"] = type(exc).__name__
    found["write_src"] = os.access(SRC, os.W_OK) or os.path.exists(SRC)
    return found
'''.replace("SECRET", repr(secret)).replace("SRC", repr(os.environ["SRC_DIR"]))
run = sandbox.run_tests(probe, calls=[{"i": 0, "fn": "probe", "args": []}], limits=sandbox.SandboxLimits(wall_s=5))
out["probe"] = run.calls[0].values[0] if run.calls[0].ok else run.calls[0].reason
print(json.dumps(out))
"""


def test_non_root_user_gets_user_namespace_isolation(tmp_path) -> None:
    why = _userns_allowed_here()
    if why:
        pytest.skip(why)
    secret_dir = Path(tempfile.mkdtemp(prefix="iprime-user-secret-", dir="/tmp"))
    try:
        (secret_dir / "mine.txt").write_text("the user's own secret")
        os.chown(secret_dir, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
        os.chown(secret_dir / "mine.txt", UNPRIVILEGED_UID, UNPRIVILEGED_UID)
        os.chmod(secret_dir / "mine.txt", 0o600)
        out = run_unprivileged(tmp_path, NON_ROOT_SCRIPT, env={"SECRET_DIR": str(secret_dir), "SRC_DIR": str(SRC)})
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
    assert out["uid"] == UNPRIVILEGED_UID and out["isolation"] == "userns"
    assert out["scores"] == [1.0, 0.0, 1.0, 0.0] and out["stdio"] == 1.0 and out["call"] == 1.0
    probe = out["probe"]
    assert isinstance(probe, dict), probe
    assert set(probe["caps"]) == {"0000000000000000"}, probe  # root of its namespace, but powerless
    assert probe["userns"] is False
    assert probe["secret"] == "FileNotFoundError"  # the user's own files are not in its world
    assert probe["net"] != "connected" and probe["home"] == [] and probe["write_src"] is False


def test_non_root_without_user_namespaces_is_refused_loudly(tmp_path) -> None:
    script = """
    import json, warnings
    from iprime.verifiers.code import verify_code, verify_code_detailed
    from iprime.verifiers.sandbox import SandboxUnavailable
    out = {}
    for response in ("no code at all", "```python\\ndef add(a, b):\\n    return a + b\\n```"):
        try:
            verify_code_detailed(response, {"asserts": ["assert add(1, 2) == 3"]})
            out.setdefault("raised", []).append(None)
        except SandboxUnavailable as exc:
            out.setdefault("raised", []).append(str(exc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out["rlimits"] = verify_code(
                "```python\\ndef add(a, b):\\n    return a + b\\n```", {"asserts": ["assert add(1, 2) == 3"]},
                isolation="rlimits",
            )
        except Exception as exc:
            out["rlimits"] = repr(exc)
    out["warnings"] = [type(w.message).__name__ for w in caught]
    print(json.dumps(out))
    """
    out = run_unprivileged(tmp_path, script, restrict_userns=True)
    assert all(out["raised"]), out  # even a response without code: never a silent 0
    message = out["raised"][0]
    for needle in ("apparmor_restrict_unprivileged_userns", "unprivileged_userns_clone", "max_user_namespaces"):
        assert needle in message
    assert "IPRIME_SANDBOX=rlimits" in message
    assert out["rlimits"] == 1.0 and "InsecureSandboxWarning" in out["warnings"]
