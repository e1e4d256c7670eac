"""Synthetic demo cohort: T1-weighted brain MRI with a regional Alzheimer-like signal.

``generate_cohort`` writes a small longitudinal cohort that looks like
skull-stripped T1w images linearly registered to MNI space (as ClinicaDL's
``t1-linear`` pipeline gives them), so the workflow can be demonstrated end to
end without real data:

* ``participants.tsv`` (training cohort) and ``test.tsv`` (a held-out group of
  other participants), with columns ``participant_id``, ``session_id``,
  ``label`` (``AD``/``CN``), ``age``, ``sex``, ``mmse`` (an MMSE-like
  cognitive score, 0-30, that falls with the medial temporal atrophy) and
  ``image`` (a path relative to the TSV's folder);
* ``images/sub-XXXX_ses-MYYY_T1w.nii.gz``: float32 NIfTI volumes on an
  isotropic grid in MNI space.

With ``caps=True`` the cohort is a Clinica CAPS instead, as ClinicaDL users
have it: the images go to ``caps/subjects/<participant>/<session>/t1_linear/``
under t1-linear's names, and the tables are ClinicaDL's (``diagnosis`` for
``label``, no ``image`` column).

The images are built from nilearn's bundled ICBM152 2009 templates (the T1
and the grey-matter probability map; nothing is downloaded), smoothed and
resampled to an isotropic grid of the requested shape that covers the brain.
Each participant gets:

* their own anatomy: a small residual affine and a smooth low-frequency
  displacement field (shared by all their sessions);
* a global age effect: mild grey-matter loss and ventricle enlargement;
* for ``AD``: atrophy of both medial temporal lobes (tissue, mostly grey matter,
  replaced by CSF in ellipsoids around the hippocampi, MNI (+-25, -20, -15) mm),
  scaled by ``effect_size`` and progressing over sessions; ``CN`` participants
  get a milder, slower change there;
* a smooth intensity bias field and contrast jitter, a normalisation that maps
  the brain's 99.5th percentile to 1, Gaussian noise of standard deviation
  ``noise`` in the brain, and clipping to [0, 1].

The signal is regional on purpose: the mean intensity of an image says next
to nothing about its label, a CNN has to look at the medial temporal lobes.

Everything is drawn from ``numpy.random.default_rng`` streams derived from
``seed``: the same arguments give byte-identical files. Torch is not imported.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import atomic_write_bytes, write_tsv
from .caps import caps_image_name

LOGGER = logging.getLogger("snakemaps.data.synthetic")
LOG_EVERY = 25

COLUMNS = ("participant_id", "session_id", "label", "age", "sex", "mmse", "image")
LABELS = ("AD", "CN")
IMAGE_DIR = "images"
CAPS_DIR = "caps"
MONTHS_BETWEEN_SESSIONS = 12
MIN_SIDE, MAX_SIDE = 16, 256

# Template files bundled with nilearn (nilearn/datasets/data).
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
}
BRAIN_MARGIN_MM = 4.0  # around the template brain's bounding box

# Anatomy (MNI mm).
MTL_CENTRES_MM = ((-25.0, -20.0, -15.0), (25.0, -20.0, -15.0))  # hippocampi
MTL_RADII_MM = (9.0, 16.0, 9.0)
VENTRICLE_CENTRE_MM = (0.0, -8.0, 15.0)
VENTRICLE_RADII_MM = (14.0, 28.0, 16.0)
ELLIPSOID_CUTOFF = 3.0  # the Gaussian weights around these centres end at 3 radii

# Disease and ageing model. ``effect_size`` scales MTL_ATROPHY.
# Calibrated so that the default effect_size=1 lets a small 3D CNN (4 conv blocks, global
# average pooling, Adam 1e-3, ~100 training participants at 40x48x40) reach a validation
# balanced accuracy of ~0.9-1.0 in 5-10 epochs, while the mean intensity alone is at chance.
MTL_ATROPHY = 1.3  # tissue fraction lost at an MTL centre (AD severity 1), clipped at 0.95
AD_SEVERITY = (0.55, 1.0)  # uniform range at baseline
CN_SEVERITY = (0.0, 0.3)
AD_PROGRESSION_PER_YEAR = (0.08, 0.16)
CN_PROGRESSION_PER_YEAR = (0.0, 0.03)
AGE_GM_LOSS_PER_YEAR = 0.003  # global grey-matter fraction lost per year over 55
VENTRICLE_EXPANSION_PER_YEAR = 0.004  # linear expansion of the ventricles per year over 55
BASELINE_AGE = (55.0, 86.0)
REFERENCE_AGE = 55.0
# Cognition: an MMSE-like score, 30 minus points per unit of MTL atrophy (severity
# + progression), plus rater noise; a regression target the images carry.
MMSE_POINTS_PER_ATROPHY = 12.0
MMSE_NOISE = 1.0

# Participant nuisance variation.
DEFORMATION_VOXELS = 1.0  # std of the smooth displacement field, in output voxels
FIELD_FREQUENCIES = 3  # cosine frequencies per axis (0, 1, 2) of the smooth random fields
RESIDUAL_SCALE_STD = 0.02
RESIDUAL_ROTATION_STD_DEG = 1.5
BIAS_FIELD_STD = 0.04
CONTRAST_STD = 0.03

# Tissue intensities of the template (T1 / max), measured on the ICBM152 2009 T1.
T1_GM, T1_CSF = 0.65, 0.27


GROUPS = ("participants", "test")


def generated_paths(out_dir: str | Path) -> dict[str, Path]:
    """The TSVs that ``generate_cohort(out_dir, ...)`` writes (nothing is generated)."""
    return {name: Path(out_dir) / f"{name}.tsv" for name in GROUPS}


def generate_cohort(
    out_dir: str | Path,
    n_participants: int = 120,
    n_test_participants: int = 40,
    max_sessions: int = 3,
    shape: Sequence[int] = (40, 48, 40),
    seed: int = 0,
    effect_size: float = 1.0,
    noise: float = 0.05,
    parts: Sequence[str] = GROUPS,
    caps: bool = False,
) -> dict[str, Path]:
    """Write a synthetic AD/CN cohort to ``out_dir``; return the TSV path of each part written.

    ``parts`` chooses the tables written: ``participants`` (the training
    cohort) and ``test`` (the held-out group). A participant's images depend
    only on the seed and their index, so the training cohort is the same
    whatever ``n_test_participants`` is, and the two parts can be written by
    separate calls. ``n_test_participants`` 0 means no held-out group: no
    ``test.tsv`` is written. Images are written first and the TSVs last, each
    atomically, so a TSV that exists lists images that exist. ``caps``: write
    a CAPS (``CAPS_DIR``) and ClinicaDL-style tables.
    """
    unknown = sorted(set(parts) - set(GROUPS))
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty subset of {list(GROUPS)}; got {parts}")
    n_participants = _check_int("n_participants", n_participants, 4)
    n_test_participants = check_test_count(n_test_participants)
    max_sessions = _check_int("max_sessions", max_sessions, 1)
    shape = _check_shape(shape)
    seed = _check_int("seed", seed, 0)
    effect_size = _check_float("effect_size", effect_size)
    noise = _check_float("noise", noise)

    out_dir = Path(out_dir)
    paths = generated_paths(out_dir)
    start = time.perf_counter()
    grid = _grid(shape)
    first_index = {"participants": 1, "test": n_participants + 1}
    counts = {"participants": n_participants, "test": n_test_participants}
    # A test group of 0 participants is no group: it writes no test.tsv.
    chosen = {
        name: _plan_group(seed, first_index[name], counts[name], max_sessions, group=g)
        for g, name in enumerate(GROUPS)
        if name in parts and counts[name]
    }
    n_images = sum(len(p.sessions) for plan in chosen.values() for p in plan)
    LOGGER.info(
        "synthetic cohort: %s, %d images of shape %s (%.2f mm voxels) in %s",
        " + ".join(f"{len(plan)} {name}" for name, plan in chosen.items()) or "nothing to write",
        n_images,
        "x".join(map(str, shape)),
        grid.voxel_size,
        out_dir,
    )
    written = 0
    for name, plan in chosen.items():
        rows = []
        for participant in plan:
            for session_id, age, mmse, image in _participant_images(
                participant, grid, seed, effect_size, noise
            ):
                relative = (
                    f"{CAPS_DIR}/{caps_image_name(participant.participant_id, session_id)}"
                    if caps
                    else f"{IMAGE_DIR}/{participant.participant_id}_{session_id}_T1w.nii.gz"
                )
                atomic_write_bytes(out_dir / relative, _nifti_gz_bytes(image, grid.affine))
                rows.append(
                    (
                        participant.participant_id,
                        session_id,
                        participant.label,
                        age,
                        participant.sex,
                        mmse,
                        relative,
                    )
                )
                written += 1
                if written % LOG_EVERY == 0 or written == n_images:
                    LOGGER.info(
                        "synthetic cohort: %d/%d images written (%.1f s)",
                        written,
                        n_images,
                        time.perf_counter() - start,
                    )
        write_tsv(paths[name], _frame(rows, caps))
        LOGGER.info("synthetic cohort: wrote %s (%d rows)", paths[name], len(rows))
    return {name: paths[name] for name in chosen}


def atrophy_mask(shape: Sequence[int] = (40, 48, 40), level: float = 0.5) -> np.ndarray:
    """Where the AD signal is, in the images' voxel space: a boolean array of ``shape``.

    True where the medial temporal atrophy weight (1 at the hippocampi, MNI
    (+-25, -20, -15) mm, falling off over ``MTL_RADII_MM``) is at least
    ``level``, on the grid every image of ``generate_cohort(shape=shape)`` is
    written on (participants' small anatomical deformations aside).
    """
    grid = _grid(_check_shape(shape))
    weight = sum(_ellipsoid(grid.points_mm, centre, MTL_RADII_MM) for centre in MTL_CENTRES_MM)
    return np.asarray(weight).reshape(grid.shape) >= level


# ----------------------------------------------------------------------------- validation


def _bad(key: str, requirement: str, value: object) -> UserError:
    return UserError(
        f"data.synthetic.{key} must be {requirement}, got {value!r}: "
        f"fix data.synthetic.{key} in the config"
    )


def _check_int(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad(key, f"an integer >= {minimum}", value)
    if value < minimum:
        raise _bad(key, f"an integer >= {minimum}", value)
    return int(value)


def check_test_count(value: object) -> int:
    """0 (no held-out group) or at least one participant per class."""
    if value == 0 and not isinstance(value, bool):
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
        raise UserError(
            f"data.synthetic.n_test_participants must be 0 (no test group) or an integer >= 2 "
            f"(one AD and one CN participant at least: a group of one holds a single class, "
            f"whose balanced accuracy and ROC AUC are undefined), got {value!r}: "
            "fix data.synthetic.n_test_participants in the config"
        )
    return int(value)


def _check_float(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(key, "a number >= 0", value)
    if not math.isfinite(float(value)) or value < 0:
        raise _bad(key, "a number >= 0", value)
    return float(value)


def _check_shape(shape: object) -> tuple[int, int, int]:
    requirement = f"a list of 3 integers between {MIN_SIDE} and {MAX_SIDE} (e.g. [40, 48, 40])"
    if isinstance(shape, np.ndarray):
        shape = shape.tolist()
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 3:
        raise _bad("shape", requirement, shape)
    for side in shape:
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise _bad("shape", requirement, shape)
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise _bad("shape", requirement, shape)
    return tuple(int(side) for side in shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class _Templates:
    """The 1 mm ICBM152 maps (T1 / max, grey-matter probability) and their affine."""

    t1: np.ndarray
    gm: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=1)
def _templates() -> _Templates:
    """Load nilearn's bundled MNI152 templates at 1 mm (no download)."""
    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = {
        key: next((Path(f) / "datasets" / "data" / name for f in folders), None)
        for key, name in _TEMPLATE_FILES.items()
    }
    if all(path is not None and path.is_file() for path in files.values()):
        images = {key: nib.load(path) for key, path in files.items()}
    else:  # layout changed: use nilearn's loaders (same files, slower import)
        from nilearn import datasets

        images = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
        }
    data = {}
    for key, image in images.items():
        array = np.asarray(image.dataobj, dtype=np.float32)
        data[key] = array / array.max()
    return _Templates(affine=np.asarray(images["t1"].affine, dtype=float), **data)


