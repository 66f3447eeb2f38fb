"""Recipe strings of benchmarks/hyperspectral_recipe_selection.py."""

from __future__ import annotations

import pytest

from benchmarks.hyperspectral_recipe_selection import parse_recipe


def test_a_recipe_is_scenes_steps_and_optionally_the_unet_widths():
    assert parse_recipe("768:6000") == (768, 6000, None)
    assert parse_recipe("768:6000:32-64-128") == (768, 6000, (32, 64, 128))
    with pytest.raises(ValueError, match="scenes:steps"):
        parse_recipe("768")
