"""Find each session's image in a Clinica CAPS, as ClinicaDL does.

A CAPS holds ``subjects/<participant_id>/<session_id>/<pipeline>/`` folders.
The file of one session is found with ClinicaDL 1.6.1's query patterns
(``clinicadl/utils/clinica_utils.py`` ``linear_nii``, ``pet_linear_nii``;
``prepare_data_utils.compute_folder_and_file_type``), searched recursively
under the session folder and without regard to case, as Clinica's file
reader does:

==============  ==========================================================================
preprocessing   pattern (``[_desc-Crop]`` unless ``use_uncropped_image``)
==============  ==========================================================================
t1-linear       ``*space-MNI152NLin2009cSym[_desc-Crop]_res-1x1x1_T1w.nii.gz``
flair-linear    ``*space-MNI152NLin2009cSym[_desc-Crop]_res-1x1x1_flair.nii.gz``
pet-linear      ``pet_linear/*_trc-<tracer>_space-MNI152NLin2009cSym[_desc-Crop]_res-1x1x1_
                suvr-<suvr_reference_region>_pet.nii.gz``
custom          ``*<custom_suffix>``
==============  ==========================================================================

The patterns start with ``*space-`` so both Clinica namings of t1-linear
and flair-linear match: the current ``sub-X_ses-Y_space-...`` and the old
(Clinica <= 0.7) ``sub-X_ses-Y_T1w_space-...``. pet-linear outputs of Clinica
<= 0.9 carry an extra ``_pet`` before ``_space-``; that pattern is tried when
the current one finds nothing.

Where ClinicaDL's ``prepare-data image`` already wrote the session's tensor
(``deeplearning_prepare_data/image_based/<t1_linear|flair_linear|pet_linear|custom>/
<image name>.pt``) and it is not older than the image, it is read instead of
decoding the NIfTI again (``tensor_path``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

logger = logging.getLogger("snakemaps.data.caps")

PREPROCESSINGS = ("t1-linear", "pet-linear", "flair-linear", "custom")
# ClinicaDL's ``mod_subfolder``: where prepare-data writes a preprocessing's tensors.
TENSOR_FOLDERS = {
    "t1-linear": "t1_linear",
    "flair-linear": "flair_linear",
    "pet-linear": "pet_linear",
    "custom": "custom",
}
# Clinica's tracers and SUVR reference regions (clinica/utils/pet.py).
TRACERS = ("11CPIB", "18FAV1451", "18FAV45", "18FFBB", "18FFDG", "18FFMM")
SUVR_REGIONS = ("pons", "cerebellumPons", "pons2", "cerebellumPons2")
SPACE = "space-MNI152NLin2009cSym"
SHOWN_MISSING = 10


@dataclass(frozen=True)
class CapsQuery:
    """Which file of a CAPS session holds the image (``data.*`` keys of the same names)."""

    caps_directory: Path
    preprocessing: str = "t1-linear"
    use_uncropped_image: bool = False
    tracer: str | None = None
    suvr_reference_region: str | None = None
    custom_suffix: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CapsQuery:
        """The query of the ``data`` settings; UserError naming the key at fault."""
        preprocessing = settings.get("preprocessing") or "t1-linear"
        if preprocessing not in PREPROCESSINGS:
            raise UserError(
                f"data.preprocessing: unknown preprocessing {preprocessing!r}; choose one of "
                f"{', '.join(PREPROCESSINGS)} (the Clinica pipeline whose outputs the CAPS holds)"
            )
        query = cls(
            caps_directory=Path(settings["caps_directory"]),
            preprocessing=preprocessing,
            use_uncropped_image=bool(settings.get("use_uncropped_image", False)),
            tracer=settings.get("tracer"),
            suvr_reference_region=settings.get("suvr_reference_region"),
            custom_suffix=settings.get("custom_suffix"),
        )
        query.check()
        return query

    def check(self) -> None:
        unused = {
            "tracer": self.tracer and self.preprocessing != "pet-linear",
            "suvr_reference_region": self.suvr_reference_region
            and self.preprocessing != "pet-linear",
            "custom_suffix": self.custom_suffix and self.preprocessing != "custom",
            "use_uncropped_image": self.use_uncropped_image and self.preprocessing == "custom",
        }
        for key, is_unused in unused.items():
            if is_unused:
                raise UserError(
                    f"data.{key} does nothing with data.preprocessing {self.preprocessing}; "
                    f"remove it, or set the preprocessing it belongs to"
                )
        if self.preprocessing == "pet-linear":
            for key, value, known in (
                ("tracer", self.tracer, TRACERS),
                ("suvr_reference_region", self.suvr_reference_region, SUVR_REGIONS),
            ):
                if not value:
                    raise UserError(
                        f"data.{key}: pet-linear needs it to find the images "
                        f"(Clinica's values: {', '.join(known)})"
                    )
        if self.preprocessing == "custom" and not self.custom_suffix:
            raise UserError(
                "data.custom_suffix: preprocessing custom needs the end of the images' file "
                "names, e.g. graymatter_space-Ixi549Space_modulated-off_probability.nii.gz"
            )
        if not self.caps_directory.is_dir():
            raise UserError(
                f"data.caps_directory: {self.caps_directory} is not a folder; set it to a "
                "Clinica CAPS (the folder that holds subjects/)"
            )
        if not (self.caps_directory / "subjects").is_dir():
            raise UserError(
                f"data.caps_directory: {self.caps_directory} has no subjects/ folder, so it is "
                "not a CAPS; set it to the folder that Clinica's pipelines wrote"
            )

    def patterns(self) -> list[str]:
        """The file patterns searched under each session folder, in order."""
        crop = "" if self.use_uncropped_image else "_desc-Crop"
        if self.preprocessing == "t1-linear":
            return [f"*{SPACE}{crop}_res-1x1x1_T1w.nii.gz"]
        if self.preprocessing == "flair-linear":
            return [f"*{SPACE}{crop}_res-1x1x1_flair.nii.gz"]
        if self.preprocessing == "pet-linear":
            tail = f"{SPACE}{crop}_res-1x1x1_suvr-{self.suvr_reference_region}_pet.nii.gz"
            return [
                f"pet_linear/*_trc-{self.tracer}_{tail}",
                f"pet_linear/*_trc-{self.tracer}_pet_{tail}",  # Clinica <= 0.9
            ]
        return [f"*{self.custom_suffix}"]

    def session_folder(self, participant_id: str, session_id: str) -> Path:
        return self.caps_directory / "subjects" / participant_id / session_id

    def searched(self, participant_id: str, session_id: str) -> list[str]:
        """The glob patterns (absolute) searched for one session."""
        folder = self.session_folder(participant_id, session_id)
        return [str(folder / "**" / pattern) for pattern in self.patterns()]

    def find(self, participant_id: str, session_id: str) -> tuple[Path | None, str]:
        """The session's image, or None and why (no file, or several files)."""
        folder = self.session_folder(participant_id, session_id)
        searched = self.searched(participant_id, session_id)
        if folder.is_dir():
            for pattern, shown in zip(self.patterns(), searched):
                found = sorted(folder / name for name in insensitive_glob(pattern, folder))
                if len(found) == 1:
                    return found[0].resolve(), ""
                if len(found) > 1:
                    return None, f"{len(found)} files match {shown}: {', '.join(map(str, found))}"
        return None, "no file matches " + " or ".join(searched)

    def tensor_path(self, participant_id: str, session_id: str, image: Path) -> Path:
        """Where ClinicaDL's ``prepare-data image`` writes this image's tensor."""
        name = image.name.removesuffix(".gz").removesuffix(".nii") + ".pt"
        folder = self.session_folder(participant_id, session_id) / "deeplearning_prepare_data"
        return folder / "image_based" / TENSOR_FOLDERS[self.preprocessing] / name


