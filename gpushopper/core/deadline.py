"""The on-instance deadline (dead man's switch).

Every instance we create carries its own deadline, so it stops billing even when the
machine that rented it is off or asleep:

* **Vast.ai**: a snippet at the head of ``onstart`` starts a small watcher that, at the
  deadline, destroys the instance with ``DELETE {vastai.api_url}/api/v0/instances/$ID/``
  authorised by the instance-scoped ``$CONTAINER_API_KEY`` and ``$CONTAINER_ID`` that Vast.ai
  injects into the container (the user's own API key never leaves this machine). curl is
  used, then wget, then python3's urllib, retried until one succeeds.
* **TensorDock**: the same watcher, appended to cloud-init ``runcmd`` (run as root), powers
  the VM off (``poweroff``, else ``shutdown -h now``). A powered-off TensorDock VM still
  bills storage until it is deleted, so ``watch``/``cleanup-orphans`` must still destroy it.
  The launcher is also put in cloud-init's per-boot scripts, so a reboot restarts the watcher.

On the instance, one file (``/root/.gpu-shopper/deadline`` on Vast.ai,
``/var/lib/gpu-shopper/deadline`` on TensorDock) holds the epoch second at which to act,
``min(reservation end + safety.deadline_grace, hard maximum)``. At first start the
reservation part is counted from the instance's own clock (``now + reservation + grace``,
never earlier than the local reservation end, which starts only once the machine is ready);
the hard maximum is absolute. The watcher re-reads the file on every loop and sleeps
``min(remaining, 30)`` seconds, so ``sessions extend`` moves the deadline by rewriting the
file over SSH (:func:`push_deadline`), and a 2-second deadline fires in about 2 seconds.

Running the snippet again (Vast.ai runs ``onstart`` at every container start) keeps the
file as it is (an extend may have moved it) and starts no second watcher (the pid in
``<file>.pid`` is checked against ``/proc/<pid>/cmdline``). The watcher writes
``<file>.sh`` (itself), ``<file>.pid`` and ``<file>.log`` next to the deadline file.

Environment overrides read by the generated script, for tests only:

* ``GS_DEADLINE_FILE``: the deadline file (default as above).
* ``GS_POWEROFF`` (TensorDock): the command run instead of ``poweroff``/``shutdown -h now``
  (no fallback to either when it is set).
* ``GS_BOOT_DIR`` (TensorDock): where the per-boot launcher goes (default
  ``/var/lib/cloud/scripts/per-boot``; skipped when the folder does not exist; set it empty
  to skip).

``GPU_SHOPPER_DEADLINE_FILE`` in gpu-shopper's own environment replaces the default path
baked into new scripts (tests point it into a temporary folder); the path is recorded on the
session as ``deadline_file`` and used by :func:`push_deadline`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gpushopper.model.errors import ConfigError
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.redact import clip
from gpushopper.model.session import Session
from gpushopper.model.units import iso, parse_iso
from gpushopper.providers.registry import deadline_hook

if TYPE_CHECKING:
    from gpushopper.providers.base import Provider, SettingsReader
    from gpushopper.state.store import StateStore

MARKER = "gs-deadline-watcher"  # in the watcher's argv: how a second start finds the first
LOOP_MAX_S = 30  # the watcher re-reads the deadline file at least this often
PUSH_TIMEOUT_S = 20.0  # connect budget for push_deadline (SSH)

# The watcher. ``{deadline}`` (fallback epoch), ``{setup}`` and ``{action}`` are filled in;
# it is written by a quoted here-document, so nothing in it is expanded at write time.
_WATCHER = """\
F=$1;d={deadline}
if [ "$2" = start ];then p=$(cat "$F.pid" 2>/dev/null)
grep -qs {marker} "/proc/${{p:-x}}/cmdline"||{{ nohup sh "$0" "$F" {marker} >>"$F.log" 2>&1 </dev/null & echo $! >"$F.pid";}};exit;fi
{setup}while :;do n=$(cat "$F" 2>/dev/null);m={loop};case $n in ''|*[!0-9]*)m=1;;*)d=$n;;esac
r=$((d-$(date +%s)));if [ $r -gt 0 ];then [ $r -gt $m ]&&r=$m;sleep $r;continue;fi
echo "$(date) deadline $d reached: {what}";a&&sleep 60||sleep 10;done
"""

_VAST_SETUP = """\
e(){{ tr '\\0' '\\n' </proc/1/environ 2>/dev/null|sed -n "s/^$1=//p";}}
K=${{CONTAINER_API_KEY:-$(e CONTAINER_API_KEY)}};U={api}/api/v0/instances/${{CONTAINER_ID:-$(e CONTAINER_ID)}}/;export K U
a(){{ curl -fsS -m 30 -X DELETE -H "Authorization: Bearer $K" "$U"||wget -qO- -T 30 --method=DELETE --header="Authorization: Bearer $K" "$U"||python3 -c 'import os,urllib.request as r;r.urlopen(r.Request(os.environ["U"],method="DELETE",headers={{"Authorization":"Bearer "+os.environ["K"]}}),timeout=30)';}}
"""

_TD_SETUP = 'a(){ if [ "$GS_POWEROFF" ];then $GS_POWEROFF;else poweroff||shutdown -h now;fi;}\n'

# The launcher around it: deadline file, watcher file, start (once).
_LAUNCHER = """\
# gpu-shopper: {what} at the deadline, even if the renting machine is off
(F=${{GS_DEADLINE_FILE:-{path}}};mkdir -p "${{F%/*}}"
n=$(($(date +%s)+{relative}));[ $n -gt {hard} ]&&n={hard};[ -s "$F" ]||echo $n >"$F"
cat >"$F.sh.new" <<'GS_EOF'
{watcher}GS_EOF
mv -f "$F.sh.new" "$F.sh";sh "$F.sh" "$F" start{boot};:)
"""

_TD_BOOT = """
B=${GS_BOOT_DIR-/var/lib/cloud/scripts/per-boot};B=${B:+$B/gpu-shopper-deadline}
[ -d "${B%/*}" ]&&printf '#!/bin/sh\\nexec sh "%s.sh" "%s" start\\n' "$F" "$F" >"$B"&&chmod 755 "$B\""""


