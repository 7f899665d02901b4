"""Loose GPU names: what a user types, what Vast.ai lists and TensorDock's model slugs."""

from __future__ import annotations

import pytest

from gpushopper.model.models import canonical_gpu, gpu_form_factor, gpu_matches


@pytest.mark.parametrize(
    "name",
    [
        "4090",
        "RTX_4090",
        "rtx 4090",
        "RTX 4090",
        "rtx4090",
        "geforcertx4090-pcie-24gb",
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 4090 PCIe 24GB",
        "  RTX-4090  ",
    ],
)
def test_every_spelling_of_the_rtx_4090_means_the_vast_and_tensordock_card(name):
    assert gpu_matches(name, "RTX 4090")  # Vast.ai gpu_name
    assert gpu_matches(name, "geforcertx4090-pcie-24gb")  # TensorDock v0Name


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("RTX_4090", "rtx4090"),
        ("geforcertx4090-pcie-24gb", "rtx4090"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("geforcertx3080ti-pcie-12gb", "rtx3080ti"),
        ("RTX 3080 Ti", "rtx3080ti"),
        ("rtxa6000-pcie-48gb", "rtxa6000"),
        ("RTX A6000", "rtxa6000"),
        ("rtx6000ada-pcie-48gb", "rtx6000ada"),
        ("RTX 6000 Ada", "rtx6000ada"),
        ("h100-sxm5-80gb", "h100"),
        ("H100 SXM", "h100"),
        ("H100 NVL", "h100"),
        ("A100 PCIE", "a100"),
        ("A100-SXM4-80GB", "a100"),
        ("Tesla V100", "v100"),
        ("v100-sxm2-16gb", "v100"),
        ("l40s-pcie-48gb", "l40s"),
        ("geforcegtx1070-pcie-8gb", "gtx1070"),
        ("quadrortx4000-pcie-8gb", "rtx4000"),
        ("Quadro RTX 4000", "rtx4000"),
    ],
)
def test_canonical_keys(name, key):
    assert canonical_gpu(name) == key


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("H100 SXM", "sxm"),
        ("h100-sxm5-80gb", "sxm"),
        ("A100 PCIE", "pcie"),
        ("geforcertx4090-pcie-24gb", "pcie"),
        ("H100 NVL", "nvl"),
        ("a100-nvlink-40gb", None),  # TensorDock's nvlink boards: form unknown
        ("RTX 4090", None),
        ("4090", None),
    ],
)
def test_form_factor(name, form):
    assert gpu_form_factor(name) == form


@pytest.mark.parametrize(
    ("wanted", "actual"),
    [
        ("A100", "A100 SXM4"),
        ("A100", "a100-pcie-80gb"),
        ("a100", "a100-nvlink-40gb"),
        ("H100", "H100 SXM"),
        ("H100", "H100 NVL"),
        ("H100", "h100-sxm5-80gb"),
        ("H100 SXM", "h100-sxm5-80gb"),
        ("A100 SXM4", "a100-sxm4-80gb"),
        ("A6000", "RTX A6000"),
        ("A6000", "rtxa6000-pcie-48gb"),
        ("3080 ti", "geforcertx3080ti-pcie-12gb"),
        ("3080 Ti", "RTX 3080 Ti"),
        ("rtx 4000", "quadrortx4000-pcie-8gb"),
        ("Quadro RTX 4000", "quadrortx4000-pcie-8gb"),
        ("RTX 4000 Ada", "rtx4000ada-pcie-20gb"),
        ("L40S", "l40s-pcie-48gb"),
        ("5090", "geforcertx5090-pcie-32gb"),
        # what nvidia-smi prints (preflight and benchmark results compare it to the offer)
        ("H100 SXM", "NVIDIA H100 80GB HBM3"),
        ("H100", "NVIDIA H100 80GB HBM3"),
        ("A100 PCIE", "NVIDIA A100 80GB PCIe"),
        ("RTX 4090", "NVIDIA GeForce RTX 4090"),
    ],
)
def test_loose_matches(wanted, actual):
    assert gpu_matches(wanted, actual)


@pytest.mark.parametrize(
    ("wanted", "actual"),
    [
        ("4090", "RTX 4090 D"),  # a different (China-market) card
        ("4090", "RTX 4090D"),
        ("3080", "RTX 3080 Ti"),
        ("4080", "RTX 4080 SUPER"),
        ("a100", "A1000"),
        ("a100", "RTX A1000"),
        ("L40", "L40S"),
        ("4000", "rtx4000ada-pcie-20gb"),
        ("RTX 4090", "RTX 3090"),
        ("H100 SXM", "H100 PCIE"),  # the form factor asked for must not be contradicted
        ("H100 NVL", "h100-sxm5-80gb"),
        ("A100 SXM4", "a100-pcie-80gb"),
        ("", "RTX 4090"),
        ("nvidia", "RTX 4090"),
    ],
)
def test_near_misses_do_not_match(wanted, actual):
    assert not gpu_matches(wanted, actual)
