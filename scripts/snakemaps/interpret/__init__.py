"""Saliency maps of trained models (ClinicaDL's ``interpret``), written into the MAPS.

For a test group, a split and a saved model, each method writes one folder
beside that model's test metrics::

    test/group-<g>/results/split-<k>/<model>/interpret-<method>/
        mean_image-0_map.pt | .nii.gz              every image of the group
        mean_label-<class>_image-0_map.pt | .nii.gz   the images of one true class
        <participant>_<session>_image-0_map.pt | .nii.gz   one image
        details.tsv                                 each image, its label and the class explained
        interpretation.json                         method, model, target, layer, counts, affine

Names follow ClinicaDL 1.x (``split-<k>/best-<metric>/<group>/interpret-<name>/
mean_image-0_map.pt``, the name being the method here), placed where ClinicaDL
2.0 keeps a group's results. The ``.pt`` tensors have the input's shape
``(1, D, H, W)``; the NIfTI files carry the source image's affine, so they
overlay the image in a viewer.

Methods (Captum): ``gradients`` is ``captum.attr.Saliency`` (the absolute
gradient of the explained class's score with respect to the input, Simonyan
et al. 2014); ``grad-cam`` is ``captum.attr.LayerGradCam`` (Selvaraju et al.
2017) on the output of a convolution block (``level_grad_cam``, 1-based; the
last block by default), rectified and upsampled trilinearly to the input's
size with ``LayerAttribution.interpolate``.

This module is torch-free (the workflow calls it while building the DAG);
``snakemaps.interpret.saliency`` computes and writes the maps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import UserError

METHODS = ("gradients", "grad-cam")
# ClinicaDL's mode and part index: one whole image, part 0.
MODE = "image-0"


def method_dir(method: str) -> str:
    """``interpret-<method>``: the folder of one method's maps."""
    check_methods([method])
    return f"interpret-{method}"


def check_methods(methods: Iterable[str]) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(
            f"interpret.methods: unknown method(s) {unknown or methods!r}; "
            f"use a non-empty list of {', '.join(METHODS)}"
        )
    return methods


def available_models(train: Mapping[str, Any]) -> list[str]:
    """The models training keeps: best-<metric> per monitored metric, final, epoch-<e>."""
    models = [f"best-{metric}" for metric in train["monitor"]] + ["final"]
    return models + [f"epoch-{e}" for e in train["save_epochs"] if e <= train["epochs"]]


def interpretation_jobs(
    settings: Mapping[str, Any],
    *,
    groups: Sequence[str],
    n_splits: int,
    train: Mapping[str, Any],
    task: str = "classification",
) -> list[tuple[str, int, str]]:
    """``(group, split, model)`` of every interpretation the settings ask for.

    ``settings`` is the config's ``interpret`` section; ``groups`` the test
    groups of the experiment. Empty when interpretation is off. Raises
    UserError naming the key when a group, split, model or method does not exist.
    """
    if not settings.get("enabled"):
        return []
    if task == "reconstruction":
        raise UserError(
            "interpret.enabled: saliency maps explain a class score or a regression output; "
            "an autoencoder (data.task: reconstruction) has neither. Set interpret.enabled: "
            "false, or interpret a CNN trained from it (train.transfer_learning)"
        )
    check_methods(settings["methods"])
    chosen = list(groups) if settings.get("groups") is None else list(settings["groups"])
    unknown = [g for g in chosen if g not in groups]
    if unknown or not chosen:
        raise UserError(
            f"interpret.groups: no test group {unknown or chosen!r}; the test groups are "
            f"{', '.join(groups) or 'none'} (test.groups; the demo adds 'test')"
        )
    splits = list(range(n_splits)) if settings.get("splits") is None else settings["splits"]
    bad = [k for k in splits if not 0 <= k < n_splits]
    if bad or not splits:
        raise UserError(
            f"interpret.splits: no split {bad or splits!r}; split.n_splits is {n_splits}, "
            f"so the splits are 0 to {n_splits - 1}"
        )
    models = list(settings["models"])
    kept = available_models(train)
    missing = [m for m in models if m not in kept]
    if missing or not models:
        raise UserError(
            f"interpret.models: no saved model {missing or models!r}; training keeps "
            f"{', '.join(kept)} (best-<metric> for each train.monitor metric, final, and "
            "epoch-<e> for train.save_epochs)"
        )
    target = settings.get("target_node")
    if target is not None and task == "regression":
        raise UserError(
            f"interpret.target_node: {target!r} names a class, but data.task is regression "
            "(one output); set interpret.target_node: null"
        )
    level = settings.get("level_grad_cam")
    if level is not None and level < 1:
        raise UserError(f"interpret.level_grad_cam must be null or >= 1, got {level!r}")
    return [(g, int(k), m) for g in chosen for k in splits for m in models]


def output_dirs(maps: str, group: str, split: int, model: str, methods: Sequence[str]) -> list[str]:
    """The folders one interpretation job writes, one per method."""
    return [
        f"{maps}/test/group-{group}/results/split-{split}/{model}/{method_dir(m)}" for m in methods
    ]