def _grace_s(app: DeadlineHost) -> float:
    return float(app.settings.get("safety.deadline_grace"))


def deadline_file_for(app: object, provider_name: str) -> str | None:
    """Where the deadline file lives on an instance of ``provider_name``."""
    hook = deadline_hook(provider_name)
    if hook is None:
        return None
    default = hook.default_file
    override = (getattr(app, "environ", None) or {}).get("GPU_SHOPPER_DEADLINE_FILE")
    return override or default


def deadline_epoch(session: Session, grace_s: float) -> int | None:
    """``min(reservation end + grace, hard maximum)`` as an epoch second, from a session."""
    ends = session.reservation_ends_at
    hard = session.hard_max_at
    candidates = [t for t in (ends + timedelta(seconds=grace_s) if ends else None, hard) if t]
    if not candidates:
        return None
    return int(min(candidates).timestamp())


class DeadlineHost(Protocol):
    """What the deadline needs from its caller: settings, the clock and the store (the CLI's
    ``App`` has them; core never imports it). ``environ`` is read when present."""

    @property
    def settings(self) -> SettingsReader: ...

    @property
    def store(self) -> StateStore: ...

    def clock(self) -> datetime: ...


def render_script(
    provider_name: str,
    *,
    path: str,
    hard_epoch: int,
    relative_s: int,
    api_url: str | None = None,
) -> str:
    """The POSIX sh snippet for ``provider_name`` (its registry entry names the style)."""
    hook = deadline_hook(provider_name)
    if hook is not None and hook.style == "destroy-by-api":
        if not api_url:
            raise ValueError("the Vast.ai snippet needs the API base URL")
        setup = _VAST_SETUP.format(api=shlex.quote(api_url.rstrip("/")))
        what, boot = "destroy this Vast.ai instance", ""
        acted = "destroying instance"
    elif hook is not None and hook.style == "power-off":
        setup, what, boot, acted = _TD_SETUP, "power this VM off", _TD_BOOT, "powering off"
    else:
        raise ValueError(f"no on-instance deadline for provider {provider_name!r}")
    watcher = _WATCHER.format(
        deadline=hard_epoch, marker=MARKER, setup=setup, loop=LOOP_MAX_S, what=acted
    )
    assert "GS_EOF" not in watcher
    return _LAUNCHER.format(
        what=what,
        path=shlex.quote(path),
        relative=relative_s,
        hard=hard_epoch,
        watcher=watcher,
        boot=boot,
    )


