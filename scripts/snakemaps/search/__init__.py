"""Random search: sample runs from random_search.json and analyse their MAPS (torch-free)."""
