"""How a session reads for people: the key-value block ``provision`` prints at the hand-off
and ``sessions show`` / ``sessions done`` print (its JSON twin is core/sessions.public_view)."""

from __future__ import annotations

from typing import Any

from gpushopper.cli.output import print_kv


def print_session(view: dict[str, Any]) -> None:
    ssh = view.get("ssh") or {}
    pairs = [
        ("session", view["id"]),
        ("status", view["status"]),
        ("provider", f"{view['provider']} instance {view.get('instance_id')}"),
        ("offer", view.get("offer_id")),
        ("gpu", f"{view.get('gpu_name')} x{view.get('num_gpus')}"),
        (
            "price",
            f"${view['price_per_hour']:.3f}/h" if view.get("price_per_hour") is not None else None,
        ),
        ("cost so far", f"${view.get('cost_usd') or 0:.4f}"),
        ("created", view.get("created_at")),
        ("reservation ends", view.get("reservation_ends_at")),
        ("hard maximum", view.get("hard_max_at")),
    ]
    if view.get("ended_at"):
        pairs.append(("ended", f"{view['ended_at']} ({view.get('end_reason')})"))
    if view.get("provider_status"):
        pairs.append(("provider says", view["provider_status"]))
    pairs.append(("image", view.get("image")))
    disk, asked = view.get("disk_gb"), view.get("disk_gb_requested")
    if isinstance(disk, (int, float)) and not isinstance(disk, bool):
        more = (
            f" (asked for {asked:g})" if isinstance(asked, (int, float)) and asked != disk else ""
        )
        pairs.append(("disk", f"{disk:g} GB{more}"))
    ports = [p for p in view.get("ports") or [] if isinstance(p, dict)]
    for port in ports:
        pairs.append(
            (
                "port",
                f"{port.get('internal')}/{port.get('protocol')} open on {port.get('external')}",
            )
        )
    if ssh.get("command"):
        pairs.append(("ssh", ssh["command"]))
        pairs.append(
            ("or", f"ssh gpu-{view['id']}  (after 'gpu-shopper doctor' shows the Include line)")
        )
        for port in ports:
            if port.get("protocol") == "tcp":
                inner = port.get("internal")
                pairs.append(("tunnel", f"ssh -N -L {inner}:localhost:{inner} gpu-{view['id']}"))
    print_kv(pairs)
