"""samplax: a JAX research framework for sampling experiments."""
from setuptools import find_packages, setup

setup(
    name="samplax",
    version="0.1.0",
    description="JAX research framework for diffusion ODE/SDE solvers, schedule search and sampling experiments",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # experiments/ and configs/ are installed too, so `python -m experiments.sweep` and the
    # samplax-* commands work from any directory after `pip install`.
    packages=find_packages(include=["samplax", "samplax.*", "experiments", "configs"]),
    package_data={"samplax": ["problems/*.json"]},
    include_package_data=True,
    # Lower bounds are the versions CI tests (constraints.txt pins them exactly);
    # no upper bounds, so newer Python / JAX (TPU VMs) are not forced down.
    install_requires=[
        "jax>=0.10.1",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.0",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "scikit-learn>=1.9",  # its bundled 8x8 digits (samplax.data); nothing is downloaded
        "etils[epath]>=1.15",  # samplax.io: one path type for local and gs:// workdirs (Orbax's own)
        "fsspec>=2024.6",      # etils.epath's backend for gs://, s3:// (with gcsfs / s3fs, see [cloud])
        "tqdm>=4.66",          # progress bars in notebooks
        "blackjax>=1.7.1",     # SMC resampling schemes (samplax.smc)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbmake>=1.5", "ipykernel>=6", "scipy>=1.13", "pandas>=2.2",
                 "gymnax>=1.0.1", "six>=1.16"],
        # gymnax environments for samplax.rl (gymnax imports six without declaring it)
        "rl": ["gymnax>=1.0.1", "six>=1.16"],
        "bench": ["scipy>=1.13"],
        "notebook": ["pandas>=2.2", "ipykernel>=6", "ipywidgets>=8"],
        "cloud": ["gcsfs>=2024.6"],  # gs:// workdirs through etils.epath's fsspec backend
    },
    entry_points={"console_scripts": [
        "samplax-sample=experiments.sample:cli",
        "samplax-sweep=experiments.sweep:cli",
        "samplax-train=experiments.train:cli",
        "samplax-search=experiments.search:cli",
    ]},
)
