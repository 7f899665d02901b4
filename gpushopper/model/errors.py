"""Typed errors; each knows its exit code and the JSON error ``type``."""

from __future__ import annotations


class GpuShopperError(Exception):
    """Base of every error the tool reports on purpose."""

    exit_code = 1
    type = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        from gpushopper.model.redact import redact

        return redact(self.message)


class UsageError(GpuShopperError):
    """Bad flags or input: exit 2."""

    exit_code = 2
    type = "usage"


class NoSuchItem(UsageError):
    """A session, job, offer or template the user named that does not exist (or no longer
    can be used): bad input, exit 2, whichever command was given it."""

    type = "not_found"


class ConfigError(GpuShopperError):
    """A setting is unknown, of the wrong type or missing: exit 2."""

    exit_code = 2
    type = "config"


class MissingCredentials(ConfigError):
    """A provider has no credentials configured; callers usually skip it."""

    type = "missing_credentials"

    def __init__(self, provider: str, hint: str) -> None:
        super().__init__(f"{provider}: no credentials configured ({hint})")
        self.provider = provider


class NoProviderConfigured(ConfigError):
    """No provider asked for has credentials."""

    def __init__(self) -> None:
        super().__init__(
            "no provider has credentials: set VASTAI_API_KEY or TENSORDOCK_API_TOKEN "
            "(or 'gpu-shopper config set vastai.api_key -', which reads it from stdin)"
        )


class ProviderError(GpuShopperError):
    """A provider answered with an error (or not at all): exit 1."""

    type = "provider"

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.code = code


class AuthFailed(ProviderError):
    type = "auth"


class NotFound(ProviderError):
    type = "not_found"


class RateLimited(ProviderError):
    type = "rate_limited"

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(provider, message, **kw)
        self.retry_after = retry_after


class Unavailable(ProviderError):
    """Server errors, timeouts, connection failures, malformed answers."""

    type = "unavailable"


class StateError(GpuShopperError):
    """The state file is unreadable, corrupt or from a newer version: exit 1."""

    type = "state"


class StateWriteError(StateError):
    """The state file could not be written (disk full, read-only home): exit 1."""


class NotOurs(ProviderError):
    """An instance does not carry the label that would make it ours: never destroyed."""

    type = "not_ours"


class SshError(GpuShopperError):
    type = "ssh"


class Declined(GpuShopperError):
    """The person answered no at a prompt: nothing was done, and that is not a failure."""

    exit_code = 0
    type = "declined"


class NeedsAttention(GpuShopperError):
    """Nothing failed, but a person should look (e.g. orphans left alone): exit 3."""

    exit_code = 3
    type = "needs_attention"


class Interrupted(GpuShopperError):
    """Interrupted by signal N (or a closed pipe, 13), after cleanup: exit 128 + N
    (130 for Ctrl-C)."""

    exit_code = 130
    type = "interrupted"

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
