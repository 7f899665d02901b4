"""A pool of real OpenSSH ``sshd`` servers on 127.0.0.1 standing in for rented GPU machines.

Each emulated instance gets its own directory holding a fresh ed25519 host key, an
``sshd_config``, the ``authorized_keys`` file (exactly the keys the cloud emulator was
given), the sshd log, and a ``bin/`` directory with a fake ``nvidia-smi`` (absent when the
facts say there is no driver) and, when disk facts are given, a fake ``df``.

``bin/`` comes first on ``PATH`` for ``ssh host CMD``, paramiko ``exec_command``, scp and
interactive shells. sshd's ``SetEnv PATH=<bin>:... SHLVL=1`` sets the session environment
(``SHLVL=1`` stops bash, run by sshd as ``bash -c``, from sourcing ``~/.bashrc``, which on a
developer machine may prepend to PATH, print text or be slow), and a ``ForceCommand``
wrapper re-asserts ``<bin>`` first right before running ``$SSH_ORIGINAL_COMMAND`` through
the login shell; sftp subsystem requests are handed to the external ``sftp-server``.

Only the local user running the tests can log in (``SshdPool.login_user``): as root sshd
runs privileged and ``root`` logs in with a key (``PermitRootLogin prohibit-password``);
as a normal user sshd runs unprivileged and only that same user can log in.

``SshdPool`` implements the ``ssh_backend`` protocol used by the loopback cloud emulators::

    start(instance_key, authorized_keys, gpu) -> (host, port)
    set_keys(instance_key, authorized_keys) -> None
    stop(instance_key) -> None
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pathlib
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from gpushopper.sandbox.base import free_port as _free_port  # tests patch it here

HOST = "127.0.0.1"
SSHD_MISSING = "OpenSSH server (sshd) not found: install it with 'apt-get install openssh-server'"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_BIND_ATTEMPTS = 5
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PRIVSEP_DIR = pathlib.Path("/run/sshd")

GPU_DEFAULTS: dict[str, Any] = {
    "name": "NVIDIA GeForce RTX 4090",
    "count": 1,
    "memory_mib": 24564,
    "driver_version": "570.124.04",
    "cuda_version": "12.8",
}


class SshdError(RuntimeError):
    """sshd could not be started (the message carries the tail of its log)."""


def login_user() -> str:
    """Name of the user this process runs as: the only one sshd (run by us) lets in."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def find_sshd() -> str | None:
    """Absolute path of the OpenSSH server binary, or None."""
    found = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    return found


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise SshdError("ssh-keygen not found: install it with 'apt-get install openssh-client'")
    return found


def make_keypair(
    directory: pathlib.Path | str, name: str = "id_ed25519"
) -> tuple[pathlib.Path, str]:
    """Create an ed25519 key pair in ``directory``; return (private key path, public key text).

    The private key has mode 0600 and no passphrase; the public text has no trailing newline.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    for p in (private, private.with_name(name + ".pub")):
        if p.exists():
            p.unlink()
    subprocess.run(
        [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", f"gpu-shopper-test-{name}"]
        + ["-f", str(private)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    private.chmod(0o600)
    public = private.with_name(name + ".pub").read_text().strip()
    return private, public


def sanitize_key(instance_key: str) -> str:
    """Turn an instance key like ``tensordock:<uuid>`` into a safe directory name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", instance_key).strip("._") or "instance"
    if safe != instance_key:
        safe = f"{safe[:80]}-{hashlib.sha1(instance_key.encode()).hexdigest()[:8]}"
    return safe


