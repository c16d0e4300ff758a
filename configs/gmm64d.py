"""The 64-dimensional Gaussian mixture; everything else as configs/gmm.py."""
from configs import gmm


def get_config():
    config = gmm.get_config()
    config.model.name = "gmm64d"
    return config
