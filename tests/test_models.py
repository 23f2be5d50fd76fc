import pytest
import torch

from teddy import models

SPECS = {  # the input shapes of every supported dataset
    "digits": models.InputSpec(10, 1, 16, (0.3,), (0.3,)),
    "fashion_mnist": models.InputSpec(10, 1, 28, (0.286,), (0.353,)),
    "cifar100": models.InputSpec(100, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def test_registry_lists_required_architectures():
    assert {
        "convnet",
        "resnet18",
        "resnet50",
        "mobilenetv2",
        "shufflenetv2",
        "efficientnet_b0",
        "densenet121",
        "deit_tiny",
    } <= set(models.available())


def test_the_config_checks_know_exactly_the_registered_architectures():
    """The config checks read the names from models.py's source (no torch): the same as the registry."""
    from teddy import config

    assert config.registered_archs() == tuple(models.available())
    assert config.unknown_arch("resnet18") is None
    assert "registered: convnet" in config.unknown_arch("vgg99")


def test_unknown_architecture_names_alternatives():
    with pytest.raises(KeyError, match="registered: .*convnet"):
        models.create_model("vgg99", SPECS["digits"])


@pytest.mark.parametrize("dataset", SPECS)
@pytest.mark.parametrize("arch", models.available())
def test_every_arch_trains_one_step_on_every_dataset_shape(arch, dataset):
    spec = SPECS[dataset]
    torch.manual_seed(0)
    model = models.create_model(arch, spec, width=8).train()
    x = torch.rand(2, spec.channels, spec.image_size, spec.image_size)
    y = torch.tensor([0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, spec.num_classes)
    if arch not in ("deit_tiny", "convnet_in"):  # CNNs can serve as pool models: BN matching needs BatchNorm
        assert models.bn_layers(model)


def test_convnet_in_is_dc_evaluation_convnet():
    """DC/DSA/DM's ConvNet (width 128, instance norm, 28 px padded to 32 maps): the same layers and
    parameter count as theirs (317,706 on Fashion-MNIST), and instance norm, not batch statistics:
    an image's output does not depend on the rest of its batch in training mode."""
    spec = models.InputSpec(10, 1, 28, (0.286,), (0.353,))
    model = models.create_model("convnet_in", spec, width=128).train()
    assert models.count_params(model) == 317_706
    assert not models.bn_layers(model)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)
    assert models.create_model("convnet_in", models.InputSpec(10, 3, 32, (0.5,) * 3, (0.25,) * 3), width=128)(
        torch.rand(1, 3, 32, 32)
    ).shape == (1, 10)


def test_checkpoint_round_trip(tmp_path):
    spec = SPECS["digits"]
    model = models.create_model("convnet", spec, width=8).eval()
    torch.save(models.checkpoint(model, "convnet", spec, 8, epoch=3), tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    clone = models.from_checkpoint(ckpt).eval()
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize(
    "name, size",
    [("torchvision:regnet_x_400mf", 32), ("torchvision:resnet34", 64), ("timm:deit_tiny_patch16_224", 32)],
)
def test_torchvision_and_timm_students_by_name(name, size):
    spec = models.InputSpec(7, 3, size, (0.5,) * 3, (0.25,) * 3)
    assert models.known(name) and not models.known(name + "_nope") and not models.known("torchvision:")
    model = models.create_model(name, spec)
    logits = model(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 7)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    if name.startswith("torchvision"):  # small inputs keep their resolution in the stem
        assert first.stride == (1, 1)


def test_tiny_imagenet_resnet18_is_sre2l_modified_and_imagenet_takes_torchvision_weights():
    tiny = models.create_model("resnet18", models.InputSpec(200, 3, 64, (0.5,) * 3, (0.25,) * 3))[1]
    assert tiny.conv1.kernel_size == (3, 3) and tiny.conv1.stride == (1, 1)
    assert isinstance(tiny.maxpool, torch.nn.Identity) and tiny.fc.out_features == 200
    import torchvision

    full = models.create_model("resnet18", models.InputSpec(1000, 3, 224, (0.5,) * 3, (0.25,) * 3))[1]
    full.load_state_dict(torchvision.models.resnet18(weights=None).state_dict())  # same keys, shapes
    assert full.conv1.kernel_size == (7, 7) and isinstance(full.maxpool, torch.nn.MaxPool2d)