def _log_tail(path: pathlib.Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _read_banner(port: int, timeout: float) -> bool:
    """True when something on ``port`` accepts a connection and sends an SSH-2.0 banner."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"SSH-2.0")
    except OSError:
        return False


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_executable(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _python_shebang() -> str:
    exe = sys.executable
    if exe and " " not in exe and os.access(exe, os.X_OK):
        return f"#!{exe} -IS"
    return "#!/usr/bin/env python3"


def _normalized_gpu(gpu: dict[str, Any] | None, instance_key: str) -> dict[str, Any]:
    facts: dict[str, Any] = dict(GPU_DEFAULTS)
    given = dict(gpu or {})
    # None means "absent" for every key except driver_version (None = no driver installed).
    facts.update({k: v for k, v in given.items() if v is not None or k == "driver_version"})
    facts["count"] = int(facts.get("count") or 0)
    facts["memory_mib"] = int(facts.get("memory_mib") or 0)
    facts["seed"] = hashlib.sha256(instance_key.encode()).hexdigest()
    raw_total: Any = given.get("disk_total_gb")
    raw_free: Any = given.get("disk_free_gb")
    if raw_total is None and raw_free is None:
        facts["disk"] = None  # no disk facts: no fake df, the real one answers
    else:
        total = float(raw_total) if raw_total is not None else float(raw_free)
        free = float(raw_free) if raw_free is not None else total * 0.9
        facts["disk"] = {"total_gb": total, "free_gb": min(free, total)}
    return facts


_NVIDIA_SMI = r"""
import json
import sys

FACTS = json.loads(__FACTS__)
UNITS = {
    "memory.total": " MiB",
    "memory.used": " MiB",
    "memory.free": " MiB",
    "memory.reserved": " MiB",
    "utilization.gpu": " %",
    "utilization.memory": " %",
    "power.draw": " W",
    "power.limit": " W",
}
NA = "[N/A]"
SELECTED = list(range(FACTS["count"]))


def gpu_value(field, i):
    seed = FACTS["seed"]
    total = FACTS["memory_mib"]
    values = {
        "index": str(i),
        "count": str(FACTS["count"]),
        "name": FACTS["name"],
        "gpu_name": FACTS["name"],
        "memory.total": str(total),
        "memory.used": "0",
        "memory.free": str(total),
        "memory.reserved": "0",
        "driver_version": FACTS["driver_version"],
        "uuid": "GPU-%s-%s-%s-%s-%s%02x"
        % (seed[0:8], seed[8:12], seed[12:16], seed[16:20], seed[20:30], i),
        "gpu_uuid": None,
        "pci.bus_id": "00000000:%02X:00.0" % (i + 1),
        "utilization.gpu": "0",
        "utilization.memory": "0",
        "temperature.gpu": "35",
        "power.draw": "21.50",
        "power.limit": "450.00",
        "persistence_mode": "Enabled",
        "pstate": "P8",
    }
    values["gpu_uuid"] = values["uuid"]
    if FACTS.get("compute_cap"):
        values["compute_cap"] = str(FACTS["compute_cap"])
    value = values.get(field)
    return NA if value is None else value


def query(fields, fmt):
    opts = {o.strip() for o in fmt.split(",") if o.strip()}
    if "csv" not in opts:
        sys.stderr.write('"%s" is not a valid format.\n' % fmt)
        return 2
    names = [f.strip() for f in fields.split(",") if f.strip()]
    if not names:
        sys.stderr.write("Invalid combination of input arguments.\n")
        return 2
    nounits = "nounits" in opts
    if "noheader" not in opts:
        header = []
        for f in names:
            unit = UNITS.get(f, "").strip()
            header.append(f if nounits or not unit else "%s [%s]" % (f, unit))
        print(", ".join(header))
    for i in SELECTED:
        row = []
        for f in names:
            value = gpu_value(f, i)
            if not nounits and value != NA:
                value += UNITS.get(f, "")
            row.append(value)
        print(", ".join(row))
    return 0


def table():
    drv = FACTS["driver_version"]
    cuda = FACTS.get("cuda_version") or "N/A"
    width = 91
    line = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    out = ["Mon Jan  6 12:00:00 2025       ", "+" + "-" * (width - 2) + "+"]
    head = " NVIDIA-SMI %-22s Driver Version: %-14s CUDA Version: %s" % (drv, drv, cuda)
    out.append("|" + head.ljust(width - 2) + "|")
    out.append(line.replace("+", "|", 1))
    out.append("| GPU  Name                 Persistence-M | Bus-Id          Disp.A |"
               " Volatile Uncorr. ECC |")
    out.append("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage |"
               " GPU-Util  Compute M. |")
    out.append("|                                         |                        |"
               "               MIG M. |")
    out.append("|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|")
    total = FACTS["memory_mib"]
    for i in SELECTED:
        name = FACTS["name"] if len(FACTS["name"]) <= 29 else FACTS["name"][:26] + "..."
        left = ("%4d  %s" % (i, name)).ljust(37) + "On  "
        out.append("|%s| %s Off |%21s |" % (left.ljust(41), gpu_value("pci.bus_id", i).rjust(18),
                                           "Off"))
        mem = "0MiB / %dMiB" % total
        out.append("|  0%%   35C    P8             21W /  450W | %22s |      0%%      Default |"
                   % mem)
        out.append("|                                         |                        |"
                   "                  N/A |")
        out.append(line)
    out.append(" " * width)
    out.append("+" + "-" * (width - 2) + "+")
    out.append("| Processes:".ljust(width - 1) + "|")
    out.append("|  GPU   GI   CI              PID   Type   Process name".ljust(width - 12)
               + "GPU Memory |")
    out.append("|        ID   ID".ljust(width - 12) + "Usage      |")
    out.append("|" + "=" * (width - 2) + "|")
    out.append("|  No running processes found".ljust(width - 1) + "|")
    out.append("+" + "-" * (width - 2) + "+")
    print("\n".join(out))
    return 0


def main(argv):
    if FACTS["count"] < 1:
        print("No devices were found")
        return 6
    fields = None
    fmt = None
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--query-gpu="):
            fields = a.split("=", 1)[1]
        elif a == "--query-gpu" and i + 1 < len(argv):
            i += 1
            fields = argv[i]
        elif a.startswith("--format="):
            fmt = a.split("=", 1)[1]
        elif a == "--format" and i + 1 < len(argv):
            i += 1
            fmt = argv[i]
        elif a.startswith("--id=") or (a in ("-i", "--id") and i + 1 < len(argv)):
            if "=" in a:
                ids = a.split("=", 1)[1]
            else:
                i += 1
                ids = argv[i]
            try:
                wanted = [int(x) for x in ids.split(",")]
            except ValueError:
                wanted = [-1]
            if any(x not in range(FACTS["count"]) for x in wanted):
                print("No devices were found")
                return 6
            SELECTED[:] = wanted
        else:
            rest.append(a)
        i += 1
    if fields is not None:
        return query(fields, fmt or "")
    if not rest:
        return table()
    if rest in (["-L"], ["--list-gpus"]):
        for i in SELECTED:
            print("GPU %d: %s (UUID: %s)" % (i, FACTS["name"], gpu_value("uuid", i)))
        return 0
    sys.stderr.write("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n")
    return 2


sys.exit(main(sys.argv[1:]))
"""

_DF = r"""
import json
import os
import sys

DISK = json.loads(__DISK__)
REAL_DF = __REAL_DF__


def real():
    os.execv(REAL_DF, [REAL_DF] + sys.argv[1:])


def main(argv):
    posix = False
    block = None
    paths = []
    for a in argv:
        if a in ("-P", "--portability"):
            posix = True
        elif a == "-k":
            block = 1024
        elif a in ("-Pk", "-kP"):
            posix, block = True, 1024
        elif a in ("-PB1", "-B1P"):
            posix, block = True, 1
        elif a in ("-B1", "--block-size=1"):
            block = 1
        elif a.startswith("-"):
            real()
        else:
            paths.append(a)
    if not posix or not paths:
        real()
    block = block or 1024
    total = int(DISK["total_gb"] * 10**9)
    free = int(DISK["free_gb"] * 10**9)
    used = total - free
    cap = -(-used * 100 // total) if total else 0
    label = "1024-blocks" if block == 1024 else "1-blocks"
    print("%-14s %11s %11s %11s %8s %s" % ("Filesystem", label, "Used", "Available", "Capacity",
                                           "Mounted on"))
    for _ in paths:
        print("%-14s %11d %11d %11d %7d%% /" % ("overlay", total // block, used // block,
                                               free // block, cap))
    return 0


sys.exit(main(sys.argv[1:]))
"""


_SFTP_SERVER_CANDIDATES = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/local/libexec/sftp-server",
)


def find_sftp_server() -> str | None:
    """Path of OpenSSH's external ``sftp-server`` binary, or None."""
    for candidate in _SFTP_SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


_SESSION_WRAPPER = """#!/bin/sh
# ForceCommand for a fake GPU instance: make sure the fake tools come first on PATH even
# if the login shell's rc files changed PATH, then run what the client asked for through
# the login shell, as sshd itself would have.
case ":$PATH:" in
    :__BIN__:*) ;;
    *) PATH=__BIN__:"$PATH" ;;
esac
export PATH
shell=${SHELL:-/bin/sh}
case "${SSH_ORIGINAL_COMMAND-}" in
    __SFTP__ | internal-sftp) exec __SFTP__ ;;
esac
# The wrapper counts as one shell level (so a nested bash skips ~/.bashrc); the inline
# PATH fix-up still wins over any rc file another shell may source (e.g. ~/.zshenv).
SHLVL=$((${SHLVL:-0} + 1))
export SHLVL
if [ -n "${SSH_ORIGINAL_COMMAND+set}" ]; then
    exec "$shell" -c '
case ":$PATH:" in :__BIN__:*) ;; *) PATH=__BIN__:"$PATH"; export PATH ;; esac
eval "$SSH_ORIGINAL_COMMAND"'
fi
if [ -t 0 ]; then
    case "$shell" in
        */bash) exec "$shell" --rcfile __BASHRC__ -i ;;
    esac
    exec "$shell" -i
fi
exec "$shell"
"""

_INTERACTIVE_BASHRC = """# rc file for interactive shells on a fake GPU instance
[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc
[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"
case ":$PATH:" in
    :__BIN__:*) ;;
    *) PATH=__BIN__:"$PATH" ;;
esac
export PATH
"""


def write_session_wrapper(
    directory: pathlib.Path, bin_dir: pathlib.Path, sftp: str
) -> pathlib.Path:
    """Write the ForceCommand wrapper (and its interactive bash rc file); return its path."""
    if shlex.quote(str(bin_dir)) != str(bin_dir):
        raise SshdError(f"instance dir must be a plain shell-safe path, got {str(bin_dir)!r}")
    rc = directory / "session.bashrc"
    rc.write_text(_INTERACTIVE_BASHRC.replace("__BIN__", shlex.quote(str(bin_dir))))
    wrapper = directory / "session.sh"
    text = (
        _SESSION_WRAPPER.replace("__BIN__", shlex.quote(str(bin_dir)))
        .replace("__SFTP__", shlex.quote(sftp))
        .replace("__BASHRC__", shlex.quote(str(rc)))
    )
    _write_executable(wrapper, text)
    return wrapper


def _real_df() -> str:
    for candidate in ("/bin/df", "/usr/bin/df"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("df", path=_SYSTEM_PATH) or "/bin/df"


def write_fake_bin(bin_dir: pathlib.Path, facts: dict[str, Any]) -> None:
    """(Re)create the fake GPU tools in ``bin_dir`` from normalized facts."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("nvidia-smi", "df"):
        if (bin_dir / name).exists():
            (bin_dir / name).unlink()
    shebang = _python_shebang()
    if facts.get("driver_version") is not None:
        smi_facts = {k: v for k, v in facts.items() if k != "disk"}
        body = _NVIDIA_SMI.replace("__FACTS__", repr(json.dumps(smi_facts)))
        _write_executable(bin_dir / "nvidia-smi", shebang + "\n" + body.lstrip())
    if facts.get("disk") is not None:
        body = _DF.replace("__DISK__", repr(json.dumps(facts["disk"])))
        body = body.replace("__REAL_DF__", repr(_real_df()))
        _write_executable(bin_dir / "df", shebang + "\n" + body.lstrip())


@dataclass
class SshdInstance:
    """One running fake machine (see ``SshdPool.instance``)."""

    key: str
    directory: pathlib.Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path
    pid_path: pathlib.Path
    authorized_keys_path: pathlib.Path
    host_key_path: pathlib.Path
    bin_dir: pathlib.Path
    gpu: dict[str, Any]


class SshdPool:
    """Real ``sshd`` processes on 127.0.0.1, one per emulated cloud instance.

    Thread-safe: the cloud emulators may call it from their HTTP server threads.
    """

    def __init__(self, base_dir: pathlib.Path | str) -> None:
        self.base_dir = pathlib.Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._sshd = find_sshd()
        self._instances: dict[str, SshdInstance] = {}
        self._lock = threading.RLock()
        # Safety net: no sshd outlives the interpreter even if close() is never called.
        self._finalizer = weakref.finalize(self, _terminate_all, self._instances, self._lock)

    # -- inspection -------------------------------------------------------------------------
    @property
    def login_user(self) -> str:
        """The only local user that can log in to the pool's servers."""
        return login_user()

    @property
    def host(self) -> str:
        return HOST

    def port_of(self, instance_key: str) -> int | None:
        """Port of the instance's sshd, or None when it is not running."""
        with self._lock:
            inst = self._instances.get(instance_key)
            return inst.port if inst else None

    def running(self) -> dict[str, int]:
        """Map of instance key -> port for every sshd still alive."""
        with self._lock:
            return {k: i.port for k, i in self._instances.items() if i.process.poll() is None}

    def instance(self, instance_key: str) -> SshdInstance:
        """Details (dirs, paths, process, normalized gpu facts) of a running instance."""
        with self._lock:
            return self._instances[instance_key]

    def host_public_key(self, instance_key: str) -> str:
        """The instance's host key as ``ssh-ed25519 AAAA...`` (for known_hosts checks)."""
        path = self.instance(instance_key).host_key_path.with_suffix(".pub")
        return " ".join(path.read_text().split()[:2])

    def log_text(self, instance_key: str) -> str:
        """sshd's log (stderr) for the instance, or "" when unknown."""
        with self._lock:
            inst = self._instances.get(instance_key)
        if inst is None or not inst.log_path.exists():
            return ""
        return inst.log_path.read_text(errors="replace")

    # -- ssh_backend protocol -----------------------------------------------------------------
    def start(
        self, instance_key: str, authorized_keys: list[str], gpu: dict[str, Any] | None = None
    ) -> tuple[str, int]:
        """Start an sshd for ``instance_key``; return (host, port) once it speaks SSH."""
        if self._sshd is None:
            raise SshdError(SSHD_MISSING)
        with self._lock:
            existing = self._instances.get(instance_key)
            if existing is not None:
                if existing.process.poll() is None:
                    raise SshdError(f"sshd for {instance_key!r} is already running")
                del self._instances[instance_key]
            inst = self._start_locked(instance_key, authorized_keys, gpu)
            self._instances[instance_key] = inst
            return HOST, inst.port

    def set_keys(self, instance_key: str, authorized_keys: list[str]) -> None:
        """Replace the instance's authorized_keys (sshd re-reads it on every connection)."""
        with self._lock:
            inst = self._instances.get(instance_key)
            if inst is None:
                raise KeyError(f"no sshd for instance {instance_key!r}")
            self._write_keys(inst.authorized_keys_path, authorized_keys)

    def stop(self, instance_key: str) -> None:
        """Terminate the instance's sshd and its live sessions (idempotent)."""
        with self._lock:
            inst = self._instances.pop(instance_key, None)
            if inst is not None:
                self._terminate(inst.process)

    def close(self) -> None:
        """Stop every sshd in the pool."""
        _terminate_all(self._instances, self._lock)

    def __enter__(self) -> SshdPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------
    def _start_locked(
        self, instance_key: str, authorized_keys: list[str], gpu: dict[str, Any] | None
    ) -> SshdInstance:
        directory = self.base_dir / sanitize_key(instance_key)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        host_key = directory / "ssh_host_ed25519_key"
        subprocess.run(
            [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(host_key)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        host_key.chmod(0o600)
        auth = directory / "authorized_keys"
        self._write_keys(auth, authorized_keys)
        bin_dir = directory / "bin"
        facts = _normalized_gpu(gpu, instance_key)
        write_fake_bin(bin_dir, facts)
        sftp = find_sftp_server()
        wrapper = write_session_wrapper(directory, bin_dir, sftp) if sftp else None
        self._ensure_privsep_dir()

        last_error = ""
        for attempt in range(_BIND_ATTEMPTS):
            port = _free_port()
            config = directory / "sshd_config"
            config.write_text(
                self._config_text(directory, port, host_key, auth, bin_dir, sftp, wrapper)
            )
            pid_path = directory / "sshd.pid"
            pid_path.unlink(missing_ok=True)
            log_path = directory / (f"sshd.{attempt}.log" if attempt else "sshd.log")
            inst = SshdInstance(
                key=instance_key,
                directory=directory,
                port=port,
                process=self._spawn(config, log_path),
                log_path=log_path,
                pid_path=pid_path,
                authorized_keys_path=auth,
                host_key_path=host_key,
                bin_dir=bin_dir,
                gpu=facts,
            )
            ok, last_error = self._wait_ready(inst)
            if ok:
                return inst
            self._terminate(inst.process)
            if "bind" not in last_error.lower() and "address already in use" not in last_error:
                break
        raise SshdError(f"sshd for {instance_key!r} failed to start:\n{last_error}")

    @staticmethod
    def _write_keys(path: pathlib.Path, keys: list[str]) -> None:
        lines = [line.strip() for k in keys for line in (k or "").splitlines() if line.strip()]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.chmod(0o600)
        os.replace(tmp, path)

    @staticmethod
    def _ensure_privsep_dir() -> None:
        if os.geteuid() != 0:
            return
        if not _PRIVSEP_DIR.is_dir():
            _PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = _PRIVSEP_DIR.stat()
        if st.st_uid != 0:
            os.chown(_PRIVSEP_DIR, 0, 0)
        if stat.S_IMODE(st.st_mode) & 0o022:
            _PRIVSEP_DIR.chmod(0o755)

    @staticmethod
    def _config_text(
        directory: pathlib.Path,
        port: int,
        host_key: pathlib.Path,
        auth: pathlib.Path,
        bin_dir: pathlib.Path,
        sftp: str | None,
        wrapper: pathlib.Path | None,
    ) -> str:
        lines = [
            f"ListenAddress {HOST}",
            f"Port {port}",
            f"HostKey {host_key}",
            f"PidFile {directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {auth}",
            "AuthorizedPrincipalsFile none",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitRootLogin prohibit-password",
            "PermitEmptyPasswords no",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "PermitUserEnvironment no",
            "MaxStartups 100:30:200",
            "LogLevel INFO",
            # Skip the post-quantum sntrup761 KEX OpenSSH >= 9 prefers: it costs ~130 ms per
            # connection and tests only need a working, paramiko-compatible exchange.
            "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,"
            "ecdh-sha2-nistp256,diffie-hellman-group14-sha256",
            # PATH for the login shell itself; rc files may still prepend to it, which is
            # why the ForceCommand wrapper re-checks that bin_dir is first.
            # SHLVL=1 makes bash (which sshd runs as `bash -c ...`) skip ~/.bashrc and
            # /etc/bash.bashrc, keeping sessions independent of the test user's rc files
            # (which may print text that breaks scp, or be slow).
            f"SetEnv PATH={bin_dir}:{_SYSTEM_PATH} SHLVL=1",
        ]
        if sftp and wrapper:
            # ForceCommand can't run internal-sftp for a subsystem request, so sftp goes
            # through the external sftp-server, which the wrapper execs directly.
            lines += [f"Subsystem sftp {sftp}", f"ForceCommand {shlex.quote(str(wrapper))}"]
        else:
            lines.append("Subsystem sftp internal-sftp")
        return "\n".join(lines) + "\n"

    def _spawn(self, config: pathlib.Path, log_path: pathlib.Path) -> subprocess.Popen[bytes]:
        assert self._sshd is not None
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [self._sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={"PATH": _SYSTEM_PATH, "LANG": "C"},
            )

    @staticmethod
    def _wait_ready(inst: SshdInstance) -> tuple[bool, str]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        delay = 0.005
        while time.monotonic() < deadline:
            if inst.process.poll() is not None:
                return False, (
                    f"sshd exited with status {inst.process.returncode}; log tail:\n"
                    + _log_tail(inst.log_path)
                )
            # sshd writes its PidFile only after it bound the port, so a pid match proves
            # that the SSH banner below comes from this sshd and not from a port thief.
            if _read_pid(inst.pid_path) == inst.process.pid:
                left = max(0.05, min(1.0, deadline - time.monotonic()))
                if _read_banner(inst.port, timeout=left) and inst.process.poll() is None:
                    return True, ""
            time.sleep(delay)  # poll interval, bounded by the deadline above
            delay = min(delay * 2, 0.1)
        return False, (
            f"sshd not ready on {HOST}:{inst.port} within {READY_TIMEOUT_S:.0f}s; log tail:\n"
            + _log_tail(inst.log_path)
        )

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        """Stop the listening sshd and every per-connection child it forked."""
        descendants = _descendants(proc.pid) if proc.poll() is None else []
        for pid in [proc.pid, *descendants]:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _terminate_all(instances: dict[str, SshdInstance], lock: threading.RLock) -> None:
    with lock:
        while instances:
            _, inst = instances.popitem()
            SshdPool._terminate(inst.process)


def kill_strays(base_dir: pathlib.Path | str) -> list[int]:
    """Stop every sshd a pool in ``base_dir`` started that outlived it (its server was
    SIGKILLed, so ``close`` never ran), with its per-connection children; return their pids.

    A process qualifies only by its command line (or the title sshd gives itself): ``-f``
    naming an ``sshd_config`` inside ``base_dir`` (Linux /proc; elsewhere nothing is found,
    so nothing is signalled)."""
    prefix = str(pathlib.Path(base_dir).resolve()) + os.sep
    proc_dir = pathlib.Path("/proc")
    found: list[int] = []
    if not proc_dir.is_dir():
        return found
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:  # sshd retitles itself: "sshd: /usr/sbin/sshd -D -e -f PATH [listener] ..."
            argv = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
                .split()
            )
        except OSError:
            continue
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag == "-f" and value.startswith(prefix) and value.endswith("/sshd_config"):
                found.append(int(entry.name))
                break
    for pid in found:
        for target in [pid, *_descendants(pid)]:
            try:
                os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return found


def _descendants(root_pid: int) -> list[int]:
    """PIDs of every live descendant of ``root_pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    proc_dir = pathlib.Path("/proc")
    if not proc_dir.is_dir():
        return []
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        # format: pid (comm) state ppid ...; comm may contain spaces/parens.
        after = stat_text.rsplit(")", 1)[-1].split()
        if len(after) < 2:
            continue
        children.setdefault(int(after[1]), []).append(int(entry.name))
    out: list[int] = []
    stack = [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out