@dataclass(frozen=True)
class _Grid:
    """The output grid and the template maps smoothed for it."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_size: float
    points_mm: np.ndarray  # (3, n) world coordinates of the output voxel centres
    centre_mm: np.ndarray
    t1: np.ndarray  # template maps smoothed to the output resolution
    gm: np.ndarray
    template_inverse: np.ndarray  # world mm -> voxel of the smoothed maps


@functools.lru_cache(maxsize=4)
def _grid(shape: tuple[int, int, int]) -> _Grid:
    """An isotropic MNI grid of ``shape`` covering the template brain, with its maps."""
    from scipy import ndimage

    templates = _templates()
    brain = templates.t1 > 0
    index = np.argwhere(brain)
    corners = np.stack([index.min(0), index.max(0)], axis=1).astype(float)  # (3, 2)
    corners_mm = templates.affine[:3, :3] @ corners + templates.affine[:3, 3:]
    low, high = corners_mm.min(1) - BRAIN_MARGIN_MM, corners_mm.max(1) + BRAIN_MARGIN_MM
    voxel_size = math.ceil(float(np.max((high - low) / np.array(shape))) * 100) / 100
    centre = (low + high) / 2
    affine = np.eye(4)
    affine[:3, :3] *= voxel_size
    affine[:3, 3] = centre - voxel_size * (np.array(shape) - 1) / 2
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    points = affine[:3, :3] @ ijk + affine[:3, 3:]

    # Anti-aliasing before sampling: a Gaussian whose FWHM is the output voxel size;
    # the smoothed maps are then kept at about half the output voxel size (faster sampling).
    template_voxel = float(np.abs(np.diag(templates.affine)[:3]).mean())
    sigma = voxel_size / template_voxel / 2.3548
    step = max(1, int(voxel_size / template_voxel / 2))

    def smooth(volume: np.ndarray) -> np.ndarray:
        smoothed = ndimage.gaussian_filter(volume, sigma=sigma, mode="constant")
        return np.ascontiguousarray(smoothed[::step, ::step, ::step])

    kept_affine = templates.affine @ np.diag([step, step, step, 1.0])
    return _Grid(
        shape=shape,
        affine=affine,
        voxel_size=voxel_size,
        points_mm=points,
        centre_mm=centre,
        t1=smooth(templates.t1),
        gm=smooth(templates.gm),
        template_inverse=np.linalg.inv(kept_affine),
    )


# ----------------------------------------------------------------------------- participants


@dataclass(frozen=True)
class _Participant:
    index: int  # global number: sub-0001 is 1
    participant_id: str
    label: str
    sex: str
    baseline_age: float
    sessions: tuple[int, ...]  # months since baseline


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _plan_group(
    seed: int, first_index: int, count: int, max_sessions: int, group: int
) -> list[_Participant]:
    """Participants numbered from ``first_index``, labels balanced (AD gets the odd one)."""
    labels = np.array([LABELS[i % 2] for i in range(count)])
    labels = labels[_rng(seed, 1_000_000, group).permutation(count)]
    plan = []
    for offset, label in enumerate(labels):
        index = first_index + offset
        rng = _rng(seed, index, 0)
        n_sessions = int(rng.integers(1, max_sessions + 1))
        plan.append(
            _Participant(
                index=index,
                participant_id=f"sub-{index:04d}",
                label=str(label),
                sex=str(rng.choice(["F", "M"])),
                baseline_age=float(rng.uniform(*BASELINE_AGE)),
                sessions=tuple(MONTHS_BETWEEN_SESSIONS * k for k in range(n_sessions)),
            )
        )
    return plan


def _participant_images(
    participant: _Participant, grid: _Grid, seed: int, effect_size: float, noise: float
):
    """Yield ``(session_id, age, mmse, image)`` for each session of one participant."""
    from scipy import ndimage

    rng = _rng(seed, participant.index, 1)
    shape = grid.shape

    # Anatomy, shared by all sessions: residual affine + smooth displacement (mm).
    angles = np.deg2rad(rng.normal(0.0, RESIDUAL_ROTATION_STD_DEG, 3))
    matrix = _rotation(angles) * np.exp(rng.normal(0.0, RESIDUAL_SCALE_STD, 3))
    field = [_smooth_field(rng, shape, DEFORMATION_VOXELS * grid.voxel_size) for _ in range(3)]
    centre = grid.centre_mm[:, None]
    anatomy = centre + matrix @ (grid.points_mm - centre) + np.stack(field).reshape(3, -1)

    # Disease course (fraction of MTL_ATROPHY), per hemisphere.
    if participant.label == "AD":
        severity = rng.uniform(*AD_SEVERITY)
        progression = rng.uniform(*AD_PROGRESSION_PER_YEAR)
    else:
        severity = rng.uniform(*CN_SEVERITY)
        progression = rng.uniform(*CN_PROGRESSION_PER_YEAR)
    asymmetry = rng.uniform(0.8, 1.2, 2)
    rater = _rng(seed, participant.index, 2)  # its own stream: the images do not change

    # Scanner: contrast jitter and a smooth multiplicative bias field.
    contrast = 1.0 + rng.normal(0.0, CONTRAST_STD)
    bias = 1.0 + _smooth_field(rng, shape, BIAS_FIELD_STD)

    for months in participant.sessions:
        years = months / 12
        age = round(round(participant.baseline_age, 1) + years, 1)
        ageing = max(age - REFERENCE_AGE, 0.0)
        points = _expand_ventricles(anatomy, VENTRICLE_EXPANSION_PER_YEAR * ageing)
        voxels = grid.template_inverse[:3, :3] @ points + grid.template_inverse[:3, 3:]
        sample = functools.partial(
            ndimage.map_coordinates, coordinates=voxels, order=1, mode="constant", prefilter=False
        )
        t1, gm = sample(grid.t1), sample(grid.gm)
        mask = np.clip(t1 / T1_CSF, 0.0, 1.0).reshape(shape)  # soft brain mask

        # Ageing: grey matter everywhere partly replaced by CSF.
        image = t1 - (T1_GM - T1_CSF) * gm * min(AGE_GM_LOSS_PER_YEAR * ageing, 0.5)
        # Medial temporal atrophy: tissue (mostly grey matter) replaced by CSF.
        mtl = np.zeros_like(t1)
        amount = effect_size * MTL_ATROPHY * (severity + progression * years)
        for centre_mm, side in zip(MTL_CENTRES_MM, asymmetry):
            mtl += amount * side * _ellipsoid(points, centre_mm, MTL_RADII_MM)
        image -= np.clip(image - T1_CSF, 0.0, None) * np.clip(mtl, 0.0, 0.95)
        image *= contrast

        # Bias field, normalisation (99.5th percentile of the brain -> 1), noise in the brain.
        image = image.reshape(shape) * bias
        image /= np.percentile(image[mask > 0.5], 99.5)
        image += rng.normal(0.0, noise, shape).astype(np.float32) * np.clip(2 * mask, 0, 1)
        image *= mask > 0.02
        atrophy = severity + progression * years
        mmse = 30.0 - MMSE_POINTS_PER_ATROPHY * atrophy + rater.normal(0.0, MMSE_NOISE)
        mmse = int(np.clip(np.rint(mmse), 0, 30))
        yield f"ses-M{months:03d}", age, mmse, np.clip(image, 0.0, 1.0).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], std: float) -> np.ndarray:
    """A smooth random field over ``shape``: low-frequency cosines, ``std`` on average."""
    bases = [
        np.cos(np.pi * np.outer(np.arange(n) + 0.5, np.arange(FIELD_FREQUENCIES)) / n)
        for n in shape
    ]
    # Each non-constant cosine has mean square 1/2: scale so the field's variance is std**2.
    power = (1.0 + 0.5 * (FIELD_FREQUENCIES - 1)) ** 1.5
    weights = rng.normal(0.0, std / power, (FIELD_FREQUENCIES,) * 3)
    return np.einsum("abc,ia,jb,kc->ijk", weights, *bases, optimize=True).astype(np.float32)


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(points: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """A smooth weight: 1 at ``centre``, ~0.6 on the ellipsoid, 0 beyond 3 times its radii."""
    scaled = (points - np.asarray(centre)[:, None]) / np.asarray(radii)[:, None]
    floor = math.exp(-0.5 * ELLIPSOID_CUTOFF**2)
    weight = (np.exp(-0.5 * np.sum(scaled**2, axis=0)) - floor) / (1.0 - floor)
    return np.maximum(weight, 0.0)


def _expand_ventricles(points: np.ndarray, expansion: float) -> np.ndarray:
    """Sample closer to the ventricles' centre there, so that they look larger."""
    if expansion <= 0:
        return points
    centre = np.asarray(VENTRICLE_CENTRE_MM)[:, None]
    weight = _ellipsoid(points, VENTRICLE_CENTRE_MM, VENTRICLE_RADII_MM)
    return centre + (points - centre) * (1.0 - expansion * weight)


# ----------------------------------------------------------------------------- output


def _nifti_gz_bytes(image: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file in memory (fixed gzip mtime, so bytes are reproducible)."""
    import nibabel as nib

    nifti = nib.Nifti1Image(image.astype(np.float32), affine)
    nifti.header.set_xyzt_units("mm")
    nifti.set_sform(affine, code="mni")
    nifti.set_qform(affine, code="mni")
    nifti.header["descrip"] = b"snakemaps synthetic T1w (MNI152)"
    return gzip.compress(nifti.to_bytes(), compresslevel=1, mtime=0)


def _frame(rows: list[tuple], caps: bool = False):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if caps:  # ClinicaDL's table: the label is the diagnosis, the CAPS says where images are
        frame = frame.drop(columns="image").rename(columns={"label": "diagnosis"})
    return frame
