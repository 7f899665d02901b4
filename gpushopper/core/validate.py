"""Checks for what a provider sends before it reaches ssh_config, ssh/scp or a shell.

A provider's answer is data, never syntax: an SSH host with a newline in it would become
a ``ProxyCommand`` in our Include-able ssh_config. Every field that reaches an ssh
argument, ssh_config or a remote command passes one of these first.
"""

from __future__ import annotations

import re

from gpushopper.model.jsontypes import JSONObject, JSONValue

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Text we write between double quotes in ssh_config (our own key and known_hosts paths).
_UNSAFE_QUOTED = re.compile(r'["\x00-\x1f\x7f]')


def ssh_host_problem(value: JSONValue) -> str | None:
    """None when ``value`` is a hostname or an IP address, else why not."""
    if not isinstance(value, str) or not value:
        return f"host {value!r} is not text"
    if len(value) > 253:
        return "host is longer than 253 characters"
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(value) and not value.replace(".", "").isdigit():
        return None
    return f"host {value!r} is neither a hostname nor an IP address"


def ssh_port_problem(value: JSONValue) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return f"port {value!r} is not an integer from 1 to 65535"
    return None


def ssh_user_problem(value: JSONValue) -> str | None:
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        return f"user {value!r} does not match [a-z_][a-z0-9_-]* (32 characters at most)"
    return None


def quoted_path_problem(value: JSONValue) -> str | None:
    if not isinstance(value, str) or not value or _UNSAFE_QUOTED.search(value):
        return f"path {value!r} has a quote or a control character"
    return None


def ssh_endpoint_problem(host: JSONValue, port: JSONValue, user: JSONValue = None) -> str | None:
    """The first problem with an SSH endpoint (and user, when given), or None."""
    problem = ssh_host_problem(host) or ssh_port_problem(port)
    if problem is None and user is not None:
        problem = ssh_user_problem(user)
    return problem


def ssh_record_problem(ssh: JSONObject) -> str | None:
    """The first problem with a session's ``ssh`` block, or None when all is safe to write."""
    problem = ssh_endpoint_problem(ssh.get("host"), ssh.get("port"), ssh.get("user"))
    if problem is None:
        problem = quoted_path_problem(ssh.get("key_path"))
    if problem is None and ssh.get("known_hosts"):
        problem = quoted_path_problem(ssh.get("known_hosts"))
    return problem
