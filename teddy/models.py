"""Model registry: ``@register(name)`` + ``create_model(name, spec)``.

Every model takes images in [0, 1] and normalises them itself (first module), so synthetic images
live in pixel space: clipping, PNG grids and augmentation need no dataset statistics.
torchvision architectures are adapted to small inputs (≤ 64 px: 3×3 stride-1 stem, no max-pool)
and to the dataset's channel count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, manifest: dict) -> InputSpec:
        return cls(
            manifest["num_classes"],
            manifest["channels"],
            manifest["image_size"],
            tuple(manifest["mean"]),
            tuple(manifest["std"]),
        )


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def known(name: str) -> bool:
    """A registered architecture, or ``torchvision:<name>`` / ``timm:<name>`` of an installed library."""
    library, _, model = name.partition(":")
    if not model:
        return name in _REGISTRY
    try:
        if library == "torchvision":
            import torchvision

            return model in torchvision.models.list_models(module=torchvision.models)
        if library == "timm":
            import timm

            return model in timm.list_models()
    except ImportError:
        return False
    return False


def unknown_message(name: str) -> str:
    from teddy.config import unknown_arch_message

    return unknown_arch_message(name, available())


def create_model(name: str, spec: InputSpec, width: int = 128) -> nn.Module:
    if name in _REGISTRY:
        net = _REGISTRY[name](spec, width=width)
    elif known(name):
        net = _by_name(name, spec)
    else:
        raise KeyError(unknown_message(name))
    return nn.Sequential(Normalize(spec.mean, spec.std), net)


def _by_name(name: str, spec: InputSpec) -> nn.Module:
    """Any torchvision/timm classifier, untrained, with the dataset's classes and channels; on small
    inputs (≤ 64 px) its stem keeps the resolution (first convolution stride 1, no max-pool), as the
    registered torchvision models do. The registry's tuned entries stay the recommended ones."""
    library, _, model = name.partition(":")
    if library == "timm":
        import timm

        try:
            net = timm.create_model(
                model,
                pretrained=False,
                num_classes=spec.num_classes,
                in_chans=spec.channels,
                img_size=spec.image_size,
            )
        except TypeError:  # convolutional timm models take no img_size
            net = timm.create_model(
                model, pretrained=False, num_classes=spec.num_classes, in_chans=spec.channels
            )
    else:
        import torchvision

        net = torchvision.models.get_model(model, weights=None, num_classes=spec.num_classes)
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    overlapping = first is not None and first.kernel_size != first.stride  # a stem, not a patch embedding
    shrink = _small(spec) and overlapping and first.stride != (1, 1)
    if first is not None and (first.in_channels != spec.channels or shrink):
        stride = (1, 1) if shrink else first.stride
        new = nn.Conv2d(
            spec.channels,
            first.out_channels,
            first.kernel_size,
            stride,
            first.padding,
            first.dilation,
            first.groups if first.groups == 1 else spec.channels,
            first.bias is not None,
        )
        _replace(net, first, new)
    if _small(spec) and isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
        net.maxpool = nn.Identity()
    return net


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for key, child in parent.named_children():
            if child is old:
                setattr(parent, key, new)
                return


# -- ConvNet-BN (the DC/MTT family's ConvNet with BatchNorm) ----------------------------------


def _conv_blocks(spec: InputSpec, width: int, norm, bias: bool, first_pad: int = 1) -> nn.Module:
    """Three blocks conv3×3 → ``norm(width)`` → ReLU → avg-pool (pooling while the map is ≥ 4 px),
    then a linear classifier; ``first_pad`` > 1 grows the first map by 2·(first_pad − 1) px."""
    layers, channels = [], spec.channels
    size = spec.image_size + 2 * (first_pad - 1)
    for depth in range(3):
        pad = first_pad if depth == 0 else 1
        layers += [nn.Conv2d(channels, width, 3, padding=pad, bias=bias), norm(width), nn.ReLU(inplace=True)]
        if size >= 4:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        channels = width
    layers += [nn.Flatten(), nn.Linear(width * size * size, spec.num_classes)]
    return nn.Sequential(*layers)


@register("convnet")
def convnet(spec: InputSpec, width: int = 128) -> nn.Module:
    """conv3×3 → BN → ReLU → avg-pool, repeated while the map is ≥ 4 px (3 blocks at 16–32 px)."""
    return _conv_blocks(spec, width, nn.BatchNorm2d, bias=False)


@register("convnet_in")
def convnet_in(spec: InputSpec, width: int = 128) -> nn.Module:
    """The evaluation ConvNet of DC/DSA/DM (VICO-UoE/DatasetCondensation, networks.py ConvNet with
    get_default_convnet_setting: depth 3, instance norm, ReLU, average pooling): conv3×3 with bias →
    GroupNorm(width, width) (instance norm with affine) → ReLU → avg-pool, three blocks. As there, a
    28-px input's first convolution pads 3 so the maps are 32 px (MNIST, Fashion-MNIST)."""
    first_pad = 3 if spec.image_size == 28 else 1
    return _conv_blocks(spec, width, lambda c: nn.GroupNorm(c, c), bias=True, first_pad=first_pad)


