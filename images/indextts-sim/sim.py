"""The simulation model behind the IndexTTS-2 GPT trainer test double.

This is NOT IndexTTS.  It is a few lines of arithmetic that reproduce the *shape* of the
incident runner was written for (a GPT fine-tune at LR 2e-5 that learns, reaches its best
text_loss, then diverges slowly and finally goes NaN), and of the recovery plan's outcomes,
fast and deterministically, so runner's tests can drive it in real containers on a CPU.

State (everything a checkpoint stores, see :class:`State`):

* ``L``    the learned loss level: what the model knows.  Training pulls it toward a floor
           that depends on the batch size (``floor(b) = 0.79 + 0.56 / b``: 0.93 at batch 4,
           0.86 at batch 8).
* ``D``    damage: the instability on top of ``L``.  The smoothed text_loss is ``L + D``.
* ``h``    high-LR exposure: steps trained above the instability threshold (1e-5), weighted
           by ``lr / 2e-5`` (one per step at 2e-5).  Once ``h`` passes ``diverge_after`` the
           run diverges.
* ``nan_countdown``  steps left before the ``nan`` scenario turns the state into NaN
           (-1: not armed).

Per-step dynamics (:func:`advance`), with ``T = diverge_after`` (a sim parameter of the run,
default 298,800, which is also the time scale of everything else):

* Learning: ``L <- floor + (L - floor) * exp(-k)`` with
  ``k = LEARN_DEPTH / T * sqrt(lr / 2e-5) * (batch / 4)^2``.  LEARN_DEPTH = ln(3.07 / 0.01), so
  from the base model (L = 4.0) at 2e-5, batch 4, ``L`` is 0.94 (1% above its 0.93 floor)
  exactly at step T.  At 5e-6 with batch 8 it is twice as fast, toward the lower 0.86 floor
  (below 0.9 after about 0.38 T steps, plus ~1/3 of a warmup).
* Divergence (lr > 1e-5 and h > T): with ``u = (h - T) / T`` the excess over the best grows
  along ``E(u) = E_MAX * x^P / (1 + x^P)``, ``x = u / E_C`` (slow start, accelerating, then
  saturating at E_MAX).  SCAR (35%) of each increment goes into ``L`` (permanent: the model
  itself got worse), the rest into ``D``.  Learning stops while diverging.  At
  ``u >= NAN_AT`` (h = 1.466 T: step ~438,000 at the default scale) the state becomes NaN.
* At or below 1e-5 the run's *scenario* decides:

  - ``recover`` (default): ``D`` decays with time constant RECOVER_TAU (1,500 steps) and ``L``
    keeps learning (slowly at a low LR).
  - ``plateau``: ``L`` and ``D`` frozen; the loss is flat, noise only.
  - ``rise``: ``D`` keeps growing, ``D += (D + RISE_SEED) / RISE_TAU`` per step (x1.65 per
    5,000 steps); ``L`` frozen.
  - ``nan``: like ``plateau``, and NaN_AFTER (1,000) steps after the run is (re)started from
    a checkpoint that was not yet counting down, the state turns NaN (at any LR).

Observation (:func:`observe`), a pure function of (state, seed, step), so a resumed run logs
exactly what the uninterrupted run logged:

* ``text_loss = (L + D) * (1 + sd * z1)``, ``sd = noise * sqrt(4 / batch)`` (noise is a sim
  parameter, default 0.08);
* ``mel_loss = MEL_SCALE * (L + D) * (1 + sd * (0.6 z1 + 0.8 z2))`` (correlated with text);
* both x SPIKE_FACTOR (2.5) at about one logged point in SPIKE_EVERY (2,000).

Validation (:func:`validation`) has no noise: ``VAL_GAP * (L + D)`` for text, times MEL_SCALE
for mel.

Only the standard library is imported here: validate.py stays as quick as ``import torch``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# ---- constants (the knobs; README.md explains what each one does) --------------------------
BASE_LR = 2e-5                  # the incident's LR; exposure h advances 1 per step at it
UNSTABLE_LR = 1e-5              # above this, steps count toward divergence
DEFAULT_DIVERGE_AFTER = 298_800
INIT_LOSS = 4.0                 # the base model's text_loss
FLOOR_INF, FLOOR_PER_BATCH = 0.79, 0.56   # floor(b) = FLOOR_INF + FLOOR_PER_BATCH / b
LEARN_DEPTH = math.log((INIT_LOSS - 0.93) / 0.01)  # e-folds of learning by step T at 2e-5, b4
E_MAX, E_C, E_P = 2.5, 0.18, 6.73   # divergence excess curve E(u)
SCAR = 0.35                     # fraction of divergence damage that is permanent (goes to L)
NAN_AT = 0.466                  # u at which a diverging run turns NaN (h = 1.466 T)
RECOVER_TAU = 1500.0            # recover: D decay time constant (steps) at a low LR
RISE_TAU, RISE_SEED = 10_000.0, 0.01  # rise: D growth at a low LR
NAN_AFTER = 1000                # nan: steps from (re)start to NaN
MEL_SCALE = 0.3
VAL_GAP = 1.04                  # validation loss is 4% above the smoothed train loss
SPIKE_EVERY, SPIKE_FACTOR = 2000, 2.5
DEFAULT_NOISE = 0.08
SCENARIOS = ("recover", "plateau", "rise", "nan")

_M64 = (1 << 64) - 1


@dataclass
class Params:
    """The run's simulation parameters (inherited by every checkpoint of the run)."""
    scenario: str = "recover"
    diverge_after: int = DEFAULT_DIVERGE_AFTER
    noise: float = DEFAULT_NOISE
    seed: int = 0
    nan_after: int = NAN_AFTER

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Params":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        p = cls(**known)
        if p.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {p.scenario!r} (one of {', '.join(SCENARIOS)})")
        p.diverge_after = int(p.diverge_after)
        if p.diverge_after <= 0:
            raise ValueError("diverge_after must be positive")
        return p


