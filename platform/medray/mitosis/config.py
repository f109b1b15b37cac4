"""``MitosisConfig``: one typed config shared by ``medray mitosis {prepare,train,detect,compare}``,
``jobs/detect_mitoses.py`` and the bench. Sub-configs are small and each owns one stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.config.common import RayOptions, StorageOptions
from medray.train.config import TrainConfig


class ProposalConfig(MedrayModel):
    """Stage 1: nuclei candidates from the hematoxylin channel (``skimage.color.rgb2hed``), or from a
    trained UNet's figure mask (``method: unet``; ``min_area``/``max_area``/``merge_distance`` apply
    to its components too)."""

    method: Literal["threshold", "log", "unet"] = Field(
        "threshold", description="threshold: smoothed H > threshold + connected components; log: LoG blobs; "
                                 "unet: a trained MONAI UNet's figure mask (segmentation.py; "
                                 "train it with segmentation.train_from_hpf)")
    sigma: float = Field(2.0, ge=0, description="Gaussian smoothing of the hematoxylin channel (pixels)")
    threshold: float = Field(0.10, gt=0, description="Hematoxylin OD above which a pixel is nuclear (threshold)")
    min_area: int = Field(20, ge=1, description="Smallest component kept (pixels)")
    max_area: int = Field(4000, ge=1, description="Largest component kept (pixels); bigger ones are clumps/folds")
    log_min_sigma: float = Field(3.0, gt=0, description="LoG smallest blob sigma (log)")
    log_max_sigma: float = Field(8.0, gt=0, description="LoG largest blob sigma (log)")
    log_threshold: float = Field(0.02, gt=0, description="LoG response threshold (log)")
    merge_distance: float = Field(6.0, ge=0, description="Candidates closer than this collapse to one (pixels)")
    unet_model: str | None = Field(None, description="UNet checkpoint path/URI written by "
                                                      "segmentation.train_from_hpf or train_unet (unet)")
    unet_threshold: float = Field(0.5, gt=0, lt=1, description="Foreground probability threshold (unet)")

    @model_validator(mode="after")
    def _check(self) -> "ProposalConfig":
        if self.min_area > self.max_area:
            raise ValueError(f"min_area={self.min_area} > max_area={self.max_area}")
        if self.method == "unet" and not self.unet_model:
            raise ValueError("method 'unet' needs unet_model=<checkpoint> (train one with "
                             "medray.mitosis.segmentation.train_from_hpf)")
        return self


class PatchConfig(MedrayModel):
    """Stage 2 training data: patches centred on candidates, labelled by distance to the nearest mitosis."""

    size: int = Field(64, ge=16, description="Patch side (pixels)")
    positive_radius: float = Field(20.0, gt=0, description="A candidate within this of a mitosis is positive")
    ignore_radius: float = Field(30.0, ge=0, description="Candidates between positive_radius and this are "
                                                         "ambiguous and left out (0 = keep all)")
    include_truth: bool = Field(True, description="Add a patch at every true mitosis (positives)")
    truth_jitter_copies: int = Field(4, ge=0, description="Extra positives per mitosis, shifted by up to "
                                                          "positive_radius/2 (more positive views)")
    include_mimics: bool = Field(True, description="Add patches at known mimics (hard negatives) when truth.json has them")
    encoding: Literal["png", "jpeg"] = Field("png", description="Patch encoding in the dataset")
    val_fraction: float = Field(0.25, gt=0, lt=1, description="Fraction of images held out for validation")
    seed: int = Field(0, description="Seed of the image split and jitter")


class ClusterConfig(MedrayModel):
    """Post-processing: detections closer than ``distance`` merge, keeping the best probability."""

    distance: float = Field(32.0, ge=0, description="Merge distance (pixels); 0 turns clustering off")


class MatchConfig(MedrayModel):
    """TUPAC16/AMIDA13 criterion: a detection within ``radius`` of an unmatched mitosis is a TP."""

    radius: float = Field(30.0, gt=0, description="Match distance in pixels (30 px = 7.5 um at 0.25 um/px)")


class SlidingWindowConfig(MedrayModel):
    """Baseline: classify every window at a stride, then cluster."""

    stride: int = Field(16, ge=1, description="Window step (pixels)")


class SlideRegion(MedrayModel):
    """A whole slide and the level-0 boxes to search in it."""

    slide: str = Field(description="Slide path or URI (anything OpenSlide reads)")
    regions: list[tuple[int, int, int, int]] = Field(description="Level-0 boxes (x, y, width, height)")
    mitoses_csv: str | None = Field(None, description="TUPAC16 row,col CSV of level-0 mitoses (optional truth)")


class InputConfig(MedrayModel):
    """What to run on: an HPF folder (images/ + mitoses/), explicit images, or slide regions."""

    hpf_dir: str | None = Field(None, description="Folder with images/*.png|tif and mitoses/<name>.csv")
    images: list[str] = Field(default_factory=list, description="Explicit image paths/URIs (truth: csv beside "
                                                                 "in ../mitoses/<name>.csv when present)")
    slides: list[SlideRegion] = Field(default_factory=list, description="Slide regions to search")
    limit: int | None = Field(None, ge=1, description="Use at most this many images (after sorting)")


class DetectConfig(MedrayModel):
    """Distributed detection with Ray Data: one work unit per image or slide region."""

    model: str | None = Field(None, description="Model bundle URI (default: <output>/train/model)")
    threshold: float | None = Field(None, gt=0, lt=1, description="Override the bundle's threshold")
    batch_size: int = Field(128, ge=1, description="Patches per forward pass")
    actors: int = Field(1, ge=1, description="Actors holding the model")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per actor")
    overlays: bool = Field(True, description="Write one overlay PNG per image/region")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor")


def _default_train() -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"name": "resnet50", "num_classes": 2},
        "labels": ["normal", "mitosis"],
        "preprocessing": {"size": 64},
        "epochs": 6, "batch_size": 64,
        "imbalance": "balanced_sampling",
        "fp_oversampling": {"rounds": 1, "repeats": 3, "threshold": 0.5, "negative_class": "normal",
                            "positive_class": "mitosis"},
    })


class MitosisConfig(MedrayModel):
    """Two-stage mitosis detection: proposals → 64x64 classifier → clustering → TUPAC16 evaluation."""

    inputs: InputConfig = Field(default_factory=InputConfig, description="Images or slide regions")
    proposals: ProposalConfig = Field(default_factory=ProposalConfig, description="Stage 1")
    patches: PatchConfig = Field(default_factory=PatchConfig, description="Stage 2 training patches")
    train: TrainConfig = Field(default_factory=_default_train, description="Shared trainer settings "
                                                                           "(dataset/output filled from output)")
    clustering: ClusterConfig = Field(default_factory=ClusterConfig, description="Duplicate merging")
    matching: MatchConfig = Field(default_factory=MatchConfig, description="Evaluation criterion")
    sliding_window: SlidingWindowConfig = Field(default_factory=SlidingWindowConfig, description="Baseline")
    detect: DetectConfig = Field(default_factory=DetectConfig, description="Distributed inference")
    output: str = Field("medray-data/mitosis", description="Output folder or s3:// URI")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")
    ray: RayOptions = Field(default_factory=RayOptions, description="Ray cluster to use")
