"""The pool of real OpenSSH servers that stands in for rented GPU machines."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

import paramiko
import pytest
from scp import SCPClient

from gpushopper.sandbox import sshd as sshd_mod

RTX_4090 = {
    "name": "NVIDIA GeForce RTX 4090",
    "count": 1,
    "memory_mib": 24564,
    "driver_version": "570.124.04",
    "cuda_version": "12.8",
    "disk_total_gb": 32,
    "disk_free_gb": 30,
}


def ssh(
    pool: sshd_mod.SshdPool, port: int, key: pathlib.Path, command: str
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with the OpenSSH client, isolated from the user's config and agent."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port)]
    argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5"]
    argv += ["-o", "LogLevel=ERROR", f"{pool.login_user}@127.0.0.1", command]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL
    )


def connect(pool: sshd_mod.SshdPool, port: int, key: pathlib.Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username=pool.login_user,
        pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=15)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    return {name: sshd_mod.make_keypair(tmp_path / "keys", name) for name in ("alice", "mallory")}


def test_make_keypair_is_private_ed25519(tmp_path: pathlib.Path) -> None:
    private, public = sshd_mod.make_keypair(tmp_path)
    assert public.startswith("ssh-ed25519 ") and "\n" not in public
    assert private.stat().st_mode & 0o777 == 0o600
    paramiko.Ed25519Key.from_private_key_file(str(private))


def test_sanitize_key_makes_distinct_safe_names() -> None:
    a = sshd_mod.sanitize_key("vastai:1000001")
    b = sshd_mod.sanitize_key("tensordock:0b7f8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    assert a.startswith("vastai_1000001") and b.startswith("tensordock_0b7f8a4e")
    assert sshd_mod.sanitize_key("vastai/1000001") != a
    assert all(c.isalnum() or c in "._-" for c in a + b)


def test_openssh_login_runs_fake_nvidia_smi(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    key, pub = keys["alice"]
    host, port = sshd_pool.start("vastai:1000001", [pub], RTX_4090)
    assert host == "127.0.0.1"
    assert sshd_pool.port_of("vastai:1000001") == port
    assert sshd_pool.running() == {"vastai:1000001": port}

    result = ssh(sshd_pool, port, key, "nvidia-smi")
    assert result.returncode == 0, result.stderr
    assert "Driver Version: 570.124.04     CUDA Version: 12.8" in result.stdout
    assert "NVIDIA GeForce RTX 4090" in result.stdout
    assert "0MiB / 24564MiB" in result.stdout

    # The fake bin dir wins over anything the login shell's rc files prepend.
    bin_dir = str(sshd_pool.instance("vastai:1000001").bin_dir)
    result = ssh(sshd_pool, port, key, 'echo "$PATH"; command -v nvidia-smi; exit 3')
    assert result.returncode == 3
    path_line, smi = result.stdout.splitlines()
    assert path_line.split(":")[0] == bin_dir
    assert smi == f"{bin_dir}/nvidia-smi"


def test_wrong_key_is_refused(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    _, pub = keys["alice"]
    wrong, _ = keys["mallory"]
    _, port = sshd_pool.start("vastai:1", [pub], RTX_4090)
    result = ssh(sshd_pool, port, wrong, "true")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_set_keys_swaps_access_without_restart(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    alice, alice_pub = keys["alice"]
    mallory, mallory_pub = keys["mallory"]
    _, port = sshd_pool.start("vastai:2", [alice_pub], RTX_4090)
    assert ssh(sshd_pool, port, alice, "true").returncode == 0

    sshd_pool.set_keys("vastai:2", [mallory_pub])
    assert ssh(sshd_pool, port, alice, "true").returncode == 255
    assert ssh(sshd_pool, port, mallory, "true").returncode == 0
    assert sshd_pool.port_of("vastai:2") == port

    sshd_pool.set_keys("vastai:2", [])
    assert ssh(sshd_pool, port, mallory, "true").returncode == 255


def test_paramiko_query_gpu_and_df(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    key, pub = keys["alice"]
    gpu = dict(RTX_4090, count=2, name="NVIDIA H100 80GB HBM3", memory_mib=81559)
    _, port = sshd_pool.start("tensordock:0b7f8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", [pub], gpu)
    bin_dir = str(sshd_pool.instance("tensordock:0b7f8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b").bin_dir)
    with connect(sshd_pool, port, key) as client:
        status, out, err = run(
            client,
            "nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,"
            "driver_version,uuid,pci.bus_id,utilization.gpu,temperature.gpu,bogus.field"
            " --format=csv,noheader,nounits",
        )
        assert status == 0, err
        rows = [line.split(", ") for line in out.splitlines()]
        assert [r[:6] for r in rows] == [
            ["0", "NVIDIA H100 80GB HBM3", "81559", "0", "81559", "570.124.04"],
            ["1", "NVIDIA H100 80GB HBM3", "81559", "0", "81559", "570.124.04"],
        ]
        assert rows[0][6].startswith("GPU-") and rows[0][6] != rows[1][6]
        assert [r[7] for r in rows] == ["00000000:01:00.0", "00000000:02:00.0"]
        assert [r[8:] for r in rows] == [["0", "35", "[N/A]"]] * 2

        status, out, _ = run(client, "nvidia-smi --query-gpu=name,memory.total --format=csv")
        assert out.splitlines()[0] == "name, memory.total [MiB]"
        assert out.splitlines()[1] == "NVIDIA H100 80GB HBM3, 81559 MiB"

        status, out, _ = run(client, "df -PB1 /workspace")
        assert status == 0
        header, line = out.splitlines()
        assert header.split()[:2] == ["Filesystem", "1-blocks"]
        fs, size, used, avail, cap, mount = line.split()
        assert (int(size), int(used), int(avail)) == (32 * 10**9, 2 * 10**9, 30 * 10**9)
        assert (cap, mount) == ("7%", "/")
        for form in ("df -P -k /", "df -Pk /root"):
            status, out, _ = run(client, form)
            header, line = out.splitlines()
            assert header.split()[1] == "1024-blocks"
            assert int(line.split()[3]) == 30 * 10**9 // 1024
        status, out, _ = run(client, "df --version")
        assert status == 0 and "df" in out  # anything else is the real df

        status, out, _ = run(client, 'echo "$PATH"')
        assert out.split(":")[0] == bin_dir

        status, out, _ = run(client, "nvidia-smi -i 1 --query-gpu=index --format=csv,noheader")
        assert (status, out) == (0, "1\n")
        status, out, _ = run(client, "nvidia-smi -L")
        assert out.startswith("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-")

        # Each instance has its own host key, exposed for known_hosts checks.
        transport = client.get_transport()
        assert transport is not None
        server_key = transport.get_remote_server_key()
        host_key = sshd_pool.host_public_key("tensordock:0b7f8a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        assert host_key == f"{server_key.get_name()} {server_key.get_base64()}"


def test_no_driver_means_no_nvidia_smi(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    key, pub = keys["alice"]
    _, port = sshd_pool.start("vastai:3", [pub], {"driver_version": None})
    with connect(sshd_pool, port, key) as client:
        status, _, err = run(client, "nvidia-smi")
        assert status == 127, err
        status, out, _ = run(client, "command -v df")  # no disk facts: the real df
        assert status == 0 and out.strip() in ("/bin/df", "/usr/bin/df")
    assert ssh(sshd_pool, port, key, "nvidia-smi").returncode == 127


def test_scp_and_sftp_transfer_files(
    sshd_pool: sshd_mod.SshdPool,  # noqa: F811
    keys,
    tmp_path: pathlib.Path,
) -> None:
    key, pub = keys["alice"]
    _, port = sshd_pool.start("vastai:4", [pub], RTX_4090)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    local = tmp_path / "payload.txt"
    local.write_text("hello gpu\n")
    back = tmp_path / "back.txt"

    # Legacy scp protocol (python scp package runs `scp -t` on the remote).
    with connect(sshd_pool, port, key) as client:
        with SCPClient(client.get_transport()) as scp_client:
            scp_client.put(str(local), str(remote_dir / "up.txt"))
            scp_client.get(str(remote_dir / "up.txt"), str(back))
        assert back.read_text() == "hello gpu\n"

        # SFTP subsystem through paramiko.
        with client.open_sftp() as sftp:
            sftp.put(str(local), str(remote_dir / "sftp.txt"))
        assert (remote_dir / "sftp.txt").read_text() == "hello gpu\n"

    # Modern OpenSSH scp (SFTP protocol).
    scp_bin = shutil.which("scp")
    if scp_bin:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        argv = [scp_bin, "-F", "/dev/null", "-i", str(key), "-P", str(port), "-o", "BatchMode=yes"]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR", str(local)]
        argv += [f"{sshd_pool.login_user}@127.0.0.1:{remote_dir / 'modern.txt'}"]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert (remote_dir / "modern.txt").read_text() == "hello gpu\n"


def test_stop_closes_port_and_drops_sessions(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    key, pub = keys["alice"]
    _, port = sshd_pool.start("vastai:5", [pub], RTX_4090)
    client = connect(sshd_pool, port, key)
    try:
        assert run(client, "true")[0] == 0
        sshd_pool.stop("vastai:5")
        assert not port_open(port)
        assert sshd_pool.running() == {} and sshd_pool.port_of("vastai:5") is None
        sshd_pool.stop("vastai:5")  # idempotent
        transport = client.get_transport()
        deadline = time.monotonic() + 10
        while transport is not None and transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert transport is None or not transport.is_active()
    finally:
        client.close()


def test_instances_are_isolated(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    alice, alice_pub = keys["alice"]
    mallory, mallory_pub = keys["mallory"]
    _, port_a = sshd_pool.start("vastai:10", [alice_pub], RTX_4090)
    _, port_b = sshd_pool.start(
        "vastai:11", [mallory_pub], dict(RTX_4090, name="NVIDIA RTX A6000", memory_mib=49140)
    )
    assert port_a != port_b
    assert ssh(sshd_pool, port_b, alice, "true").returncode == 255
    assert ssh(sshd_pool, port_a, mallory, "true").returncode == 255
    query = "nvidia-smi --query-gpu=name --format=csv,noheader"
    assert ssh(sshd_pool, port_a, alice, query).stdout.strip() == "NVIDIA GeForce RTX 4090"
    assert ssh(sshd_pool, port_b, mallory, query).stdout.strip() == "NVIDIA RTX A6000"

    sshd_pool.close()
    assert sshd_pool.running() == {}
    assert not port_open(port_a) and not port_open(port_b)


def test_interactive_shell_sees_fake_tools(sshd_pool: sshd_mod.SshdPool, keys) -> None:  # noqa: F811
    key, pub = keys["alice"]
    _, port = sshd_pool.start("vastai:6", [pub], RTX_4090)
    bin_dir = str(sshd_pool.instance("vastai:6").bin_dir)
    out = b""
    try:
        with connect(sshd_pool, port, key) as client:
            channel = client.invoke_shell()  # requests a PTY
            channel.settimeout(10)
            channel.sendall(b'echo "MARK:$(command -v nvidia-smi):"; exit\n')
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = channel.recv(4096)
                if not chunk:
                    break
                out += chunk
    except (EOFError, paramiko.SSHException):
        # An unprivileged sshd must chown the new PTY to group tty; that fails where
        # /dev/pts is mounted without gid=5 (some containers). Not a fake-machine problem.
        if os.geteuid() != 0 and "chown(/dev/pts" in sshd_pool.log_text("vastai:6"):
            pytest.skip("unprivileged sshd cannot allocate a PTY here (devpts lacks gid=5)")
        raise
    assert f"MARK:{bin_dir}/nvidia-smi:" in out.decode(errors="replace")


def test_start_retries_when_the_port_is_taken(
    sshd_pool: sshd_mod.SshdPool,  # noqa: F811
    keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, pub = keys["alice"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = sshd_mod._free_port
        ports = iter([taken])
        monkeypatch.setattr(sshd_mod, "_free_port", lambda: next(ports, None) or real_free_port())
        _, port = sshd_pool.start("vastai:7", [pub], RTX_4090)
    assert port != taken
    assert (
        "Address already in use"
        in (sshd_pool.instance("vastai:7").directory / "sshd.log").read_text()
    )
    assert ssh(sshd_pool, port, key, "true").returncode == 0


def test_fixture_fails_clearly_without_sshd(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setattr(sshd_mod, "find_sshd", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="OpenSSH server \\(sshd\\) not found"):
        request.getfixturevalue("sshd_pool")
    assert sshd_mod.SSHD_MISSING.endswith("install it with 'apt-get install openssh-server'")