@dataclass
class State:
    """The latent state of the simulated model (see the module docstring)."""
    step: int = 0
    L: float = INIT_LOSS
    D: float = 0.0
    h: float = 0.0
    nan_countdown: int = -1
    extra: dict = field(default_factory=dict)

    @property
    def level(self) -> float:
        """The smoothed (noise-free) text_loss."""
        return self.L + self.D

    @property
    def is_nan(self) -> bool:
        return math.isnan(self.L) or math.isnan(self.D)

    def set_nan(self) -> None:
        self.L = self.D = float("nan")


# ---- pure functions -------------------------------------------------------------------------
def floor(batch: int) -> float:
    """The loss level training converges to at this batch size."""
    return FLOOR_INF + FLOOR_PER_BATCH / max(1, batch)


def excess(u: float) -> float:
    """Divergence excess over the best after u = (h - T) / T of high-LR exposure past T."""
    if u <= 0:
        return 0.0
    xp = (u / E_C) ** E_P
    return E_MAX * xp / (1.0 + xp)


def excess_inverse(e: float) -> float:
    """The u at which excess(u) == e (e clamped below E_MAX; capped just short of NaN_AT)."""
    if e <= 0:
        return 0.0
    f = min(e / E_MAX, 0.999999)
    u = E_C * (f / (1.0 - f)) ** (1.0 / E_P)
    return min(u, NAN_AT * 0.999)


def learn_rate(diverge_after: int, lr: float, batch: int) -> float:
    """Learning speed (e-folds of L - floor per step): LEARN_DEPTH / T * sqrt(lr / 2e-5) * (batch / 4)^2."""
    return LEARN_DEPTH / diverge_after * math.sqrt(max(0.0, lr) / BASE_LR) * (batch / 4.0) ** 2


def learned(step: int, diverge_after: int, batch: int = 4, lr: float = BASE_LR) -> float:
    """L after `step` steps from the base model at a constant lr (no warmup, no divergence)."""
    fl = floor(batch)
    return fl + (INIT_LOSS - fl) * math.exp(-learn_rate(diverge_after, lr, batch) * step)


def trajectory(step: int, diverge_after: int = DEFAULT_DIVERGE_AFTER) -> State:
    """The state of the incident run (base model, LR 2e-5, batch 4, from step 0) at `step`."""
    T = diverge_after
    if step <= T:
        return State(step=step, L=learned(step, T), D=0.0, h=float(step))
    u = (step - T) / T
    st = State(step=step, L=learned(T, T), D=0.0, h=float(step))
    if u >= NAN_AT:
        st.set_nan()
        return st
    e = excess(u)
    st.L += SCAR * e
    st.D = (1 - SCAR) * e
    return st


def crafted(step: int, loss: float, diverge_after: int = DEFAULT_DIVERGE_AFTER) -> State:
    """A state at `step` whose smoothed text_loss is `loss`.

    Up to step T it is a model still learning (all of the loss is L).  Past T, a loss above the
    incident's best is read as divergence: split SCAR / (1 - SCAR) between L and D, with the
    exposure h placed on the divergence curve where that excess lies (so a further high-LR run
    continues the curve).  A NaN loss gives a NaN state.
    """
    T = diverge_after
    if math.isnan(loss):
        st = State(step=step, h=float(step))
        st.set_nan()
        return st
    best = learned(T, T)
    if step <= T or loss <= best:
        return State(step=step, L=loss, D=0.0, h=float(step))
    e = loss - best
    return State(step=step, L=best + SCAR * e, D=(1 - SCAR) * e, h=T * (1 + excess_inverse(e)))


