"""Experiment configs: the defaults, the schema, and validation before any work.

A *sample* config describes one sampling run; a *sweep* config adds a
``sweep`` section whose axes (tuples, each overridable from the command line)
replace ``solver.name``, ``solver.order``, ``grid.spacing``, ``nfe`` and
``seed``.  :func:`validate` checks every field (unknown or missing fields,
types, names against the registries, orders, NFEs) and raises one
:class:`ConfigError` naming the dotted field path, the bad value and what is
allowed.  It never touches the filesystem.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import ml_collections
from ml_collections import config_dict

from samplax.experiment import registry
from samplax.experiment.errors import ConfigError


# ---------------------------------------------------------------------------------------
# Defaults (configs/*.py start from these and override a few fields)
# ---------------------------------------------------------------------------------------
def sample_config() -> ml_collections.ConfigDict:
    """Defaults of one sampling run on an analytic problem."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name="gmm2d",
        checkpoint=config_dict.placeholder(str),  # a training workdir: sample its trained network
        step=config_dict.placeholder(int),        # None: the latest checkpoint
        params="ema",                             # "ema" or "params" (raw parameters)
        guidance=config_dict.placeholder(float),  # class-conditional nets: None = unconditional, else CFG scale
        # bring your own (docs/experiments.md): "pkg.module:callable" or "file.py:callable"
        factory=config_dict.placeholder(str),     # -> a DiffusionModel; model.name then names its data
        args=ml_collections.ConfigDict(),         # keyword arguments of the factory
        shape=config_dict.placeholder(tuple),     # one sample's shape, when no reference data gives it
        data=config_dict.placeholder(str),        # reference data of a user model: a data set name or a factory
        data_args=ml_collections.ConfigDict(),
        schedule=config_dict.placeholder(str),    # a NoiseSchedule factory: replaces an analytic model's schedule
        schedule_args=ml_collections.ConfigDict(),
    ))
    c.solver = ml_collections.ConfigDict(dict(
        name="dpm_solver_pp",
        order=config_dict.placeholder(int),  # None: the solver's default order
        afs=False,                           # analytic first step (saves one model call)
        options=ml_collections.ConfigDict(),  # any other option of the solver factory
    ))
    c.grid = ml_collections.ConfigDict(dict(
        spacing="logsnr",
        end="zero",                           # "zero" (sigma = 0 node), "denoise" or "t_min"
        t_max=config_dict.placeholder(float),  # None: the schedule's t_max
        t_min=config_dict.placeholder(float),  # None: the schedule's t_min
        rho=7.0,                              # Karras spacing exponent
        file=config_dict.placeholder(str),    # spacing "file": a schedule file's time points (save_schedule)
    ))
    c.nfe = 10
    c.seed = 0
    c.n_samples = 4096
    c.dtype = "float32"
    c.prior = "key"      # "key": x_T from fold_in(seed, index); "problem": the problem file's start points
    c.chunk_size = 65536  # samples per program call: bounds memory for large n_samples
    c.metrics = ml_collections.ConfigDict(dict(
        reference_steps=1000,       # RK4 steps (x2 with Richardson) of the float64 exact PF-ODE reference
        max_l2_samples=16384,       # mean_l2 uses the first min(n, chunk_size, this) samples
        max_sw_samples=16384,       # sliced W2 uses the first min(n, chunk_size, this) samples
        sw_projections=128,
        save_samples=2048,          # first samples of each row kept under samples/ for plots
    ))
    c.distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU)
    return c


def sweep_config() -> ml_collections.ConfigDict:
    """Defaults of a sweep: the cross product of the ``sweep`` axes."""
    c = sample_config()
    for field in ("nfe", "seed"):
        del c[field]
    del c.solver
    del c.grid.spacing
    c.afs = False
    c.sweep = ml_collections.ConfigDict(dict(
        solvers=("ddim", "dpm_solver_pp", "unipc"),
        orders=(2,),
        grids=("logsnr", "time_uniform"),
        nfes=(5, 10, 20),
        seeds=(0,),
        # per-solver extra factory options, e.g. {"unipc": {"variant": "bh1"}}
        solver_options=ml_collections.ConfigDict(),
        # solver options as sweep axes: option -> tuple of values, e.g. {"afs": (False, True),
        # "variant": ("bh1", "bh2")}; each solver runs the values of the options it has
        option_axes=ml_collections.ConfigDict(),
    ))
    return c


# Fields that do not change what a row is (how it is computed, not what): excluded from the
# saved-config conflict check and from row hashes.
NON_IDENTITY_FIELDS = ("chunk_size", "distributed", "metrics.save_samples")


# ---------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------
class Field(NamedTuple):
    kind: str                     # "int", "float", "str", "bool", "tuple[int]", "tuple[str]", "dict"
    required: bool = True
    nullable: bool = False
    check: Optional[Callable[[str, Any], None]] = None  # raises ConfigError


