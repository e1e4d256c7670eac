"""The synthetic demo cohort: format, determinism, a regional signal, argument checks."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from snakemaps.data.synthetic import atrophy_mask, generate_cohort, generated_paths
from snakemaps.errors import UserError

SMALL = {"n_participants": 12, "n_test_participants": 6, "max_sessions": 3, "shape": (24, 28, 24)}
COLUMNS = ["participant_id", "session_id", "label", "age", "sex", "mmse", "image"]
MTL_CENTRES_MM = [(-25.0, -20.0, -15.0), (25.0, -20.0, -15.0)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return out, generate_cohort(out, seed=0, **SMALL)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str})


def voxels(tsv: Path) -> list[np.ndarray]:
    return [np.asarray(nib.load(tsv.parent / p).dataobj) for p in read(tsv).image]


def mtl_region(image, scale: float = 1.0) -> np.ndarray:
    """Flat mask of the voxels in ellipsoids around both hippocampi."""
    world = nib.affines.apply_affine(image.affine, np.indices(image.shape).reshape(3, -1).T)
    mask = np.zeros(len(world), dtype=bool)
    for centre in MTL_CENTRES_MM:
        mask |= (((world - centre) / (scale * np.array([10.0, 16.0, 10.0]))) ** 2).sum(1) <= 1
    return mask


def test_returns_the_generated_paths(cohort):
    out, paths = cohort
    assert paths == generated_paths(out)
    assert paths == {"participants": out / "participants.tsv", "test": out / "test.tsv"}
    assert all(path.is_file() for path in paths.values())


def test_tsv_format(cohort):
    _, paths = cohort
    frames = {name: read(path) for name, path in paths.items()}
    assert paths["participants"].read_text().splitlines()[0] == "\t".join(COLUMNS)
    for name, frame in frames.items():
        assert list(frame.columns) == COLUMNS
        assert frame.participant_id.str.fullmatch(r"sub-\d{4}").all()
        assert frame.session_id.isin(["ses-M000", "ses-M012", "ses-M024"]).all()
        assert set(frame.sex) <= {"F", "M"}
        assert frame.age.between(55, 90).all()
        n_participants = frame.participant_id.nunique()
        expected = SMALL["n_participants"] if name == "participants" else 6
        assert n_participants == expected
        for _, rows in frame.groupby("participant_id"):
            months = sorted(int(s[-3:]) for s in rows.session_id)
            assert months == list(range(0, 12 * len(rows), 12))  # ses-M000 first, 12 apart
            assert 1 <= len(rows) <= SMALL["max_sessions"]
            assert rows.label.nunique() == 1 and rows.sex.nunique() == 1
            ages = rows.sort_values("session_id").age.to_numpy()
            np.testing.assert_allclose(np.diff(ages), 1.0, atol=1e-9)
        labels = frame.drop_duplicates("participant_id").label.value_counts()
        assert set(labels.index) == {"AD", "CN"}
        assert abs(labels["AD"] - labels["CN"]) <= 1
    # The MMSE-like score: integers in 0..30, lower with AD, never rising over sessions for AD.
    scores = pd.concat(frames.values())
    assert scores.mmse.between(0, 30).all() and (scores.mmse == scores.mmse.round()).all()
    by_label = scores.groupby("label").mmse.mean()
    assert by_label["CN"] - by_label["AD"] > 5, by_label
    # Several participants have more than one session.
    assert (frames["participants"].groupby("participant_id").size() > 1).any()
    # The test group holds other participants, numbered on.
    train_ids = set(frames["participants"].participant_id)
    test_ids = set(frames["test"].participant_id)
    assert not train_ids & test_ids
    assert min(test_ids) > max(train_ids)


def test_images_are_relative_nifti_files(cohort):
    out, paths = cohort
    for path in paths.values():
        for relative in read(path).image:
            assert not Path(relative).is_absolute()
            assert relative.startswith("images/") and relative.endswith("_T1w.nii.gz")
            assert (path.parent / relative).is_file()
    image = nib.load(out / read(paths["participants"]).image[0])
    assert image.shape == SMALL["shape"]
    assert image.get_data_dtype() == np.float32
    data = image.get_fdata(dtype=np.float32)
    assert 0.0 <= data.min() and data.max() <= 1.0 and data.mean() > 0.05
    zooms = image.header.get_zooms()
    assert len(set(np.round(zooms, 4))) == 1 and 4 < zooms[0] < 10  # isotropic, downsampled
    assert int(image.header["sform_code"]) == 4  # MNI
    # The grid covers the MNI brain: the MTL centres lie inside the volume.
    for centre in MTL_CENTRES_MM:
        ijk = np.linalg.inv(image.affine) @ [*centre, 1.0]
        assert np.all(ijk[:3] > 0) and np.all(ijk[:3] < np.array(SMALL["shape"]) - 1)


def test_same_seed_same_files_other_seed_other_data(cohort, tmp_path):
    out, paths = cohort
    again = generate_cohort(tmp_path / "again", seed=0, **SMALL)
    for name in paths:
        assert again[name].read_bytes() == paths[name].read_bytes()
        for first, second in zip(voxels(paths[name]), voxels(again[name])):
            np.testing.assert_array_equal(first, second)
    image = read(paths["participants"]).image[0]
    assert (tmp_path / "again" / image).read_bytes() == (out / image).read_bytes()

    other = generate_cohort(tmp_path / "other", seed=1, **SMALL)
    assert other["participants"].read_bytes() != paths["participants"].read_bytes()
    first = np.asarray(nib.load(tmp_path / "other" / image).dataobj)
    assert not np.array_equal(first, voxels(paths["participants"])[0])


def test_each_part_alone_gives_the_same_files(cohort, tmp_path):
    """The workflow writes the training cohort and the held-out group in two jobs."""
    out, paths = cohort
    # The training cohort does not depend on the size of the held-out group.
    alone = generate_cohort(
        tmp_path / "train", seed=0, parts=["participants"], **{**SMALL, "n_test_participants": 2}
    )
    assert list(alone) == ["participants"]
    assert not (tmp_path / "train" / "test.tsv").exists()
    assert alone["participants"].read_bytes() == paths["participants"].read_bytes()
    test = generate_cohort(tmp_path / "test", seed=0, parts=["test"], **SMALL)
    assert list(test) == ["test"] and test["test"].read_bytes() == paths["test"].read_bytes()
    for name, folder in (("participants", "train"), ("test", "test")):
        images = sorted(p.name for p in (tmp_path / folder / "images").iterdir())
        assert images == sorted(Path(i).name for i in read(paths[name]).image)
        for image in read(paths[name]).image:
            assert (tmp_path / folder / image).read_bytes() == (out / image).read_bytes()


def test_ad_signal_is_regional(cohort):
    _, paths = cohort
    frame = pd.concat([read(path).assign(root=path.parent) for path in paths.values()])
    mtl = mtl_region(nib.load(frame.root.iloc[0] / frame.image.iloc[0]))
    means = {"mtl": {"AD": [], "CN": []}, "brain": {"AD": [], "CN": []}}
    for row in frame.itertuples():
        data = np.asarray(nib.load(row.root / row.image).dataobj).reshape(-1)
        means["mtl"][row.label].append(data[mtl].mean())
        means["brain"][row.label].append(data.mean())
    mtl_gap = np.mean(means["mtl"]["CN"]) - np.mean(means["mtl"]["AD"])
    brain_gap = np.mean(means["brain"]["CN"]) - np.mean(means["brain"]["AD"])
    assert mtl_gap > 0.05  # AD: darker medial temporal lobes (tissue -> CSF)
    assert abs(brain_gap) < mtl_gap / 5  # but hardly any whole-image difference


def test_no_test_participants_writes_no_test_group(cohort, tmp_path):
    _, paths = cohort
    written = generate_cohort(tmp_path / "none", seed=0, **{**SMALL, "n_test_participants": 0})
    assert list(written) == ["participants"]
    assert not (tmp_path / "none" / "test.tsv").exists()
    assert written["participants"].read_bytes() == paths["participants"].read_bytes()
    assert (
        generate_cohort(
            tmp_path / "nothing", seed=0, parts=["test"], **{**SMALL, "n_test_participants": 0}
        )
        == {}
    )


def test_a_one_participant_test_group_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UserError, match=r"0 \(no test group\) or an integer >= 2.*single class"):
        generate_cohort(tmp_path / "out", **{**SMALL, "n_test_participants": 1})
    assert not (tmp_path / "out").exists()


def test_atrophy_mask_is_where_ad_and_cn_images_differ(cohort):
    _, paths = cohort
    frame = read(paths["participants"])
    images = dict(zip(frame.index, voxels(paths["participants"])))
    mask = atrophy_mask(SMALL["shape"])
    assert mask.shape == SMALL["shape"] and 0 < mask.mean() < 0.05
    gap = np.mean([images[i] for i in frame.index[frame.label == "CN"]], axis=0) - np.mean(
        [images[i] for i in frame.index[frame.label == "AD"]], axis=0
    )
    brain = np.mean(list(images.values()), axis=0) > 0.05
    assert gap[mask].mean() > 0.1  # AD darker inside (tissue -> CSF)
    assert abs(gap[brain & ~mask].mean()) < gap[mask].mean() / 5  # no such change outside


def test_effect_size_scales_a_medial_temporal_change(tmp_path):
    args = {**SMALL, "n_participants": 4, "n_test_participants": 2, "max_sessions": 1}
    plain = generate_cohort(tmp_path / "plain", effect_size=0.0, **args)
    generate_cohort(tmp_path / "strong", effect_size=1.0, **args)
    for row in read(plain["participants"]).itertuples():
        a = nib.load(tmp_path / "plain" / row.image)
        b = np.asarray(nib.load(tmp_path / "strong" / row.image).dataobj)
        change = (np.asarray(a.dataobj) - b).reshape(-1)
        far = ~mtl_region(a, scale=3.5)  # the change fades out within 3 radii
        assert np.abs(change[far]).max() < 0.03  # elsewhere: same image, up to normalisation
        if row.label == "AD":
            assert change[~far].max() > 0.2  # darker medial temporal lobes


def test_logs_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="snakemaps.data.synthetic"):
        generate_cohort(tmp_path, **{**SMALL, "n_participants": 4, "n_test_participants": 2})
    assert any("images written" in record.getMessage() for record in caplog.records)


def test_accepts_a_list_or_array_shape(tmp_path):
    args = {**SMALL, "n_participants": 4, "n_test_participants": 2, "max_sessions": 1}
    for name, shape in {"list": [16, 20, 16], "array": np.array([16, 20, 16])}.items():
        paths = generate_cohort(tmp_path / name, **{**args, "shape": shape})
        image = nib.load(paths["participants"].parent / read(paths["participants"]).image[0])
        assert image.shape == (16, 20, 16)


def test_generated_paths_does_not_generate(tmp_path):
    paths = generated_paths(str(tmp_path / "demo"))
    assert paths == {
        "participants": tmp_path / "demo" / "participants.tsv",
        "test": tmp_path / "demo" / "test.tsv",
    }
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_participants": 3}, "n_participants"),
        ({"n_participants": 12.0}, "n_participants"),
        ({"n_participants": True}, "n_participants"),
        ({"n_test_participants": 1}, "n_test_participants"),
        ({"max_sessions": 0}, "max_sessions"),
        ({"shape": (24, 28)}, "shape"),
        ({"shape": (24, 28, 8)}, "shape"),
        ({"shape": (24, 28, 24.5)}, "shape"),
        ({"shape": "24x28x24"}, "shape"),
        ({"shape": 24}, "shape"),
        ({"seed": -1}, "seed"),
        ({"seed": "zero"}, "seed"),
        ({"effect_size": -0.5}, "effect_size"),
        ({"noise": float("nan")}, "noise"),
        ({"noise": "low"}, "noise"),
    ],
)
def test_bad_arguments_name_the_key(tmp_path, kwargs, key):
    with pytest.raises(UserError, match=rf"data\.synthetic\.{key}\b"):
        generate_cohort(tmp_path / "out", **{**SMALL, **kwargs})
    assert not (tmp_path / "out").exists()


def test_does_not_import_torch(tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from snakemaps.data.synthetic import generate_cohort\n"
        "generate_cohort(sys.argv[2], n_participants=4, n_test_participants=2, shape=(16,) * 3)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "scripts"), str(tmp_path)], check=True, timeout=60
    )
