"""Evolutionary search, everything else as configs/search_s3.py (the equal-budget comparison:
64 real evaluations per iteration in both)."""
from configs import search_s3


def get_config():
    config = search_s3.get_config()
    config.search.strategy = "evolution"
    return config