def _positive(path, v):
    if v < 1:
        raise ConfigError(path, f"must be a positive integer, got {v!r}")


# Size limits, checked before anything is written (docs/experiments.md, "Limits").
MAX_NFE = 100_000
MAX_SAMPLES = 2**30            # n_samples, chunk_size, max_*_samples: sample indices are int32 (+ padding)
MAX_REFERENCE_STEPS = 100_000  # float64 RK4 reference: time and memory grow with the steps
MAX_SW_PROJECTIONS = 4096      # sliced W2: a (samples x projections) matrix per row
MAX_SAVE_SAMPLES = 65_536      # kept per row under samples/ (float32 .npy)


def _at_most(limit, why):
    def check(path, v):
        if not 1 <= v <= limit:
            raise ConfigError(path, f"must be a positive integer at most {limit} ({why}), got {v!r}")
    return check


def _save_samples(path, v):
    if not 0 <= v <= MAX_SAVE_SAMPLES:
        raise ConfigError(path, f"must be an integer in [0, {MAX_SAVE_SAMPLES}] (samples kept per row), got {v!r}")


def _nfe(path, v):
    if not 1 <= v <= MAX_NFE:
        raise ConfigError(path, f"must be an integer in [1, {MAX_NFE}], got {v!r}")


def _nonneg(path, v):
    if v < 0 or v >= 2**31:
        raise ConfigError(path, f"must be an integer in [0, 2^31), got {v!r}")


def _choice(allowed):
    def check(path, v):
        if v not in allowed:
            raise ConfigError(path, f"unknown value {v!r}; allowed: {sorted(allowed)}")
    return check


def _isfinite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _finite_pos(path, v):
    if not (_isfinite(v) and v > 0):
        raise ConfigError(path, f"must be a finite positive number, got {v!r}")


def _finite(path, v):
    if not _isfinite(v):
        raise ConfigError(path, f"must be a finite number, got {v!r}")


def _nonempty_str(path, v):
    if not v.strip():
        raise ConfigError(path, "must be a non-empty string")


def _shape(path, v):
    if len(v) == 0 or any(e < 1 for e in v):
        raise ConfigError(path, f"must be a non-empty tuple of positive integers (one sample's shape), got {tuple(v)!r}")


_SAMPLES = _at_most(MAX_SAMPLES, "sample indices are int32")


def _epiplexity_options(path, v):
    from samplax.metrics.epiplexity import check_options
    try:
        check_options(v, path)
    except ValueError as e:
        raise ConfigError(path, str(e)) from None


_METRICS = {
    "reference_steps": Field("int", check=_at_most(MAX_REFERENCE_STEPS, "float64 reference solve")),
    "max_l2_samples": Field("int", check=_SAMPLES),
    "max_sw_samples": Field("int", check=_SAMPLES),
    "sw_projections": Field("int", check=_at_most(MAX_SW_PROJECTIONS, "sliced W2 directions")),
    "save_samples": Field("int", check=_save_samples),
    # optional, off unless set (absent: row hashes unchanged): digits epiplexity (samplax.metrics.epiplexity)
    "epiplexity": Field("bool", required=False),
    "epiplexity_options": Field("dict", required=False, check=_epiplexity_options),
}

_COMMON = {
    "model": {"name": Field("str", check=_nonempty_str),
              "checkpoint": Field("str", required=False, nullable=True),
              "factory": Field("str", required=False, nullable=True, check=_nonempty_str),
              "args": Field("dict", required=False),
              "shape": Field("tuple[int]", required=False, nullable=True, check=_shape),
              "data": Field("str", required=False, nullable=True, check=_nonempty_str),
              "data_args": Field("dict", required=False),
              "schedule": Field("str", required=False, nullable=True, check=_nonempty_str),
              "schedule_args": Field("dict", required=False),
              "step": Field("int", required=False, nullable=True, check=_nonneg),
              "params": Field("str", required=False, check=_choice(registry.PARAMS)),
              "guidance": Field("float", required=False, nullable=True, check=_finite)},
    "n_samples": Field("int", check=_SAMPLES),
    "dtype": Field("str", check=_choice(registry.DTYPES)),
    "prior": Field("str", check=_choice(registry.PRIORS)),
    "chunk_size": Field("int", check=_SAMPLES),
    "metrics": _METRICS,
    "distributed": Field("bool"),
}

_GRID_COMMON = {
    "end": Field("str", check=_choice(registry.ENDS)),
    "t_max": Field("float", required=False, nullable=True),
    "t_min": Field("float", required=False, nullable=True),
    "rho": Field("float", check=_finite_pos),
    "file": Field("str", required=False, nullable=True),
}

