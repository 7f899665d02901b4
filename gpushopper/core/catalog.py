"""``templates catalog``: which templates (and TensorDock images) can run a workload, on which
GPU models, at what price on the live market.

A workload is a profile (the built-in ``flux-lora`` holds the FLUX LoRA job's needs: VRAM,
disk, reliability floor, its template). A template can run it when it starts an SSH server
(jobs run over SSH) and does not lack an NVIDIA driver (a bare OS image needs cloud-init to
install one first: left out, and said). For each template the market is asked, through the
inventory core (its filters, reliability floor and health checks), for reliable offers of
the workload's GPU count and VRAM, priced for the disk the template needs (its recommended
disk, or the workload's when that is larger, Vast.ai's template minimum CUDA folded in);
templates that ask the same question share one search. Pure: the CLI hands in the
providers and a ``search`` callable.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.models import Offer, OfferQuery, Template


@dataclass(frozen=True)
class Needs:
    """What a workload asks of a machine (from its profile)."""

    workload: str
    min_vram_gb: float | None
    num_gpus: int
    disk_gb: float
    min_reliability: float | None
    min_cuda: float | None
    template: str | None  # the workload's own template (or image), shown first

    def to_json(self) -> JSONObject:
        return {
            "min_vram_gb": self.min_vram_gb,
            "num_gpus": self.num_gpus,
            "disk_gb": self.disk_gb,
            "min_reliability": self.min_reliability,
            "min_cuda": self.min_cuda,
            "template": self.template,
        }


def needs_of(workload: str, query: OfferQuery, profile: JSONObject) -> Needs:
    """The workload's needs from the query its profile builds (flags > profile > config)."""
    return Needs(
        workload=workload,
        min_vram_gb=query.min_vram_gb,
        num_gpus=query.num_gpus or 1,
        disk_gb=query.disk_gb,
        min_reliability=query.min_reliability,
        min_cuda=query.min_cuda,
        template=profile.get("template") or profile.get("image"),
    )


def why_not(template: Template) -> str | None:
    """Why a template cannot run a job (None when it can)."""
    if template.use_ssh is False:
        return "starts no SSH server (jobs run over SSH)"
    if (template.requirements or {}).get("nvidia_driver") is False:
        return "no NVIDIA driver in the image (cloud-init would have to install one)"
    return None


def is_default(template: Template, needs: Needs) -> bool:
    wanted = (needs.template or "").lower()
    return bool(wanted) and wanted in {
        (template.name or "").lower(),
        str(template.id).lower(),
        (template.hash_id or "").lower(),
    }


def disk_for(template: Template, needs: Needs) -> float:
    return max(float(template.recommended_disk_gb or 0), needs.disk_gb)


def question(base: OfferQuery, template: Template, needs: Needs) -> OfferQuery:
    """The market question for one template: one provider, single-model offers of the
    workload's GPU count, the template's disk and minimum CUDA."""
    cuda = [c for c in (needs.min_cuda, template.min_cuda) if c is not None]
    return replace(
        base,
        providers=[template.provider],
        num_gpus=needs.num_gpus,
        disk_gb=disk_for(template, needs),
        min_cuda=max(cuda) if cuda else None,
        template=None,  # folded in above: no second template lookup per search
        sort="price",
        limit=None,
    )


def _money(value: float) -> float:
    return round(value, 4)


def gpu_rows(offers: Iterable[Offer]) -> list[JSONObject]:
    """Per GPU model: offers, cheapest and median hourly price; cheapest model first."""
    by_model: dict[str, list[Offer]] = {}
    for offer in offers:
        if offer.price_per_hour is None or not offer.gpu_name:
            continue
        by_model.setdefault(offer.gpu_name, []).append(offer)
    rows = []
    for model, group in by_model.items():
        prices = sorted(float(o.price_per_hour or 0) for o in group)
        vram = [o.vram_gb for o in group if o.vram_gb is not None]
        rows.append(
            {
                "gpu_name": model,
                "vram_gb": min(vram) if vram else None,
                "offers": len(group),
                "cheapest_per_hour": _money(prices[0]),
                "median_per_hour": _money(statistics.median(prices)),
            }
        )
    return sorted(rows, key=lambda r: (r["cheapest_per_hour"], r["gpu_name"]))


def build(
    needs: Needs,
    base: OfferQuery,
    templates: dict[str, list[Template]],
    search: Callable[[OfferQuery], tuple[list[Offer], dict[str, str]]],
    errors: dict[str, str] | None = None,
) -> JSONObject:
    """The catalog document: ``{workload, needs, templates, left_out, errors}``.

    ``templates`` maps provider -> its templates; ``search`` answers one question with
    (offers, provider errors). Entries: the workload's own template first, then by the
    cheapest offer (templates with no offer last)."""
    errors = dict(errors or {})
    answers: dict[tuple[str, float, float | None], list[Offer]] = {}
    entries: list[JSONObject] = []
    left_out: list[JSONObject] = []
    for provider, found in templates.items():
        for template in found:
            reason = why_not(template)
            if reason is not None:
                left_out.append(
                    {
                        "provider": provider,
                        "id": template.id,
                        "name": template.name,
                        "reason": reason,
                    }
                )
                continue
            asked = question(base, template, needs)
            key = (provider, asked.disk_gb, asked.min_cuda)
            if key not in answers:
                # A provider that failed once in this run is not asked again per template:
                # each question would wait out its retries for the same error.
                offers, failed = ([], {}) if provider in errors else search(asked)
                answers[key] = offers
                errors.update(failed)
            entries.append(
                {
                    "provider": provider,
                    "id": template.id,
                    "name": template.name,
                    "image": template.image,
                    "min_cuda": asked.min_cuda,
                    "recommended_disk_gb": template.recommended_disk_gb,
                    "disk_gb": asked.disk_gb,
                    "workload_default": is_default(template, needs),
                    "gpus": gpu_rows(answers[key]),
                }
            )

    def order(entry: JSONObject) -> tuple[bool, bool, float, str, str]:
        cheapest = min((g["cheapest_per_hour"] for g in entry["gpus"]), default=None)
        return (
            not entry["workload_default"],
            cheapest is None,
            cheapest or 0.0,
            entry["provider"],
            entry["name"],
        )

    entries.sort(key=order)
    return {
        "workload": needs.workload,
        "needs": needs.to_json(),
        "templates": entries,
        "left_out": left_out,
        "errors": errors,
    }


TABLE_COLUMNS = [
    "TEMPLATE",
    "PROVIDER",
    "ID",
    "DISK GB",
    "GPU",
    "VRAM GB",
    "OFFERS",
    "CHEAPEST $/h",
    "MEDIAN $/h",
]


def table_rows(doc: JSONObject) -> list[tuple[object, ...]]:
    """One row per template and GPU model (a template with no offer: one row saying so)."""
    rows: list[tuple[object, ...]] = []
    for entry in doc["templates"]:
        name = entry["name"] + (" *" if entry["workload_default"] else "")
        head = (name, entry["provider"], entry["id"], _disk(entry["disk_gb"]))
        if not entry["gpus"]:
            rows.append((*head, "no reliable offer now", None, 0, None, None))
        for gpu in entry["gpus"]:
            rows.append(
                (
                    *head,
                    gpu["gpu_name"],
                    gpu["vram_gb"],
                    gpu["offers"],
                    f"{gpu['cheapest_per_hour']:.3f}",
                    f"{gpu['median_per_hour']:.3f}",
                )
            )
    return rows


def _disk(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
