"""diffsci.core: the field-agnostic diffusion core."""
