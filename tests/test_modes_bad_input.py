"""Bad mode settings stop the real workflow before any MAPS file is written, naming the key."""

from __future__ import annotations

import pytest
from conftest import cohort, write_table
from test_bad_input import assert_fails, user_config

pytestmark = pytest.mark.workflow


def assert_no_maps_file(workdir):
    """Nothing of the experiment (the environment snapshot, its own rule, may be there)."""
    maps = workdir / "results" / "maps"
    written = [p for p in maps.rglob("*") if p.is_file() and "env" not in p.relative_to(maps).parts]
    assert written == [], written


def test_patch_larger_than_the_image(tmp_path):
    table = write_table(tmp_path, cohort("A", 3))  # 16 x 16 x 16 images
    config = user_config(table, data={"mode": "patch", "patch_size": 20})
    assert_fails(tmp_path, config, "data.patch_size: 20 is larger than the images (16 x 16 x 16")
    assert_no_maps_file(tmp_path)


@pytest.mark.parametrize(
    ("data", "model", "fragments"),
    [
        (
            {"mode": "slice", "slice_direction": 3},
            {},
            ["3 is not one of [0, 1, 2]", "slice_direction"],
        ),
        (
            {"mode": "voxel"},
            {},
            ["'voxel' is not one of ['image', 'patch', 'roi', 'slice']", "mode"],
        ),
        ({"mode": "image"}, {"network_type": "multicnn"}, ["model.network_type: multicnn"]),
        (
            {"mode": "slice", "task": "reconstruction"},
            {"network_type": "autoencoder"},
            ["model.network_type: autoencoder reconstructs whole images", "data.mode is 'slice'"],
        ),
    ],
    ids=[
        "slice-direction-out-of-range",
        "unknown-mode",
        "multicnn-on-images",
        "autoencoder-on-slices",
    ],
)
def test_mode_settings_refused_at_start(tmp_path, data, model, fragments):
    table = write_table(tmp_path, cohort("A", 3))
    output = assert_fails(tmp_path, user_config(table, data=data, model=model), *fragments)
    assert "rule prepare" not in output
    assert_no_maps_file(tmp_path)
