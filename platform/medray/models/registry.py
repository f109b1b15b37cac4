"""Model registry: a name → builder dict over MONAI networks plus a tiny CNN for tests.

Nothing is ever downloaded: MONAI ``pretrained`` flags stay False; weights come only from
``ModelSpec.pretrained`` (a local/remote file, a bundle or an MLflow URI) via ``weights.load_weights``.
"""

from __future__ import annotations

import difflib
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions
from medray.errors import ModelError

ModelName = Literal["densenet121", "resnet18", "resnet50", "resnet152", "efficientnet-b0", "smallcnn"]


class ModelSpec(MedrayModel):
    """Which network to build, for what input, and where its starting weights come from."""

    name: ModelName = Field("resnet18", description="Registry name of the network")
    spatial_dims: Literal[2, 3] = Field(2, description="2 for images/patches, 3 for volumes")
    in_channels: int = Field(3, ge=1, description="Input channels (3 for RGB, 1 for CT/grey)")
    num_classes: int = Field(2, ge=2, description="Number of output classes (logits per sample)")
    pretrained: str | None = Field(
        None, description="Starting weights: state dict/checkpoint path or URI, bundle dir, models:/ or runs:/")
    strict_weights: bool = Field(True, description="Fail when pretrained keys or shapes do not all match")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the final linear layer")


class DropoutLinear(nn.Linear):
    """A Linear layer with dropout on its input; same state dict keys as ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, p: float = 0.0) -> None:
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p > 0:
            x = F.dropout(x, self.p, self.training)
        return super().forward(x)


def _with_dropout(linear: nn.Linear, p: float) -> DropoutLinear:
    head = DropoutLinear(linear.in_features, linear.out_features, p)
    head.load_state_dict(linear.state_dict())
    return head


class SmallCNN(nn.Module):
    """A tiny fast CNN (three conv blocks, global pooling, linear head) for tests and benchmarks."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, dropout: float = 0.0,
                 width: int = 16) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            out = width * 2**i
            layers += [conv(channels, out, 3, stride=2, padding=1, bias=False), norm(out), nn.ReLU(inplace=True)]
            channels = out
        layers += [pool(1), nn.Flatten(1)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.head = DropoutLinear(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _densenet121(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels,
                      out_channels=spec.num_classes, pretrained=False)
    net.class_layers.out = _with_dropout(net.class_layers.out, spec.dropout)
    return net


def _resnet(depth: int) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        from monai.networks.nets import resnet

        factory = getattr(resnet, f"resnet{depth}")
        net = factory(pretrained=False, spatial_dims=spec.spatial_dims, n_input_channels=spec.in_channels,
                      num_classes=spec.num_classes)
        net.fc = _with_dropout(net.fc, spec.dropout)
        return net

    return build


def _efficientnet_b0(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=spec.spatial_dims,
                         in_channels=spec.in_channels, num_classes=spec.num_classes)
    net._dropout.p = spec.dropout  # replaces MONAI's default 0.2, so every model reads `dropout` alike
    return net


def _smallcnn(spec: ModelSpec) -> nn.Module:
    return SmallCNN(spec.spatial_dims, spec.in_channels, spec.num_classes, spec.dropout)


BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "densenet121": _densenet121,
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "resnet152": _resnet(152),
    "efficientnet-b0": _efficientnet_b0,
    "smallcnn": _smallcnn,
}

# Dotted name of each network's final linear layer (for fine-tuning only the head, or re-heading).
HEAD_NAMES: dict[str, str] = {
    "densenet121": "class_layers.out",
    "resnet18": "fc",
    "resnet50": "fc",
    "resnet152": "fc",
    "efficientnet-b0": "_fc",
    "smallcnn": "head",
}


def available_models() -> list[str]:
    """Names accepted by ``ModelSpec.name`` / ``build_model``."""
    return sorted(BUILDERS)


def _builder(name: str) -> Callable[[ModelSpec], nn.Module]:
    try:
        return BUILDERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(BUILDERS), n=1, cutoff=0.3)
        hint = f"; the closest is {close[0]!r}" if close else ""
        raise ModelError(f"unknown model {name!r}; available models: {available_models()}{hint}") from None


def check_model_name(name: str) -> str:
    """Return ``name`` if it is in the registry, else raise ``ModelError`` naming the closest one."""
    _builder(name)
    return name


def build_model(spec: ModelSpec, storage: StorageOptions | None = None) -> nn.Module:
    """Build the network ``spec`` names (random init), then load ``spec.pretrained`` if set.

    Every process that runs a network comes through here (``load_model`` too), so this is where
    the process's allocator is tuned for batch-sized buffers (``medray.allocator``).
    """
    from medray.allocator import tune_malloc

    tune_malloc()
    model = _builder(spec.name)(spec)
    if spec.pretrained:
        from medray.models.weights import load_weights

        load_weights(model, spec.pretrained, storage=storage, strict=spec.strict_weights)
    return model


def classifier_head_name(spec: ModelSpec) -> str:
    """Dotted module name of the final linear layer of ``spec``'s network."""
    check_model_name(spec.name)
    return HEAD_NAMES[spec.name]


class _EfficientNetFeatures(nn.Module):
    """EfficientNet's forward up to and including global pooling (shares the net's modules)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
        x = net._blocks(x)
        x = net._swish(net._bn1(net._conv_head(net._conv_head_padding(x))))
        return net._avg_pooling(x).flatten(start_dim=1)


def _resnet_features(net: nn.Module) -> nn.Module:
    stem = [net.conv1, net.bn1, net.act] + ([] if net.no_max_pool else [net.maxpool])
    return nn.Sequential(*stem, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten(1))


def _densenet_features(net: nn.Module) -> nn.Module:
    cl = net.class_layers
    return nn.Sequential(net.features, cl.relu, cl.pool, cl.flatten)


_FEATURES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "densenet121": _densenet_features,
    "resnet18": _resnet_features,
    "resnet50": _resnet_features,
    "resnet152": _resnet_features,
    "efficientnet-b0": _EfficientNetFeatures,
    "smallcnn": lambda net: net.features,
}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def feature_extractor(model: nn.Module, spec: ModelSpec) -> tuple[nn.Module, int]:
    """The network up to global pooling, giving (N, feature_dim); shares parameters with ``model``."""
    check_model_name(spec.name)
    net = _unwrap(model)
    head = net.get_submodule(HEAD_NAMES[spec.name])
    return _FEATURES[spec.name](net), int(head.in_features)