SAMPLE_SCHEMA = dict(_COMMON, **{
    "solver": {
        "name": Field("str", check=_choice(registry.SOLVERS)),
        "order": Field("int", required=False, nullable=True, check=_positive),
        "afs": Field("bool"),
        "options": Field("dict", required=False),
    },
    "grid": dict(_GRID_COMMON, spacing=Field("str", check=_choice(registry.SPACINGS))),
    "nfe": Field("int", check=_nfe),
    "seed": Field("int", check=_nonneg),
})


def _nonempty_unique(path, v):
    if len(v) == 0:
        raise ConfigError(path, "must be a non-empty tuple")
    if len(set(v)) != len(v):
        raise ConfigError(path, f"has duplicate entries: {tuple(v)!r}")


def _each(check):
    def run(path, v):
        _nonempty_unique(path, v)
        for i, e in enumerate(v):
            check(f"{path}[{i}]", e)
    return run


SWEEP_SCHEMA = dict(_COMMON, **{
    "afs": Field("bool"),
    "grid": dict(_GRID_COMMON),
    "sweep": {
        "solvers": Field("tuple[str]", check=_each(_choice(registry.SOLVERS))),
        "orders": Field("tuple[int]", check=_each(_positive)),
        "grids": Field("tuple[str]", check=_each(_choice(registry.SPACINGS))),
        "nfes": Field("tuple[int]", check=_each(_nfe)),
        "seeds": Field("tuple[int]", check=_each(_nonneg)),
        "solver_options": Field("dict", required=False),
        "option_axes": Field("dict", required=False),
    },
})


def _type_ok(kind: str, v) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "dict":
        return isinstance(v, (dict, ml_collections.ConfigDict))
    if kind.startswith("tuple["):
        inner = kind[6:-1]
        return isinstance(v, (tuple, list)) and all(_type_ok(inner, e) for e in v)
    raise AssertionError(kind)


_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "dict": "a mapping (ConfigDict)", "tuple[int]": "a tuple of integers",
               "tuple[str]": "a tuple of strings"}


def _as_dict(cfg) -> dict:
    if isinstance(cfg, ml_collections.ConfigDict):
        return cfg.to_dict()
    if isinstance(cfg, dict):
        return dict(cfg)
    raise ConfigError("config", f"must be an ml_collections.ConfigDict (or a dict), got {_short(cfg)} "
                                f"({type(cfg).__name__}); allowed: the ConfigDict of get_config(), "
                                f"sample_config() or sweep_config()")


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _check_tree(schema: dict, values: dict, prefix: str) -> None:
    if isinstance(values, ml_collections.ConfigDict):  # a ConfigDict section inside a plain dict
        values = values.to_dict()
    if not isinstance(values, dict):
        raise ConfigError(prefix, f"must be a section (ConfigDict), got {_short(values)}")
    unknown = sorted(set(map(str, values)) - set(schema))
    if unknown or not all(isinstance(k, str) for k in values):
        bad = unknown[0] if unknown else next(str(k) for k in values if not isinstance(k, str))
        raise ConfigError(f"{prefix}.{bad}", f"unknown field; allowed fields of {prefix}: {sorted(schema)}")
    for name, spec in schema.items():
        path = f"{prefix}.{name}"
        if isinstance(spec, dict):
            if name not in values:
                raise ConfigError(path, f"missing required section with fields {sorted(spec)}")
            _check_tree(spec, values[name], path)
            continue
        if name not in values:
            if spec.required:
                raise ConfigError(path, f"missing required field ({_KIND_WORDS[spec.kind]})")
            continue
        v = values[name]
        if v is None:
            if not spec.nullable:
                raise ConfigError(path, f"must be {_KIND_WORDS[spec.kind]}, got None")
            continue
        if not _type_ok(spec.kind, v):
            hint = ""
            if spec.kind.startswith("tuple[") and _type_ok(spec.kind[6:-1], v):
                # in code a sweep axis is a tuple; the command line's --config.sweep.nfes=5 is already (5,)
                hint = f"; write ({v!r},) for one value"
            raise ConfigError(path, f"must be {_KIND_WORDS[spec.kind]}, got {_short(v)} ({type(v).__name__}){hint}")
        if spec.kind == "float" and isinstance(v, int) and not _isfinite(v):
            raise ConfigError(path, f"must be a finite number, got an integer too large for a float ({_short(v)})")
        if spec.check is not None:
            spec.check(path, v)


# --- public schema pieces: the other training loops (raft, offline_rl, snapshot_rl) check their
# configs with the same Field / check_tree as the model trainer, so every loop's errors read alike
check_tree = _check_tree


