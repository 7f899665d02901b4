"""transfer upload/download with scp against the session's real sshd."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpushopper.model.errors import SshError


@pytest.fixture
def running(vast, gs):
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_upload_then_download_roundtrip(gs, running, tmp_path):
    src = tmp_path / "train.yaml"
    src.write_text("steps: 2000\n" * 100)
    remote_dir = tmp_path / "remote-workspace"  # the fake instance is this machine
    remote_dir.mkdir()
    up = gs(["transfer", "upload", running["id"], str(src), str(remote_dir) + "/", "--json"])
    assert up.exit_code == 0, up.stderr
    assert up.json()[0]["bytes"] == src.stat().st_size
    assert (remote_dir / "train.yaml").read_text() == src.read_text()
    back = tmp_path / "back"
    back.mkdir()
    down = gs(
        ["transfer", "download", running["id"], str(remote_dir / "train.yaml"), str(back), "--json"]
    )
    assert down.exit_code == 0, down.stderr
    assert (back / "train.yaml").read_text() == src.read_text()


def test_recursive_folder_upload(gs, running, tmp_path):
    folder = tmp_path / "dataset"
    (folder / "img").mkdir(parents=True)
    for i in range(3):
        (folder / "img" / f"{i}.txt").write_text(f"caption {i}")
    target = tmp_path / "remote"
    target.mkdir()
    refused = gs(["transfer", "upload", running["id"], str(folder), str(target)])
    assert refused.exit_code == 2 and "--recursive" in refused.stderr
    result = gs(
        ["transfer", "upload", running["id"], str(folder), str(target), "--recursive", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (target / "dataset" / "img").iterdir()) == [
        "0.txt",
        "1.txt",
        "2.txt",
    ]


def test_transfer_errors(gs, running, tmp_path):
    assert (
        gs(["transfer", "upload", running["id"], str(tmp_path / "missing"), "/tmp/"]).exit_code == 2
    )
    assert gs(["transfer", "upload", "nope", str(tmp_path), "/tmp/"]).exit_code == 2
    missing = gs(["transfer", "download", running["id"], "/no/such/file", str(tmp_path)])
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: ")
    gs(f"sessions done {running['id']}")
    ended = gs(["transfer", "download", running["id"], "/etc/hostname", str(tmp_path)])
    assert ended.exit_code == 2 and "only running sessions" in ended.stderr


def test_no_key_material_in_transfer_output(gs, running, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("x")
    out = gs(["transfer", "upload", running["id"], str(src), str(tmp_path) + "/copy.txt"])
    private = Path(running["ssh"]["key_path"]).read_text().splitlines()[1]
    assert private not in out.stdout + out.stderr


def test_recursive_download_into_a_new_folder_reports_where_it_landed(gs, running, tmp_path):
    remote = tmp_path / "rdir"
    remote.mkdir()
    (remote / "x.bin").write_bytes(b"\0" * 1234)
    new = tmp_path / "dl1"  # does not exist: scp -r makes it the copy of rdir
    result = gs(["transfer", "download", running["id"], str(remote), str(new), "-r", "--json"])
    assert result.exit_code == 0, result.stderr
    assert (new / "x.bin").stat().st_size == 1234
    assert not (new / "rdir").exists()
    assert result.json() == [{"from": f"{running['id']}:{remote}", "to": str(new), "bytes": 1234}]
    # into a folder that exists, the folder keeps its name (scp -r again)
    again = gs(["transfer", "download", running["id"], str(remote), str(new), "-r", "--json"])
    assert again.json()[0]["to"] == str(new / "rdir")
    assert again.json()[0]["bytes"] == 1234
    assert (new / "rdir" / "x.bin").stat().st_size == 1234


class _ScriptedChannel:
    """The instance's side of ``scp -f``, scripted: each recv answers the next message."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)
        self.closed = False

    def recv(self, n: int) -> bytes:
        if not self.messages:
            self.closed = True
            return b""
        head, self.messages[0] = self.messages[0][:n], self.messages[0][n:]
        if not self.messages[0]:
            self.messages.pop(0)
        return head

    def close(self) -> None:
        self.closed = True

    def settimeout(self, *_: object) -> None: ...
    def exec_command(self, *_: object) -> None: ...
    def sendall(self, *_: object) -> None: ...
    def send(self, *_: object) -> None: ...
    def shutdown_write(self) -> None: ...
    def recv_exit_status(self) -> int:
        return 0


@pytest.mark.parametrize(
    "sent",
    [
        [b"D0700 0 ..\n", b"C0644 5 evil\n", b"evil\n", b"\x00", b"E\n"],
        [b"D0755 0 a/../..\n", b"E\n"],
        [b"C0644 5 ../evil\n", b"evil\n", b"\x00"],
        [b"C0644 5 ev\x1b[2Jil\n", b"evil\n", b"\x00"],
    ],
    ids=["folder-dotdot", "folder-slash", "file-climbs", "file-control"],
)
def test_a_download_refuses_names_from_the_instance_that_climb_out(tmp_path, sent):
    """A hostile instance's scp names what it sends: '..' as a folder (which the scp library
    lets through, chmodding the parent and then writing beside it), a name with '/', or one
    with a control character is refused before it names a local file; nothing lands
    outside the target, and the parent keeps its mode."""
    from types import SimpleNamespace

    from gpushopper.remote.transfer import download

    class Transport:
        def open_session(self) -> _ScriptedChannel:
            return _ScriptedChannel(sent)

        def getpeername(self) -> tuple[str, int]:
            return ("127.0.0.1", 22)

    conn = SimpleNamespace(client=SimpleNamespace(get_transport=Transport))
    base = tmp_path / "dl"
    target = base / "into"
    target.mkdir(parents=True)
    mode = base.stat().st_mode
    with pytest.raises(SshError, match="download refused: the instance sent the name"):
        download(conn, ["/workspace/out"], str(target), recursive=True)
    assert sorted(p.name for p in base.rglob("*")) == ["into"]
    assert base.stat().st_mode == mode
