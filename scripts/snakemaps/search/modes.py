"""Random-search keys of ClinicaDL's modes: defaults when a mode is sampled, and their mapping.

``mode`` -> ``data.mode``; the sampled mode's own keys -> ``data.<same name>``
(``snakemaps.data.extraction`` reads them). Keys asking for what snakemaps
does another way stop the search, naming the key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..errors import UserError

# ClinicaDL's random-search defaults of the mode-dependent keys, used when that mode is sampled
# (clinicadl 1.x ``utils/maps_manager/iotools.py`` ``mode_default_values``).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "patch": {"patch_size": 50, "stride_size": 50, "use_extracted_patches": False},
    "roi": {"uncropped_roi": False, "use_extracted_roi": False},
    "slice": {"discarded_slices": 20, "slice_direction": 0, "use_extracted_slices": False},
    "image": {},
}
# The data.<key> each mode reads; the other modes' keys do not apply to a run (ClinicaDL:
# "the mode-dependent variables are used only if the corresponding mode is sampled").
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "image": (),
    "patch": ("patch_size", "stride_size", "selection_threshold"),
    "roi": ("roi_list", "uncropped_roi", "selection_threshold"),
    "slice": ("slice_direction", "slice_mode", "discarded_slices", "selection_threshold"),
}
_EXTRACTED = {
    "patch": "use_extracted_patches",
    "slice": "use_extracted_slices",
    "roi": "use_extracted_roi",
}


def mode_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """``data.mode`` and the sampled mode's own keys; UserError for what cannot run here.

    Without a sampled ``mode``, every mode key present is mapped: it applies
    when the config's ``data.mode`` is its mode.
    """
    for key in ("roi_custom_template", "roi_custom_mask_pattern"):
        if options.get(key):
            raise UserError(
                f"random_search.json: '{key}' finds roi masks in a CAPS by pattern; give the "
                "masks by path in the config instead (data.roi_masks: {name: mask file}) and "
                f"remove '{key}'"
            )
    mode = options.get("mode")
    keys = MODE_OPTIONS[mode] if mode else tuple(k for ks in MODE_OPTIONS.values() for k in ks)
    extracted = _EXTRACTED.get(mode) if mode else None
    if extracted and options.get(extracted):
        raise UserError(
            f"random_search.json: '{extracted}' is true, but snakemaps does not read "
            "ClinicaDL's extracted part files: it cuts every part on the fly from its tensor "
            f"cache (same values). Set '{extracted}' to false or remove it"
        )
    data = {key: copy.deepcopy(options[key]) for key in keys if key in options}
    if mode:
        data = {"mode": mode, **data}
    return data