def int_range(lo: int, hi: Optional[int] = None):
    """A Field check: an integer in [lo, hi] (hi None: no upper bound)."""
    def check(path, v):
        if v < lo or (hi is not None and v > hi):
            raise ConfigError(path, f"got {v!r}; allowed: an integer in [{lo}, {hi if hi is not None else 'inf'}]")
    return check


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
                hi_open: bool = False):
    """A Field check: a finite number in the interval from lo to hi (open ends where asked)."""
    def check(path, v):
        ok = _isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (
            hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            left, right = "(" if lo_open or lo is None else "[", ")" if hi_open or hi is None else "]"
            raise ConfigError(path, f"got {v!r}; allowed: a finite number in {left}{'-inf' if lo is None else lo}, "
                                    f"{'inf' if hi is None else hi}{right}")
    return check


def one_of(allowed):
    """A Field check: one of ``allowed`` (listed in the message in their own order)."""
    allowed = tuple(allowed)

    def check(path, v):
        if v not in allowed:
            raise ConfigError(path, f"unknown value {v!r}; allowed: {list(allowed)}")
    return check


def positive_tuple(path, v):
    """A Field check: a non-empty tuple of positive integers (layer widths)."""
    if len(v) == 0 or any(e < 1 for e in v):
        raise ConfigError(path, f"got {tuple(v)!r}; allowed: a non-empty tuple of positive integers")


def config_kind(cfg) -> str:
    """"sweep" when the config has a ``sweep`` section, else "sample" (a config that is
    not a mapping raises ConfigError at ``config``)."""
    return "sweep" if "sweep" in _as_dict(cfg) else "sample"


def validate_fields(cfg, kind: Optional[str] = None) -> dict:
    """Schema check (fields, types, names, sizes, the types of solver options); returns
    the config as a plain dict."""
    values = _as_dict(cfg)
    kind = kind or config_kind(values)
    _check_tree(SWEEP_SCHEMA if kind == "sweep" else SAMPLE_SCHEMA, values, "config")
    if kind == "sweep":
        for name, options in (values["sweep"].get("solver_options") or {}).items():
            check_option_types(name, options, f"config.sweep.solver_options.{name}")
    else:
        check_option_types(values["solver"]["name"], values["solver"].get("options") or {},
                           "config.solver.options")
    return values


# ---------------------------------------------------------------------------------------
# Solver options: typed like the factory's own defaults
# ---------------------------------------------------------------------------------------
def option_kind(name: str, option: str):
    """(kind, nullable) of a solver factory's option, from the factory's annotations (the
    ones its own check, ``samplax.solvers.base.check_options``, reads): kind is "bool",
    "int", "float" or "str" (a ``Literal`` of choices is "str"); None if unknown."""
    from samplax.solvers.base import _option_specs
    from samplax.solvers.registry import SOLVERS

    if name not in SOLVERS:
        return None
    spec = _option_specs(SOLVERS[name]).get(option)
    if spec is None:
        return None
    kind, nullable = spec
    return ("str" if isinstance(kind, tuple) else kind), nullable


def check_option_types(name: str, options, path: str) -> None:
    """Each option of solver ``name`` passes the factory's own type check (a string "2.0"
    for a number or "no" for a boolean is refused, not taken as true), reported at the
    option's field; float options must also be finite.  Unknown options and names are
    left to the plan, which names what is allowed."""
    if isinstance(options, ml_collections.ConfigDict):
        options = options.to_dict()
    if not isinstance(options, dict) or not isinstance(name, str) or name not in registry.SOLVERS:
        return
    from samplax.solvers.base import SolverOptionError, check_options

    for key in sorted(k for k in options if isinstance(k, str) and k not in ("order", "afs")):
        v = options[key]
        try:
            check_options(registry.SOLVERS[name], {key: v})
        except SolverOptionError as e:
            raise ConfigError(f"{path}.{key}", f"solver {name!r}: {str(e).split(': ', 1)[-1]}") from None
        kind = option_kind(name, key)
        if kind is not None and kind[0] == "float" and v is not None and not _isfinite(v):
            raise ConfigError(f"{path}.{key}", f"must be a finite number (solver {name!r}), got {v!r}")


# ---------------------------------------------------------------------------------------
# Training configs
# ---------------------------------------------------------------------------------------
NETWORKS = ("mlp", "unet", "transformer", "causal_transformer", "digits_cnn")
OBJECTIVES = ("noise", "data", "velocity", "flow", "edm", "masked", "causal", "classify")
#: objective "classify" (cross-entropy on the data set's labels): its networks; "mlp" is then a
#: plain MLP classifier of the flattened input, "digits_cnn" samplax.models.classifier.DigitsClassifier
CLASSIFY_NETWORKS = ("mlp", "digits_cnn")
#: config.train.sampler.name "stream": the data set's own host-side order (Dataset.batch); the
#: other names are samplax.data_sampling samplers (checked when the run is built)
DEFAULT_DATA_SAMPLER = "stream"
#: token objectives: "masked" (masked diffusion, network "transformer") and "causal" (next-token
#: prediction, network "causal_transformer"); both train on TOKEN_DATASETS
TOKEN_NETWORKS = {"masked": "transformer", "causal": "causal_transformer"}
#: the fields of model.transformer for network "causal_transformer" (no time input)
CAUSAL_TRANSFORMER_FIELDS = ("width", "depth", "heads", "mlp_ratio")
#: masked diffusion (loss.objective "masked"): the masking schedules of samplax.discrete
MASK_SCHEDULE_NAMES = ("linear", "cosine", "poly2")
#: the fields of model.transformer (a section only discrete configs have) and their checks
TRANSFORMER_FIELDS = ("width", "depth", "heads", "mlp_ratio", "time_conditioned")
TIME_INPUTS = ("t", "log_snr")
TRAIN_SCHEDULES = ("problem", "vp_linear", "vp_cosine", "vp_discrete", "ve", "edm", "flow")

# Training fields that change how often something is logged or saved, not the trained
# parameters: excluded from the saved-config conflict check.
TRAIN_NON_IDENTITY_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                             "train.sample_every", "train.sample_count", "train.sample_solver",
                             "train.sample_nfe", "distributed")


