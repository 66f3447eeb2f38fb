"""diffsci.domains: field packages built on diffsci.core."""
