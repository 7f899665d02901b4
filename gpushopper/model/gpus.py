"""GPU names as a key: ``4090``, ``RTX_4090`` and ``geforcertx4090-pcie-24gb`` mean one card.
Its own module (re only) so the benchmark queries group by GPU without loading the offer
and session dataclasses of gpushopper.model.models, which re-exports these."""

from __future__ import annotations

import re
from functools import lru_cache

# -- GPU names ---------------------------------------------------------------------------
_VENDOR_WORDS = re.compile(r"\b(nvidia|geforce|amd|radeon|tesla|quadro)\b")
_SUFFIX = re.compile(r"[-_ ]?(pcie|sxm[0-9]?|nvlink|nvl|pci)[-_ ]?.*$")
_FORM = re.compile(r"nvlink|nvl|sxm|pci")


@lru_cache(maxsize=4096)
def canonical_gpu(name: str) -> str:
    """A loose key so ``4090``, ``RTX_4090``, ``rtx 4090`` and
    ``geforcertx4090-pcie-24gb`` all mean the same card."""
    text = name.strip().lower()
    text = re.sub(r"-(pcie|sxm\d?|nvlink|pci)-\d+gb$", "", text)  # tensordock v0Name tail
    text = re.sub(r"\b\d+\s*gb\b", "", text)
    text = re.sub(r"\bhbm\d?e?\b", "", text)  # nvidia-smi: "NVIDIA H100 80GB HBM3" is an H100
    text = text.replace("_", " ").replace("-", " ")
    text = _VENDOR_WORDS.sub(" ", text)
    text = re.sub(r"\s+", "", text)
    text = re.sub(r"^(geforce|quadro)", "", text)  # tensordock runs them together: quadrortx4000
    text = text.replace("geforce", "")
    text = _SUFFIX.sub("", text)
    text = re.sub(r"(pcie|sxm\d?|nvlink|nvl)$", "", text)
    return text


@lru_cache(maxsize=4096)
def gpu_form_factor(name: str) -> str | None:
    """``sxm``, ``pcie`` or ``nvl`` when the name says so (``nvlink`` is ambiguous: None)."""
    found = _FORM.search(re.sub(r"[\s_-]+", "", name.lower()))
    if found is None or found.group(0) == "nvlink":
        return None
    return {"pci": "pcie"}.get(found.group(0), found.group(0))


@lru_cache(maxsize=16384)
def gpu_matches(wanted: str, actual: str) -> bool:
    """True when the user's ``wanted`` GPU name means the offer's ``actual`` card.

    A bare model number (``4090``) matches any card whose key ends in it (``rtx4090``);
    otherwise keys must be equal, so ``a100`` does not match ``a1000`` and ``4090`` does
    not match ``4090d``. A form factor in ``wanted`` (``H100 SXM``) must not contradict
    the offer's (``H100 PCIE``); ``H100`` alone matches every H100.
    """
    want = canonical_gpu(wanted)
    have = canonical_gpu(actual)
    if not want:
        return False
    want_form, have_form = gpu_form_factor(wanted), gpu_form_factor(actual)
    if want_form and have_form and want_form != have_form:
        return False
    if want == have:
        return True
    if want.isdigit():
        return re.search(rf"(^|[a-z]){want}(ti|super)?$", have) is not None and not re.search(
            rf"{want}(ti|super)$", have
        )
    if have.startswith("rtx") and not want.startswith("rtx") and have[3:] == want:
        return True
    return want == have.removeprefix("geforce")