def insensitive_glob(pattern: str, folder: Path) -> list[str]:
    """Paths under ``folder``, at any depth, whose tail matches ``pattern`` whatever its case.

    Clinica's file reader globs ``<session folder>/**/<pattern>`` ignoring case;
    the session folder itself is a literal path.
    """
    chars = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern)
    return glob.glob(f"**/{chars}", root_dir=folder, recursive=True)


def find_images(
    query: CapsQuery, participants: Sequence[str], sessions: Sequence[str], table: str
) -> tuple[list[str], list[str]]:
    """(image, file to decode) per session; UserError listing every session not found.

    The file to decode is ClinicaDL's extracted tensor where one is up to
    date, else the image itself.
    """
    images, sources, missing = [], [], []
    for participant, session in zip(participants, sessions):
        image, why = query.find(participant, session)
        if image is None:
            missing.append(f"{participant} {session}: {why}")
            continue
        tensor = query.tensor_path(participant, session, image)
        fresh = tensor.is_file() and tensor.stat().st_mtime >= image.stat().st_mtime
        images.append(str(image))
        sources.append(str(tensor if fresh else image))
    if missing:
        shown = "\n  ".join(missing[:SHOWN_MISSING])
        more = f"\n  ... and {len(missing) - SHOWN_MISSING} more" if len(missing) > 10 else ""
        raise UserError(
            f"data.caps_directory: {len(missing)} session(s) of {table} have no "
            f"{query.preprocessing} image in {query.caps_directory}:\n  {shown}{more}\n"
            f"Run Clinica's {query.preprocessing} pipeline on them, remove them from the table, "
            "or check data.preprocessing and its options (data.use_uncropped_image, "
            "data.tracer, data.suvr_reference_region, data.custom_suffix)."
        )
    extracted = sum(source != image for source, image in zip(sources, images))
    if extracted:
        logger.info(
            "%d of %d images read from ClinicaDL's extracted tensors", extracted, len(images)
        )
    return images, sources


def caps_image_name(participant_id: str, session_id: str, preprocessing: str = "t1-linear") -> str:
    """The path, relative to a CAPS, of a session's cropped image as Clinica names it today."""
    folder = {"t1-linear": "t1_linear", "flair-linear": "flair_linear"}[preprocessing]
    suffix = "T1w" if preprocessing == "t1-linear" else "flair"
    name = f"{participant_id}_{session_id}_{SPACE}_desc-Crop_res-1x1x1_{suffix}.nii.gz"
    return f"subjects/{participant_id}/{session_id}/{folder}/{name}"
