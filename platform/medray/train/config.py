"""``TrainConfig``: the one schema the ``medray train`` CLI, ``jobs/train.py`` and k8s manifests share."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.config.common import MlflowOptions, RayOptions, StorageOptions
from medray.models.registry import ModelSpec
from medray.train.augment import AugmentConfig


class SplitOptions(MedrayModel):
    """Train/validation split by group (slide, patient), so no group is in both."""

    val_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of groups held out for validation")
    seed: int = Field(0, description="Seed of the group shuffle")


class PreprocessOptions(MedrayModel):
    """What the network sees: side length and per-channel normalisation of [0, 1] pixels."""

    size: int = Field(224, ge=8, description="Patches are resized to size x size before the network")
    mean: list[float] = Field([0.5, 0.5, 0.5], description="Per-channel mean subtracted after scaling to [0, 1]")
    std: list[float] = Field([0.5, 0.5, 0.5], description="Per-channel std divided by after the mean")


class OptimizerOptions(MedrayModel):
    """Optimizer and its step size."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer")
    lr: float = Field(1e-3, gt=0, description="Learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only)")


class FpOversampling(MedrayModel):
    """Model-bootstrapped false-positive oversampling: repeat the negatives the model gets wrong."""

    rounds: int = Field(0, ge=0, description="Extra rounds after the first training (0 = off)")
    repeats: int = Field(3, ge=1, description="k: each false positive appears k times in the next round")
    threshold: float = Field(0.5, gt=0, lt=1, description="A negative scored >= this is a false positive")
    negative_class: str = Field("normal", description="Class name of the negatives to score")
    positive_class: str | None = Field(None, description="Class whose probability is the score (default: "
                                                          "the other class of a binary task)")
    max_per_round: int | None = Field(None, ge=1, description="Keep at most this many (highest-scored) per round")
    epochs_per_round: int = Field(1, ge=1, description="Training epochs in each extra round")


class ScalingOptions(MedrayModel):
    """How many Ray Train workers and what each one holds."""

    num_workers: int = Field(1, ge=1, description="Data-parallel workers (DDP)")
    use_gpu: bool = Field(False, description="One GPU per worker, nccl backend and mixed precision")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs per worker; fractional leaves CPUs for "
                                                          "Ray Data (whole CPUs on 2 cores hang)")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")


class FailureInjection(MedrayModel):
    """Testing only: make one worker fail once, to exercise recovery from the last checkpoint.

    Leave ``epoch`` unset in real runs. The failure fires at the start of ``epoch`` on worker
    ``rank``, the first time only: a marker file ``<output>/_failure_injected`` keeps the restarted
    worker group from failing again. ``raise`` throws an exception in the training loop (Ray Train
    sees a user error); ``kill`` SIGKILLs the worker process (Ray Train sees a dead actor, as after
    an out-of-memory kill or a lost node). Both count against ``max_failures``.
    """

    epoch: int | None = Field(None, ge=1, description="Testing only: fail once at the start of this epoch "
                                                      "(unset = never)")
    mode: Literal["raise", "kill"] = Field("raise", description="raise: an exception in the loop; kill: "
                                                                "SIGKILL the worker process")
    rank: int = Field(0, ge=0, description="World rank of the worker that fails")


class TrainConfig(MedrayModel):
    """Train a patch/image classifier on a medray dataset with Ray Train (or a linear head on features)."""

    dataset: str = Field("medray-data/patches", description="Dataset URI (folder with dataset.json)")
    val_dataset: str | None = Field(None, description="Separate validation dataset URI (else split by group)")
    split: SplitOptions = Field(default_factory=SplitOptions, description="Group split when no val_dataset")
    labels: list[str] | None = Field(None, description="Classes to use, in model output order (default: all)")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Network, input and starting weights")
    preprocessing: PreprocessOptions = Field(default_factory=PreprocessOptions, description="Resize + normalise")
    mode: Literal["finetune", "transfer"] = Field(
        "finetune", description="finetune: train the whole net; transfer: frozen backbone + logistic head")
    epochs: int = Field(3, ge=1, description="Training epochs (first round)")
    batch_size: int = Field(32, ge=1, description="Batch size per worker")
    optimizer: OptimizerOptions = Field(default_factory=OptimizerOptions, description="Optimizer settings")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentation")
    imbalance: Literal["none", "class_weights", "balanced_sampling"] = Field(
        "none", description="Class imbalance handling: weighted loss or repeating minority rows")
    fp_oversampling: FpOversampling = Field(default_factory=FpOversampling, description="FP oversampling")
    scaling: ScalingOptions = Field(default_factory=ScalingOptions, description="Ray Train workers")
    mixed_precision: Literal["none", "bf16", "fp16"] = Field("bf16", description="AMP dtype on GPU (CPU: off)")
    max_failures: int = Field(1, ge=0, description="Worker failures to recover from (resume from checkpoint)")
    output: str = Field("medray-data/train", description="Output URI: checkpoints, bundle, plots, config")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="Tracking store")
    track: bool = Field(True, description="Log params, metrics, lineage and the model to MLflow")
    registered_model_name: str | None = Field(None, description="Register the model under this name")
    cache_val: bool = Field(True, description="Decode the validation set once into the object store "
                                              "(faster epochs; turn off when it does not fit in memory)")
    cache_train_mb: int = Field(512, ge=0, description="Decode the training set once into the object store "
                                "when it is at most this many MiB decoded (epochs then skip reading and "
                                "decoding; augmentation still draws anew each epoch); 0: never")
    seed: int = Field(0, description="Seed for torch/numpy/augmentation")
    num_threads: int | None = Field(None, ge=1, description="torch threads per worker (default: torch's)")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray cluster to use")
    inject_failure: FailureInjection = Field(default_factory=FailureInjection,
                                             description="Testing only: one injected worker failure")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if len(self.preprocessing.mean) != len(self.preprocessing.std):
            raise ValueError("preprocessing.mean and preprocessing.std need the same length")
        if self.inject_failure.rank >= self.scaling.num_workers:
            raise ValueError(f"inject_failure.rank {self.inject_failure.rank} is not a worker rank: "
                             f"scaling.num_workers is {self.scaling.num_workers}")
        return self