def advance(st: State, p: Params, lr: float, batch: int) -> None:
    """One training step at learning rate `lr` (after warmup) and batch size `batch`, in place."""
    st.step += 1
    if st.is_nan:
        return
    if p.scenario == "nan" and st.nan_countdown >= 0:
        st.nan_countdown -= 1
        if st.nan_countdown <= 0:
            st.set_nan()
            return
    T = p.diverge_after
    if lr > UNSTABLE_LR:
        h0 = st.h
        st.h = h0 + lr / BASE_LR
        if st.h > T:
            u = (st.h - T) / T
            if u >= NAN_AT:
                st.set_nan()
                return
            de = excess(u) - excess((h0 - T) / T)
            st.L += SCAR * de
            st.D += (1 - SCAR) * de
            return  # no learning while diverging
        _learn(st, T, lr, batch)
        return
    if p.scenario == "recover":
        st.D *= _RECOVER_DECAY
        _learn(st, T, lr, batch)
    elif p.scenario == "rise":
        st.D += (st.D + RISE_SEED) / RISE_TAU
    # plateau / nan: frozen


_RECOVER_DECAY = math.exp(-1.0 / RECOVER_TAU)


def _learn(st: State, T: int, lr: float, batch: int) -> None:
    fl = floor(batch)
    if st.L > fl and lr > 0:
        st.L = fl + (st.L - fl) * math.exp(-learn_rate(T, lr, batch))


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fixed, platform-independent hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def uniform(seed: int, step: int, stream: int) -> float:
    """A uniform number in (0, 1), a pure function of (seed, step, stream)."""
    x = _mix(_mix(_mix(seed & _M64) ^ (step & _M64)) ^ stream)
    return ((x >> 11) + 0.5) / float(1 << 53)


