"""Training options, checked once where they enter."""

from __future__ import annotations

import importlib.util

import math
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError
from planner.jsonio import check_output_dir
from trainer.privacy.accountant import MIN_NOISE

BACKENDS = ("local", "dist")
EMULATE = ("virtual", "sleep", "none")
AGGREGATE = ("none", "fedavg", "swap")
FEEDBACK = ("mean", "sum")
DATASETS = ("digits", "mnist", "images:DIR")
IMAGES = "images:"  # --data images:DIR (trainer.data.folders)
# What --resume must find as the run saved it: every option that changes what is trained
# (which records, which updates, what privacy). The others (rounds, eval cadence, timeouts,
# backend) only change how the run is carried out or watched, and --lr may change so that
# a diverged run (trainer.errors.Diverged) resumes from its last finite checkpoint with a
# smaller one. A new option: one line here.
SAME_ON_RESUME = ("seed", "data", "data_root", "alpha", "aggregate", "feedback", "steps_per_round",
                  "deadline_s", "dp_clip", "dp_noise", "dp_epsilon", "dp_delta", "secure_agg", "cut_noise", "g_ema")
SEED_LIMIT = 2**32  # --seed's range: torch takes < 2**64, and the trainer adds offsets to it


def tensorboard_installed() -> bool:
    """Whether the tensorboard package is there (``fsl train``'s default for --tensorboard)."""
    return importlib.util.find_spec("tensorboard") is not None


