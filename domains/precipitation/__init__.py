"""Precipitation downscaling domain (work in progress)."""
