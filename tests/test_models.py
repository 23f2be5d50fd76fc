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


def test_unknown_architecture_names_alternatives():
    with pytest.raises(KeyError, match="available: .*convnet"):
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
    if arch != "deit_tiny":  # CNNs can serve as pool models: BN matching needs BatchNorm
        assert models.bn_layers(model)


def test_checkpoint_round_trip(tmp_path):
    spec = SPECS["digits"]
    model = models.create_model("convnet", spec, width=8).eval()
    torch.save(models.checkpoint(model, "convnet", spec, 8, epoch=3), tmp_path / "m.pt")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    clone = models.from_checkpoint(ckpt).eval()
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(model(x), clone(x))