# -- torchvision families, adapted to small images -------------------------------------------


def _small(spec: InputSpec) -> bool:
    return spec.image_size <= 64


@register("resnet18")
def resnet18(spec: InputSpec, width: int = 0) -> nn.Module:
    return _resnet("resnet18", spec)


@register("resnet50")
def resnet50(spec: InputSpec, width: int = 0) -> nn.Module:
    return _resnet("resnet50", spec)


def _resnet(name: str, spec: InputSpec) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None, num_classes=spec.num_classes)
    if _small(spec):
        net.conv1 = nn.Conv2d(spec.channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif spec.channels != 3:
        net.conv1 = nn.Conv2d(spec.channels, 64, 7, stride=2, padding=3, bias=False)
    return net


@register("mobilenetv2")
def mobilenetv2(spec: InputSpec, width: int = 0) -> nn.Module:
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None, num_classes=spec.num_classes)
    stem = net.features[0][0]
    stride = 1 if _small(spec) else 2
    net.features[0][0] = nn.Conv2d(spec.channels, stem.out_channels, 3, stride=stride, padding=1, bias=False)
    return net


@register("shufflenetv2")
def shufflenetv2(spec: InputSpec, width: int = 0) -> nn.Module:
    import torchvision

    net = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=spec.num_classes)
    out = net.conv1[0].out_channels
    stride = 1 if _small(spec) else 2
    net.conv1[0] = nn.Conv2d(spec.channels, out, 3, stride=stride, padding=1, bias=False)
    if _small(spec):
        net.maxpool = nn.Identity()
    return net


@register("efficientnet_b0")
def efficientnet_b0(spec: InputSpec, width: int = 0) -> nn.Module:
    import torchvision

    net = torchvision.models.efficientnet_b0(weights=None, num_classes=spec.num_classes)
    out = net.features[0][0].out_channels
    stride = 1 if _small(spec) else 2
    net.features[0][0] = nn.Conv2d(spec.channels, out, 3, stride=stride, padding=1, bias=False)
    return net


@register("densenet121")
def densenet121(spec: InputSpec, width: int = 0) -> nn.Module:
    import torchvision

    net = torchvision.models.densenet121(weights=None, num_classes=spec.num_classes)
    out = net.features.conv0.out_channels
    if _small(spec):
        net.features.conv0 = nn.Conv2d(spec.channels, out, 3, stride=1, padding=1, bias=False)
        net.features.pool0 = nn.Identity()
    elif spec.channels != 3:
        net.features.conv0 = nn.Conv2d(spec.channels, out, 7, stride=2, padding=3, bias=False)
    return net


@register("deit_tiny")
def deit_tiny(spec: InputSpec, width: int = 0) -> nn.Module:
    """DeiT-tiny (timm, no pretrained weights); patch size chosen to give ≥ 4×4 patches."""
    import timm

    patch = next(p for p in (16, 8, 4, 2, 1) if spec.image_size % p == 0 and spec.image_size // p >= 4)
    return timm.create_model(
        "deit_tiny_patch16_224",
        pretrained=False,
        num_classes=spec.num_classes,
        img_size=spec.image_size,
        patch_size=patch,
        in_chans=spec.channels,
    )


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def checkpoint(model: nn.Module, name: str, spec: InputSpec, width: int, **extra) -> dict:
    """State + everything needed to rebuild the model (weights_only-loadable)."""
    return {
        "arch": name,
        "width": width,
        "spec": spec.__dict__ | {"mean": list(spec.mean), "std": list(spec.std)},
        "state_dict": model.state_dict(),
        **extra,
    }


def from_checkpoint(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    spec = ckpt["spec"]
    spec = InputSpec(
        spec["num_classes"], spec["channels"], spec["image_size"], tuple(spec["mean"]), tuple(spec["std"])
    )
    model = create_model(ckpt["arch"], spec, width=ckpt["width"])
    if ckpt.get("pruned"):
        resize_to(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


def resize_to(model: nn.Module, state_dict: dict) -> nn.Module:
    """Give ``model`` the (structurally pruned) shapes of ``state_dict`` so it can be loaded.

    Parameters and buffers take the stored shapes; depthwise convolutions keep groups = channels.
    This lets pruned members be stored as plain state dicts (``weights_only`` loading).
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            module.groups = module.in_channels = module.out_channels = state_dict[prefix + "weight"].shape[0]
        for attr, value in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            stored = state_dict.get(prefix + attr)
            if stored is not None and stored.shape != value.shape:
                new = torch.empty_like(stored)
                if isinstance(value, nn.Parameter):
                    setattr(module, attr, nn.Parameter(new, requires_grad=value.requires_grad))
                else:
                    module.register_buffer(attr, new)
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            module.out_channels, module.in_channels = module.weight.shape[:2]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = module.running_mean.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
    return model
