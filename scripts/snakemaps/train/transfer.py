"""Transfer learning: start each split from a source MAPS's weights (ClinicaDL's rules).

``train.transfer_learning`` names a source MAPS and one of its saved models
(``selection``: ``best-<metric>`` or ``final``). Split ``k`` starts from the
source's split ``k`` (ClinicaDL's split rule). Tensors are matched by name
and shape, after ClinicaDL's renaming (``transfer_weights`` in
``utils/network/sub_network.py``):

- CNN <- CNN, AutoEncoder <- AutoEncoder: names as they are;
- CNN <- AutoEncoder: the source's ``encoder.*`` into ``convolutions.*``;
- AutoEncoder <- CNN: the source's ``convolutions.*`` into ``encoder.*``.

Parameters and buffers (BatchNorm statistics) are both copied. A tensor whose
name matches but whose shape does not is an error naming the layer; tensors
of the target without a counterpart keep their initial weights and are
listed, as are the source's tensors that were not used.

The torch-free helpers (``source_model``, ``check_source``) are used by the
workflow while it builds the DAG.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

KEY = "train.transfer_learning"
# (target network, source network) -> (source prefix, target prefix)
RENAMES = {
    ("CNN", "AutoEncoder"): ("encoder.", "convolutions."),
    ("AutoEncoder", "CNN"): ("convolutions.", "encoder."),
}


def model_folder(selection: str) -> str:
    """The folder of a saved model under ``models/``: ``best_models/best-<m>`` or ``final``."""
    return f"best_models/{selection}" if selection.startswith("best-") else selection


def source_model(settings: Mapping[str, Any], split: int) -> Path | None:
    """The source model file of split ``split`` (None when transfer learning is off)."""
    path = settings.get("path")
    if not path:
        return None
    folder = model_folder(settings.get("selection") or "best-loss")
    return Path(path) / "training" / f"split-{split}" / "models" / folder / "model.pt"


def check_source(settings: Mapping[str, Any], split: int) -> Path | None:
    """The source model file, or a ``UserError`` saying what is missing and how to fix it."""
    model = source_model(settings, split)
    if model is None:
        return None
    maps = Path(settings["path"])
    if not (maps / "model.json").is_file():
        raise UserError(
            f"{KEY}.path: {maps} is not a MAPS (no model.json there); set it to the MAPS "
            "directory of a finished training"
        )
    if not model.is_file():
        found = sorted(
            p.parent.name
            for p in (maps / "training" / f"split-{split}" / "models").glob("**/model.pt")
        )
        hint = (
            f"saved models of that split: {', '.join(found)}; set {KEY}.selection to one"
            if found
            else f"train split-{split} of the source first (split k starts from the source's "
            "split k)"
        )
        raise UserError(f"{KEY}: the source model {model} does not exist; {hint}")
    return model


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def match_state(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    target_type: str,
    source_type: str,
    source_file: str = "the source",
) -> tuple[dict[str, str], list[str], list[str]]:
    """Match tensors by name (after renaming) and shape.

    ``target`` and ``source`` map names to tensors (anything with ``.shape``).
    Returns (target name -> source name of every copied tensor, target names
    left as initialised, source names not used). A shape mismatch raises
    ``UserError`` naming the layer; so does a source with nothing to copy.
    """
    source_prefix, target_prefix = RENAMES.get((target_type, source_type), ("", ""))
    copied: dict[str, str] = {}
    unused: list[str] = []
    for name, tensor in source.items():
        if not name.startswith(source_prefix):
            unused.append(name)
            continue
        renamed = target_prefix + name.removeprefix(source_prefix)
        if renamed not in target:
            unused.append(name)
            continue
        want, have = tuple(target[renamed].shape), tuple(tensor.shape)
        if want != have:
            layer = renamed.rsplit(".", 1)[0]
            raise UserError(
                f"{KEY}: layer {layer!r} does not fit: {renamed} has shape {list(want)} here "
                f"but {name} has {list(have)} in {source_file} ({source_type} -> "
                f"{target_type}). Give the network the source's convolutions (model.* keys as "
                "in the source MAPS's model.json) or choose another source"
            )
        copied[renamed] = name
    if not copied:
        raise UserError(
            f"{KEY}: no layer of {source_file} ({source_type}) matches this {target_type} "
            f"by name; the source's tensors are {', '.join(list(source)[:6])}..."
        )
    left = [name for name in target if name not in copied]
    return copied, left, unused


def apply_transfer(
    network: Any, settings: Mapping[str, Any], split: int, target_type: str
) -> dict[str, Any] | None:
    """Load the source's matching weights into ``network``; the record for provenance.

    Returns None when ``settings`` has no path. The record names the source
    MAPS, the file and its SHA-256, the copied tensors and the ones left out.
    """
    import torch

    from .. import io
    from .distributed import bare

    model_file = check_source(settings, split)
    if model_file is None:
        return None
    source_json = io.read_json(Path(settings["path"]) / "model.json")
    source_type = source_json["network"].get("name_", "CNN")
    if (target_type, source_type) not in RENAMES and target_type != source_type:
        raise UserError(
            f"{KEY}: cannot transfer from a {source_type} into a {target_type}; ClinicaDL "
            "transfers between CNNs, between autoencoders, and between the two"
        )
    weights = torch.load(model_file, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("network."): v for k, v in weights.items()}
    module = bare(network)
    state = module.state_dict()
    copied, left, unused = match_state(state, weights, target_type, source_type, str(model_file))
    with torch.no_grad():
        for target_name, source_name in copied.items():
            state[target_name].copy_(weights[source_name])
    return {
        "source_maps": str(Path(settings["path"]).resolve()),
        "selection": settings.get("selection") or "best-loss",
        "source_split": split,
        "file": str(model_file.resolve()),
        "sha256": sha256(model_file),
        "source_network": source_type,
        "target_network": target_type,
        "copied": sorted(copied),
        "left_initialized": left,
        "source_unused": unused,
    }


# ClinicaDL 0.2's transfer_learning_selection values, as MAPS model names.
CLINICADL_SELECTIONS = {"best_loss": "best-loss", "best_balanced_accuracy": "best-BalancedAccuracy"}


def search_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """``train.transfer_learning`` from random-search options (``{}`` without a path).

    ``transfer_learning_path`` is the source MAPS; ``transfer_learning_selection``
    takes ClinicaDL's names or this workflow's. Left out, it is ClinicaDL's
    default: ``best_balanced_accuracy``, or ``best_loss`` when the source is an
    autoencoder (its ``model.json`` says reconstruction; ClinicaDL selects
    only by loss there).
    """
    path = options.get("transfer_learning_path")
    if not path:
        if options.get("transfer_learning_selection") is not None:
            raise UserError(
                "random_search.json: 'transfer_learning_selection' is set but "
                "'transfer_learning_path' is not; give the source MAPS in "
                "transfer_learning_path, or remove transfer_learning_selection"
            )
        return {}
    selection = options.get("transfer_learning_selection")
    if selection is None:
        selection = "best_balanced_accuracy"
        source = Path(path) / "model.json"
        if source.is_file():
            import json

            if json.loads(source.read_text()).get("task") == "reconstruction":
                selection = "best_loss"
    selection = CLINICADL_SELECTIONS.get(selection, selection)
    return {"transfer_learning": {"path": str(path), "selection": selection}}