def deadline_script_for(app: DeadlineHost, provider: Provider, record: JSONObject) -> str | None:
    """The snippet that gives a new instance its own deadline, or None for other providers.

    Called by the provisioner before create with the session ``record`` (it is saved right
    after): this records ``deadline_file`` and an estimated ``deadline_at`` on it.
    """
    name = getattr(provider, "NAME", None) or record.get("provider")
    path = deadline_file_for(app, str(name))
    if path is None:
        return None
    grace = _grace_s(app)
    hard = parse_iso(record.get("hard_max_at"))
    created = parse_iso(record.get("created_at"))
    if hard is None:
        return None
    reservation_s = record.get("reservation_s")
    if reservation_s is None:
        ends = parse_iso(record.get("reservation_ends_at"))
        reservation_s = (ends - created).total_seconds() if ends and created else 0.0
    relative = max(0, int(float(reservation_s) + grace))
    hook = deadline_hook(str(name))
    api_url = None
    if hook is not None and hook.api_url_setting:
        api_url = str(app.settings.get(hook.api_url_setting) or hook.api_url_default)
    script = render_script(
        str(name),
        path=path,
        hard_epoch=int(hard.timestamp()),
        relative_s=relative,
        api_url=api_url,
    )
    if hook is not None and hook.secret_setting:
        try:
            key = app.settings.get(hook.secret_setting)
        except ConfigError:
            key = None
        if key and str(key) in script:  # e.g. a key pasted into the URL: never ship it
            raise ConfigError(f"{hook.api_url_setting} must not contain the API key")
    record["deadline_file"] = path
    if created is not None:
        record["deadline_at"] = iso(min(created + timedelta(seconds=relative), hard))
    return script


def remote_write_command(path: str, epoch: int) -> str:
    """Shell command that rewrites the deadline file (sudo when the user cannot write it)."""
    f = shlex.quote(path)
    d = shlex.quote(path.rsplit("/", 1)[0] or "/")
    t = shlex.quote(path + ".new")
    # Write aside, then rename: the watcher never reads a half-written file.
    return (
        f"{{ mkdir -p {d} && echo {epoch} >{t} && mv -f {t} {f}; }} 2>/dev/null || "
        f"{{ sudo -n mkdir -p {d} && echo {epoch} | sudo -n tee {t} >/dev/null && "
        f"sudo -n mv -f {t} {f}; }} && cat {f}"
    )


def push_deadline(
    app: DeadlineHost, session: Session, log: Callable[[str], None] | None = None
) -> None:
    """Move the on-instance deadline after ``sessions extend``; never raises.

    Rewrites the deadline file over SSH and records ``deadline_pushed_at`` (and the new
    ``deadline_at``) or ``deadline_push_error`` on the session.
    """
    if not session.rest.get("deadline_on_instance"):
        return
    session_id = session.id
    warn = log or (lambda message: None)
    path = session.rest.get("deadline_file") or deadline_file_for(app, session.provider)
    ssh = session.ssh
    old = session.rest.get("deadline_at")
    epoch: int | None = None
    try:
        epoch = deadline_epoch(session, _grace_s(app))
        if epoch is None or not path:
            raise RuntimeError("the session has no deadline to push")
        if not ssh.get("host") or not ssh.get("port"):
            raise RuntimeError(f"no SSH endpoint yet (status {session.status})")
        _push(ssh, path, epoch)
    except Exception as exc:  # noqa: BLE001 - never fail the extend
        message = str(exc) or type(exc).__name__
        warn(
            "Warning: could not move the on-instance deadline: "
            f"{message}. The instance may still shut itself down at its earlier deadline"
            + (f" (about {old})" if old else "")
            + "; the next successful extend moves it."
        )
        _record(app, session_id, deadline_push_error=clip(message, 300))
        return
    from datetime import datetime, timezone

    at = iso(datetime.fromtimestamp(epoch, tz=timezone.utc))
    _record(
        app,
        session_id,
        deadline_pushed_at=iso(app.clock()),
        deadline_at=at,
        deadline_push_error=None,
    )


def _push(ssh: JSONObject, path: str, epoch: int) -> None:
    from gpushopper.remote import ssh as remote

    conn = remote.connect(
        str(ssh["host"]),
        int(ssh["port"]),
        str(ssh.get("user") or "root"),
        Path(str(ssh["key_path"])),
        deadline=time.monotonic() + PUSH_TIMEOUT_S,
        connect_timeout=min(10.0, PUSH_TIMEOUT_S),
    )
    try:
        status, out, err = conn.run(remote_write_command(path, epoch), timeout=30.0)
    finally:
        conn.close()
    if status != 0 or out.strip() != str(epoch):
        detail = (err or out).strip().splitlines()
        raise RuntimeError(
            f"writing {path} failed (exit {status})" + (f": {detail[-1]}" if detail else "")
        )


def _record(app: DeadlineHost, session_id: JSONValue, **changes: object) -> None:
    if not session_id:
        return
    try:
        app.store.update_session(str(session_id), **changes)
    except Exception:  # noqa: BLE001 - bookkeeping must not fail the extend either
        pass