def train_config() -> ml_collections.ConfigDict:
    """Defaults of a training run (configs/train_*.py override a few fields)."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(
        name="gmm2d",                         # a samplax.data name; with factory, your data set's label
        options=ml_collections.ConfigDict(),  # keyword arguments of samplax.data.make_dataset (or of the factory)
        factory=config_dict.placeholder(str),  # "pkg.module:callable" -> a samplax.data.Dataset
    ))
    c.schedule = ml_collections.ConfigDict(dict(
        name="problem",                       # "problem": the gmm problem file's own schedule
        options=ml_collections.ConfigDict(),  # keyword arguments of samplax.schedules.get_schedule (or the factory)
        factory=config_dict.placeholder(str),  # "pkg.module:callable" -> a NoiseSchedule (then name is a label)
    ))
    c.model = ml_collections.ConfigDict(dict(
        network="mlp",
        factory=config_dict.placeholder(str),  # "pkg.module:callable" -> a flax.linen.Module (network then ignored)
        options=ml_collections.ConfigDict(),   # keyword arguments of the model factory
        time_input="t",            # the network sees 1000 t ("t") or the log-SNR ("log_snr")
        class_conditional=False,   # labels of the data set as input, dropped with label_dropout (CFG)
        label_dropout=0.1,
        sigma_data=0.5,            # EDM preconditioning (objective "edm")
        mlp=ml_collections.ConfigDict(dict(hidden=(256, 256, 256), embed_dim=64)),
        unet=ml_collections.ConfigDict(dict(channels=(32, 64), num_res_blocks=2, attention=True, embed_dim=128,
                                            groups=8)),
    ))
    c.loss = ml_collections.ConfigDict(dict(
        objective="noise",   # the prediction the network is trained for; "edm": EDM loss + preconditioning
        weighting="none",    # "none" or "min_snr" (noise objective)
        discrete=False,      # uniform over a VPDiscrete schedule's training times
        p_mean=-1.2,         # EDM: ln sigma ~ N(p_mean, p_std^2)
        p_std=1.2,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=100, end_lr_fraction=0.0, weight_decay=0.0, b1=0.9, b2=0.999,
        grad_clip=1.0, ema_decay=0.999, ema_warmup=True,
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=3000,
        batch_size=256,
        seed=0,                # parameters' init and the per-step RNG fold_in(PRNGKey(seed), step)
        data_seed=0,           # the data order: batch k is a pure function of (data_seed, k)
        log_every=100,
        checkpoint_every=500,
        keep_checkpoints=3,
        sample_every=1000,     # preview sample grids/scatters (PNG) with the EMA parameters; 0: only at the end
        sample_count=100,
        sample_solver="dpm_solver_pp",
        sample_nfe=20,
        # which examples each step trains on: "stream" (the data set's own order: epochs of
        # permutations for finite data, fresh draws for generators) or a samplax.data_sampling
        # sampler by name ("uniform", "epoch", "fixed_subset", "rs2", "lead", ...) with its options;
        # a sampler needs a finite data set held in memory and keeps its state in the checkpoints
        sampler=ml_collections.ConfigDict(dict(name=DEFAULT_DATA_SAMPLER, options=ml_collections.ConfigDict())),
    ))
    c.distributed = False
    return c


def discrete_train_config() -> ml_collections.ConfigDict:
    """Defaults of a masked-diffusion training run: a small bidirectional transformer
    (samplax.models.transformer) on token data, the MDLM loss (samplax.training.discrete_losses)
    on a masking schedule.  The preview draws ``train.sample_count`` sequences with the
    exact-in-the-model first-hitting sampler (``sample_solver`` / ``sample_nfe`` are not used)
    and writes a PNG for ``digits_tokens`` only."""
    c = train_config()
    c.data.name = "markov4x8_tokens"
    c.schedule.name = "linear"
    c.model.network = "transformer"
    c.model.label_dropout = 0.0
    c.model.transformer = ml_collections.ConfigDict(dict(
        width=64, depth=2, heads=4, mlp_ratio=4,
        time_conditioned=False,  # the optimal masked-diffusion denoiser does not depend on t
    ))
    c.loss.objective = "masked"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.train.num_steps = 2000
    c.train.batch_size = 128
    c.train.sample_every = 0
    c.train.sample_count = 0
    return c


def causal_train_config() -> ml_collections.ConfigDict:
    """Defaults of a causal language-model training run: a small decoder-only transformer with
    a KV cache (samplax.models.causal_lm) on token data, the next-token cross-entropy
    (samplax.training.discrete_losses.causal_lm_loss).  No noise schedule (``schedule.name``
    "none") and no previews; the trained model loads back as a samplax.decoding.LanguageModel
    with samplax.experiment.trainer.load_causal_lm."""
    c = discrete_train_config()
    c.data.name = "markov4x8_lm"
    c.schedule.name = "none"
    c.model.network = "causal_transformer"
    c.model.transformer = ml_collections.ConfigDict(dict(width=64, depth=2, heads=4, mlp_ratio=4))
    c.loss.objective = "causal"
    return c


def classify_train_config() -> ml_collections.ConfigDict:
    """Defaults of a classifier training run (``loss.objective = "classify"``): the digits CNN
    of samplax.models.classifier on the digits' training split, cross-entropy on the labels, no
    noise schedule and no previews; log rows carry ``eval_accuracy`` / ``eval_loss`` on the
    held-out split and ``elapsed_s`` (time-to-accuracy).  The data sampler
    (``train.sampler``) picks the examples of each step."""
    c = train_config()
    c.data.name = "digits"
    c.data.options.split = "train"
    c.schedule.name = "none"
    c.model.network = "digits_cnn"
    c.model.mlp.hidden = (128, 128)
    c.loss.objective = "classify"
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 1e-4
    c.optim.ema_decay = 0.99
    c.train.num_steps = 500
    c.train.batch_size = 128
    c.train.log_every = 50
    c.train.sample_count = 0
    return c


def _unit(path, v):
    if not 0.0 <= v < 1.0:
        raise ConfigError(path, f"must be in [0, 1), got {v!r}")


def _fraction(path, v):
    if not 0.0 <= v <= 1.0:
        raise ConfigError(path, f"must be in [0, 1], got {v!r}")


def _nonneg_float(path, v):
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(path, f"must be a finite number >= 0, got {v!r}")


def _positive_tuple(path, v):
    if len(v) == 0:
        raise ConfigError(path, "must be a non-empty tuple")
    for i, e in enumerate(v):
        _positive(f"{path}[{i}]", e)


def _data_name(path, v):
    from samplax.data import DATASETS, TOKEN_DATASETS

    _choice(tuple(DATASETS) + tuple(TOKEN_DATASETS))(path, v)


TRAIN_SCHEMA = {
    "data": {"name": Field("str", check=_nonempty_str), "options": Field("dict", required=False),
             "factory": Field("str", required=False, nullable=True, check=_nonempty_str)},
    "schedule": {"name": Field("str", check=_nonempty_str), "options": Field("dict", required=False),
                 "factory": Field("str", required=False, nullable=True, check=_nonempty_str)},
    "model": {
        "network": Field("str", check=_choice(NETWORKS)),
        "transformer": Field("dict", required=False),  # discrete configs only: checked in validate_train
        "factory": Field("str", required=False, nullable=True, check=_nonempty_str),
        "options": Field("dict", required=False),
        "time_input": Field("str", check=_choice(TIME_INPUTS)),
        "class_conditional": Field("bool"),
        "label_dropout": Field("float", check=_unit),
        "sigma_data": Field("float", check=_finite_pos),
        "mlp": {"hidden": Field("tuple[int]", check=_positive_tuple), "embed_dim": Field("int", check=_positive)},
        "unet": {"channels": Field("tuple[int]", check=_positive_tuple),
                 "num_res_blocks": Field("int", check=_positive), "attention": Field("bool"),
                 "embed_dim": Field("int", check=_positive), "groups": Field("int", check=_positive)},
    },
    "loss": {
        "objective": Field("str", check=_choice(OBJECTIVES)),
        "weighting": Field("str", check=_choice(("none", "min_snr"))),
        "discrete": Field("bool"),
        "p_mean": Field("float", check=_finite),
        "p_std": Field("float", check=_finite_pos),
    },
    "optim": {
        "learning_rate": Field("float", check=_finite_pos),
        "warmup_steps": Field("int", check=_nonneg),
        "end_lr_fraction": Field("float", check=_fraction),
        "weight_decay": Field("float", check=_nonneg_float),
        "b1": Field("float", check=_unit),
        "b2": Field("float", check=_unit),
        "grad_clip": Field("float", check=_nonneg_float),
        "ema_decay": Field("float", check=_unit),
        "ema_warmup": Field("bool"),
    },
    "train": {
        "num_steps": Field("int", check=_positive),
        "batch_size": Field("int", check=_positive),
        "seed": Field("int", check=_nonneg),
        "data_seed": Field("int", check=_nonneg),
        "log_every": Field("int", check=_positive),
        "checkpoint_every": Field("int", check=_positive),
        "keep_checkpoints": Field("int", check=_positive),
        "sample_every": Field("int", check=_nonneg),
        "sample_count": Field("int", check=_nonneg),
        "sample_solver": Field("str", check=_choice(registry.SOLVERS)),
        "sample_nfe": Field("int", check=_nfe),
        "sampler": {"name": Field("str", required=False, check=_nonempty_str),
                    "options": Field("dict", required=False)},
    },
    "distributed": Field("bool"),
    "kind": Field("str", required=False, check=_choice(("model",))),
}


def _check_transformer(values: dict) -> None:
    tr = values["model"].get("transformer")
    causal = values["model"]["network"] == "causal_transformer"
    fields = CAUSAL_TRANSFORMER_FIELDS if causal else TRANSFORMER_FIELDS
    start = "causal_train_config" if causal else "discrete_train_config"
    if tr is None:
        raise ConfigError("config.model.transformer", f"network {values['model']['network']!r} needs this section "
                          f"with fields {list(fields)} (start from samplax.experiment.config.{start}())")
    if isinstance(tr, ml_collections.ConfigDict):
        tr = tr.to_dict()
    schema = {"width": Field("int", check=_positive), "depth": Field("int", check=_positive),
              "heads": Field("int", check=_positive), "mlp_ratio": Field("int", check=_positive)}
    if not causal:
        schema["time_conditioned"] = Field("bool")
    _check_tree(schema, tr, "config.model.transformer")
    if tr["width"] % tr["heads"]:
        raise ConfigError("config.model.transformer.heads", f"must divide the width {tr['width']}, got {tr['heads']}")
    values["model"]["transformer"] = tr


def _check_sampler(values: dict) -> None:
    """config.train.sampler: a name (the default "stream", or a samplax.data_sampling sampler)
    and options that sampler accepts; filled with the defaults when absent."""
    from samplax.data_sampling import SAMPLERS, sampler_options

    t = values["train"]
    sp = dict(t.get("sampler") or {})
    name = sp.get("name", DEFAULT_DATA_SAMPLER)
    options = sp.get("options") or {}
    if isinstance(options, ml_collections.ConfigDict):
        options = options.to_dict()
    _choice((DEFAULT_DATA_SAMPLER,) + tuple(sorted(SAMPLERS)))("config.train.sampler.name", name)
    if name == DEFAULT_DATA_SAMPLER:
        if options:
            raise ConfigError("config.train.sampler.options", f"sampler {DEFAULT_DATA_SAMPLER!r} (the data set's own "
                              f"order) takes no options, got {sorted(options)}")
    else:
        allowed = sampler_options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError("config.train.sampler.options", f"sampler {name!r}: unknown option(s) {unknown}; "
                              f"allowed: {sorted(allowed)}")
    t["sampler"] = dict(name=name, options=dict(options))


def _validate_classify(values: dict) -> bool:
    """Cross-field checks of classifier training (loss.objective "classify"); False for the
    other objectives, which must not use the classifier network."""
    m, loss, sc = values["model"], values["loss"], values["schedule"]
    if loss["objective"] != "classify":
        if m["network"] == "digits_cnn" and not m.get("factory"):
            raise ConfigError("config.model.network", "'digits_cnn' (a classifier) needs "
                              "config.loss.objective='classify'")
        return False
    if not m.get("factory"):
        _choice(CLASSIFY_NETWORKS)("config.model.network", m["network"])
    if "transformer" in m:
        raise ConfigError("config.model.transformer", "only applies to the token networks, not to objective "
                          "'classify'")
    if m["class_conditional"]:
        raise ConfigError("config.model.class_conditional", "objective 'classify' predicts the labels; allowed: "
                          "False")
    if sc.get("factory") or sc["name"] != "none" or sc.get("options"):
        raise ConfigError("config.schedule.name", "objective 'classify' has no noise schedule; allowed: name "
                          "'none' with no factory and no options")
    if loss["weighting"] != "none" or loss["discrete"]:
        raise ConfigError("config.loss.weighting" if loss["weighting"] != "none" else "config.loss.discrete",
                          "objective 'classify' is the plain cross-entropy; allowed: weighting 'none', discrete False")
    return True


def _validate_discrete(values: dict) -> bool:
    """Cross-field checks of masked-diffusion training (loss.objective "masked"); False
    (nothing checked) for a continuous config, which must not use the discrete parts."""
    from samplax.data import TOKEN_DATASETS

    m, loss, data = values["model"], values["loss"], values["data"]
    objective = loss["objective"]
    if objective not in TOKEN_NETWORKS:
        for obj, net in TOKEN_NETWORKS.items():
            if m["network"] == net:
                raise ConfigError("config.model.network", f"{net!r} (a token network) needs "
                                  f"config.loss.objective={obj!r}")
        if "transformer" in m:
            raise ConfigError("config.model.transformer", f"only applies to networks {list(TOKEN_NETWORKS.values())}")
        if not data.get("factory") and data["name"] in TOKEN_DATASETS:
            raise ConfigError("config.loss.objective", f"token data {data['name']!r} train with one of "
                              f"{list(TOKEN_NETWORKS)}, got {objective!r}")
        return False
    want = TOKEN_NETWORKS[objective]
    if m.get("factory") is None and m["network"] != want:
        raise ConfigError("config.model.network", f"objective {objective!r} needs {want!r} (or a user network "
                          f"in config.model.factory), got {m['network']!r}")
    if m["network"] == want and not m.get("factory"):
        _check_transformer(values)
    if m["class_conditional"]:
        raise ConfigError("config.model.class_conditional", f"objective {objective!r} trains unconditionally here; "
                          "allowed: False")
    if not data.get("factory") and data["name"] not in TOKEN_DATASETS:
        raise ConfigError("config.data.name", f"objective {objective!r} needs token data; allowed: "
                          f"{list(TOKEN_DATASETS)} (or a data factory whose Dataset has vocab_size > 0), got "
                          f"{data['name']!r}")
    sc = values["schedule"]
    if objective == "causal":
        if sc.get("factory") or sc["name"] != "none" or sc.get("options"):
            raise ConfigError("config.schedule.name", "objective 'causal' has no noise schedule; allowed: name "
                              "'none' with no factory and no options")
        if loss["weighting"] != "none" or loss["discrete"]:
            raise ConfigError("config.loss.weighting" if loss["weighting"] != "none" else "config.loss.discrete",
                              "objective 'causal' is the plain next-token cross-entropy; allowed: weighting "
                              "'none', discrete False")
        return True
    if sc.get("factory"):
        raise ConfigError("config.schedule.factory", "objective 'masked' takes a masking schedule by name; allowed: "
                          f"None with config.schedule.name in {list(MASK_SCHEDULE_NAMES)}")
    _choice(MASK_SCHEDULE_NAMES)("config.schedule.name", sc["name"])
    if sc.get("options"):
        raise ConfigError("config.schedule.options", "masking schedules take no options")
    if loss["weighting"] != "none" or loss["discrete"]:
        raise ConfigError("config.loss.weighting" if loss["weighting"] != "none" else "config.loss.discrete",
                          "objective 'masked' has its own weight -alpha'(t) / (1 - alpha(t)); allowed: "
                          "weighting 'none', discrete False")
    return True


def validate_train(cfg) -> dict:
    """Schema and cross-field checks of a training config; returns it as a plain dict."""
    values = _as_dict(cfg)
    _check_tree(TRAIN_SCHEMA, values, "config")
    o, t = values["optim"], values["train"]
    if o["warmup_steps"] >= t["num_steps"]:
        raise ConfigError("config.optim.warmup_steps",
                          f"must be smaller than config.train.num_steps={t['num_steps']}, got {o['warmup_steps']}")
    loss, sched, data = values["loss"], values["schedule"]["name"], values["data"]["name"]
    if not values["data"].get("factory"):
        _data_name("config.data.name", data)
    if values["model"].get("options") and not values["model"].get("factory"):
        raise ConfigError("config.model.options", "only applies to a user network (config.model.factory)")
    _check_sampler(values)
    if _validate_classify(values):
        return values
    if _validate_discrete(values):
        return values
    if values["schedule"].get("factory"):
        sched = "factory"
    else:
        _choice(TRAIN_SCHEDULES)("config.schedule.name", sched)
    if sched == "problem" and data not in ("gmm2d", "gmm64d"):
        raise ConfigError("config.schedule.name", f"'problem' (the problem file's schedule) needs data gmm2d or "
                          f"gmm64d, got data {data!r}; allowed otherwise: {list(TRAIN_SCHEDULES[1:])}")
    if loss["objective"] == "edm" and sched != "edm":
        raise ConfigError("config.loss.objective", f"'edm' (sigma ~ log-normal, alpha = 1) needs "
                          f"config.schedule.name='edm', got {sched!r}")
    if loss["weighting"] == "min_snr" and loss["objective"] != "noise":
        raise ConfigError("config.loss.weighting", f"'min_snr' is implemented for the noise objective, got "
                          f"objective {loss['objective']!r}")
    if loss["discrete"] and sched not in ("vp_discrete", "problem"):
        raise ConfigError("config.loss.discrete", f"discrete training times need a VPDiscrete schedule "
                          f"('vp_discrete' or 'problem'), got {sched!r}")
    return values