@dataclass(frozen=True)
class TrainConfig:
    plan_path: Path  # the plan to execute
    out_dir: Path = Path("runs/latest")  # metrics, samples, checkpoint
    backend: str = "local"  # local: one process; dist: a process per device
    rounds: int = 3  # total rounds of the run (resume continues up to this)
    resume: bool = False  # continue from out_dir/checkpoint
    steps_per_round: int = 10  # training steps per round
    emulate: str = "sleep"  # virtual: a clock per device (trainer.roles.clock); sleep: devices and links run at the profile's speed; none: flat out
    aggregate: str = "none"  # between rounds: none | fedavg | swap discriminators
    feedback: str = "mean"  # the generator's step: mean (data_weight-weighted) | sum of the clients' gradients
    deadline_s: float | None = None  # a client slower than this per round is dropped
    data: str = "digits"  # digits (embedded) | mnist | images:DIR (an image folder; with {client}: one per client)
    data_root: Path | None = None  # folder of MNIST IDX files; with {client}: each client's own folder
    alpha: float | None = None  # Dirichlet alpha for non-IID shards; None = IID
    eval_every: int = 1  # rounds between FID/KID evaluations; 0 = never
    seed: int = 0  # seeds everything
    lr: float = 2e-4  # Adam learning rate, betas (0.5, 0.999) as DCGAN
    g_ema: float = 0.0  # samples and quality from an exponential moving average of G's weights (0: G itself)
    timeout_s: float = 60.0  # a peer silent this long is a failure
    eval_samples: int = 500  # generated images scored per evaluation
    fid_inception: Path | None = None  # FID Inception weights (pt_inception-2015-12-05): also the standard FID
    replan_on_failure: bool = False  # a lost device is planned around and training goes on
    adapt: bool = False  # re-solve on measured speeds after each round; switch plans when 10% faster
    slowdown: tuple[tuple[str, float, int], ...] = ()  # (device, factor, from round): emulated drift
    dp_clip: float | None = None  # C: per-sample L2 bound of the discriminator's gradient (trainer.privacy.dpsgd); 1.0 under DP
    dp_noise: float | None = None  # SIGMA: DP-SGD's noise is SIGMA x C; epsilon in metrics.jsonl
    dp_epsilon: float | None = None  # E: DP-SGD with the SIGMA that keeps the planned steps within E
    dp_delta: float = 1e-5  # delta of epsilon; must be below 1 / N of every client
    secure_agg: bool = False  # fedavg over pairwise-masked weights (trainer.aggregate.secagg)
    cut_noise: float = 0.0  # std of Gaussian noise on the data device's first-cut activations
    tensorboard: bool = False  # also write each round to out_dir/tensorboard/ (trainer.run.board)

    @property
    def dp(self) -> bool:
        return self.dp_noise is not None or self.dp_epsilon is not None

    @property
    def clip(self) -> float:
        """C under DP (``--dp-clip``, 1.0 unless given)."""
        return 1.0 if self.dp_clip is None else self.dp_clip

    @classmethod
    def from_cli(cls, **kw) -> "TrainConfig":
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(opt: str, msg: str) -> InputError:
            return InputError(opt, None, msg)

        if self.backend not in BACKENDS:
            raise bad("--backend", f"expected one of {', '.join(BACKENDS)}, found {self.backend!r}")
        if self.emulate not in EMULATE:
            raise bad("--emulate", f"expected one of {', '.join(EMULATE)}, found {self.emulate!r}")
        if self.aggregate not in AGGREGATE:
            raise bad("--aggregate", f"expected one of {', '.join(AGGREGATE)}, found {self.aggregate!r}")
        if self.feedback not in FEEDBACK:
            raise bad("--feedback", f"expected one of {', '.join(FEEDBACK)}, found {self.feedback!r}")
        if not 1 <= self.rounds <= 100_000:
            raise bad("--rounds", f"must be within 1..100000, found {self.rounds}")
        if not 1 <= self.steps_per_round <= 100_000:
            raise bad("--steps-per-round", f"must be within 1..100000, found {self.steps_per_round}")
        for opt, v in (("--deadline-s", self.deadline_s), ("--alpha", self.alpha), ("--lr", self.lr),
                       ("--timeout-s", self.timeout_s)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise bad(opt, f"must be a finite number > 0, found {v}")
        if not (math.isfinite(self.g_ema) and 0.0 <= self.g_ema < 1.0):
            raise bad("--g-ema", f"must be within [0, 1), found {self.g_ema}")
        if self.eval_every < 0:
            raise bad("--eval-every", f"must be >= 0, found {self.eval_every}")
        if self.fid_inception is not None and not self.eval_every:
            raise bad("--fid-inception", "scores the evaluations, and --eval-every 0 makes none")
        images = self.data.startswith(IMAGES)
        if self.data not in DATASETS and not images:
            raise bad("--data", f"expected one of {', '.join(DATASETS)}, found {self.data!r}")
        if images and not self.data[len(IMAGES):]:
            raise bad("--data", "images: needs the folder, e.g. --data images:path/to/folder")
        if self.data == "mnist" and self.data_root is None:
            raise bad("--data-root", "--data mnist needs --data-root DIR with the MNIST IDX files")
        if self.data_root is not None and self.data != "mnist":
            raise bad("--data-root", f"is for --data mnist; --data {self.data} "
                      + ("names its folder itself" if images else "is embedded"))
        folder = str(self.data_root) if self.data_root is not None else self.data[len(IMAGES):] if images else ""
        if "{client}" in folder and self.alpha is not None:
            raise bad("--alpha", "shards one data set; with per-client folders ({client}) each client's data is its own")
        if images and "{client}" not in folder and Path(folder).resolve() in (self.out_dir.resolve(),
                                                                              *self.out_dir.resolve().parents):
            raise bad("--out", f"{self.out_dir} is in the image folder {folder}: the run's pictures would become "
                      "training images; write the run elsewhere")
        if self.slowdown and self.emulate == "none":
            raise bad("--slowdown", "slows an emulated device: it needs --emulate virtual or --emulate sleep")
        self._validate_privacy(bad)
        if self.tensorboard and not tensorboard_installed():
            raise bad("--tensorboard", "the tensorboard package is not installed (pip install tensorboard), "
                      "or pass --no-tensorboard")
        if not 0 <= self.seed < SEED_LIMIT:
            raise bad("--seed", f"must be within 0..{SEED_LIMIT - 1}, found {self.seed}")
        check_output_dir(self.out_dir, "--out")

    def _validate_privacy(self, bad) -> None:
        """The options of trainer.privacy.options and trainer.aggregate.secagg, and which go together. Whether
        epsilon is finite depends on the shards; the server checks it once it knows them."""
        if self.dp_noise is not None and self.dp_epsilon is not None:
            raise bad("--dp-noise", "give --dp-epsilon E (the noise is chosen for it) or --dp-noise SIGMA "
                      "(epsilon is reported), not both")
        if self.dp_clip is not None and not self.dp:
            raise bad("--dp-clip", "clips DP-SGD's per-sample gradients: add --dp-epsilon E or --dp-noise SIGMA")
        for opt, v in (("--dp-clip", self.dp_clip), ("--dp-noise", self.dp_noise), ("--dp-epsilon", self.dp_epsilon)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise bad(opt, f"must be a finite number > 0 (no noise, no finite epsilon), found {v}")
        if self.dp_noise is not None and self.dp_noise < MIN_NOISE:
            raise bad("--dp-noise", f"{self.dp_noise:g} is too small for any finite epsilon (at least {MIN_NOISE:g})")
        if not (math.isfinite(self.dp_delta) and 0 < self.dp_delta < 1):
            raise bad("--dp-delta", f"must be within (0, 1), found {self.dp_delta}")
        if not (math.isfinite(self.cut_noise) and self.cut_noise >= 0):
            raise bad("--cut-noise", f"must be a finite number >= 0, found {self.cut_noise}")
        if self.secure_agg and self.aggregate != "fedavg":
            raise bad("--secure-agg", f"masks the sum of --aggregate fedavg; --aggregate {self.aggregate} has no sum "
                      "to hide (swap hands one client's weights to another whole)")


def privacy_warnings(cfg: TrainConfig) -> list[str]:
    """What a person should know about what leaves a client under these options."""
    out = []
    if cfg.aggregate != "none" and not cfg.secure_agg and not cfg.dp:
        out.append(f"--aggregate {cfg.aggregate}: discriminator weights trained on each client's raw data leave "
                   "the client, without DP; the server sees every client's weights")
    if cfg.secure_agg and not cfg.dp:
        out.append("--secure-agg: discriminator weights trained on raw data still leave the client, masked and "
                   "without DP; the server sees only the average over the clients, and every client receives it")
    return out


def parse_slowdown(text: str) -> tuple[str, float, int]:
    """``DEVICE=FACTOR@ROUND`` -> (device, factor, round); InputError naming --slowdown."""
    try:
        device, rest = text.split("=", 1)
        factor, round_no = rest.split("@", 1)
        out = (device.strip(), float(factor), int(round_no))
    except ValueError:
        raise InputError("--slowdown", None, f"expected DEVICE=FACTOR@ROUND (e.g. a-phone=4@3), found {text!r}") from None
    if not out[0] or not (math.isfinite(out[1]) and out[1] > 0) or out[2] < 1:
        raise InputError("--slowdown", None, f"expected a device, a factor > 0 and a round >= 1, found {text!r}")
    return out