def normal(seed: int, step: int, stream: int) -> float:
    """A standard normal number (Box-Muller), a pure function of (seed, step, stream)."""
    u1, u2 = uniform(seed, step, 2 * stream), uniform(seed, step, 2 * stream + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def observe(st: State, p: Params, batch: int, seed: int | None = None) -> tuple[float, float]:
    """The logged (text_loss, mel_loss) at st.step: level x multiplicative noise (+ rare spike)."""
    seed = p.seed if seed is None else seed
    level = st.level
    if math.isnan(level):
        return float("nan"), float("nan")
    sd = p.noise * math.sqrt(4.0 / max(1, batch))
    z1, z2 = normal(seed, st.step, 1), normal(seed, st.step, 2)
    text = level * max(0.05, 1.0 + sd * z1)
    mel = MEL_SCALE * level * max(0.05, 1.0 + sd * (0.6 * z1 + 0.8 * z2))
    if uniform(seed, st.step, 7) < 1.0 / SPIKE_EVERY:
        text *= SPIKE_FACTOR
        mel *= SPIKE_FACTOR
    return text, mel


def validation(st: State) -> tuple[float, float]:
    """Noise-free validation losses (text, mel) of a checkpoint's state."""
    level = st.level
    return VAL_GAP * level, MEL_SCALE * VAL_GAP * level


# ---- the LR schedule (transformers' get_cosine_schedule_with_warmup, as the real trainer uses) --
def lr_lambda(step: int, warmup: int, total: int) -> float:
    """The cosine-with-warmup multiplier at scheduler step `step` (the formula of transformers'
    get_cosine_schedule_with_warmup, num_cycles 0.5; written here so the simulator needs no transformers)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


# ---- checkpoints (torch is imported lazily, by the caller's process) ------------------------
def model_state(st: State, p: Params, pad_bytes: int = 0) -> dict:
    """The "model" entry of a checkpoint: the simulated weights (only tensors)."""
    import torch

    g = torch.Generator().manual_seed(p.seed)
    head = torch.randn(32, 32, generator=g) * float(st.level) / 4.0  # "weights" that move with the loss
    model = {
        "gpt.sim_state": torch.tensor([st.L, st.D, st.h], dtype=torch.float64),
        "gpt.nan_countdown": torch.tensor(st.nan_countdown, dtype=torch.int64),
        "gpt.text_head.weight": head,
    }
    if pad_bytes > 0:  # bulk for size checks; not carried into the checkpoints a run saves
        model["gpt.padding"] = torch.zeros(pad_bytes, dtype=torch.uint8)
    return model


def weights_checkpoint(st: State, p: Params, pad_bytes: int = 0) -> dict:
    """A weights-only file, like the released gpt.pth: {"model": ..., "sim": ...} (no optimizer, no step)."""
    return {"model": model_state(st, p, pad_bytes), "sim": p.to_dict()}


def trainer_checkpoint(st: State, p: Params, *, base_lr: float, warmup: int, total: int, epoch: int,
                       recent: list[str], kind: str = "step", pad_bytes: int = 0) -> dict:
    """A full trainer checkpoint as the real script writes it: model, optimizer, scheduler, scaler,
    epoch, step, recent_checkpoints (+ the simulator's parameters under "sim")."""
    lr_now = base_lr * lr_lambda(st.step, warmup, total)
    optimizer = {"state": {}, "param_groups": [{"lr": lr_now, "initial_lr": base_lr, "betas": (0.9, 0.999),
                                                "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False,
                                                "params": [0]}]}
    scheduler = {"base_lrs": [base_lr], "last_epoch": int(st.step), "_step_count": int(st.step) + 1,
                 "_last_lr": [lr_now], "lr_lambdas": [None], "verbose": False,
                 "sim_schedule": {"warmup": int(warmup), "total": int(total)}}
    return {"model": model_state(st, p, pad_bytes), "optimizer": optimizer, "scheduler": scheduler,
            "scaler": None, "epoch": int(epoch), "step": int(st.step), "recent_checkpoints": list(recent),
            "extra": {"type": kind}, "sim": p.to_dict()}


def from_checkpoint(ckpt: dict) -> tuple[State, Params]:
    """The simulated state and parameters of a checkpoint (either kind); the step is the file's "step" (0 if none)."""
    model = ckpt.get("model", ckpt)
    L, D, h = (float(v) for v in model["gpt.sim_state"].tolist())
    countdown = int(model["gpt.nan_countdown"].item())
    st = State(step=int(ckpt.get("step", 0) or 0), L=L, D=D, h=h, nan_countdown=countdown)
    return st, Params.from_dict(ckpt.get("sim", {}))


def load_raw(path: str) -> dict:
    """torch.load of a checkpoint file, weights-only where this torch allows it."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (TypeError, pickle.UnpicklingError, RuntimeError):
        # torch < 1.13 has no weights_only; 1.13's weights-only unpickler rejects plain floats and tuples.
        return torch.load(path, map_location="cpu")


def load(path: str) -> tuple[State, Params, dict]:
    """Read a checkpoint file: (state, params, the raw dict)."""
    ckpt = load_raw(path)
    st, p = from_checkpoint(ckpt)
    return st, p, ckpt


# ---- reading a checkpoint without torch (validate.py) ----------------------------------------
# Importing Debian's torch costs ~1.7 s of CPU (its C extension's start-up), and a run validates many checkpoints,
# each in a process of its own: validate.py reads the simulator's checkpoints with this instead.  It knows torch's
# zip format (torch.save since 1.6: a pickle in <name>/data.pkl, each tensor's storage in <name>/data/<key>) and
# only the globals a simulator checkpoint pickles; anything else is None and the caller falls back to torch.load.
_STORAGE_DTYPES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "LongStorage": "<i8", "IntStorage": "<i4",
                   "ByteStorage": "u1", "BoolStorage": "?", "HalfStorage": "<f2"}


class _Tensor:
    """What from_checkpoint asks of a tensor: tolist() and item()."""

    def __init__(self, array):
        self.array = array

    def tolist(self):
        return self.array.tolist()

    def item(self):
        return self.array.item()


def load_light(path: str) -> dict | None:
    """A simulator checkpoint read without torch (tensors as _Tensor), or None when the file is not one this
    reader knows (a legacy or foreign pickle): then torch.load it."""
    import io
    import pickle
    import zipfile

    import numpy as np

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        return None
    with archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), None)
        if pkl is None:
            return None
        prefix = pkl[: -len("data.pkl")]

        def rebuild(storage, offset, size, stride, *_):
            itemsize = storage.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                                   strides=tuple(st * itemsize for st in stride))
            return _Tensor(np.array(view))

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _STORAGE_DTYPES[name]
                if module == "collections" and name == "OrderedDict":
                    return dict
                raise pickle.UnpicklingError(f"{module}.{name} is not in a simulator checkpoint")

            def persistent_load(self, pid):
                _, dtype, key, _location, numel = pid  # ("storage", type, key, location, numel)
                return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype, count=numel)

        try:
            return Unpickler(io.BytesIO(archive.read(pkl))).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError):
            return None


def write(path: str, ckpt: dict) -> None:
    """torch.save straight to the final name, as the real trainer does (not atomic: a reader can see a
    half-written file; torch's zip directory, written last, tells a complete one)."""
    import torch

    torch.save(ckpt, path)
