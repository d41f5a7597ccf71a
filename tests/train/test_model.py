import pytest
import torch
from torch import nn

from train.errors import InvalidInputError
from train.model import MODEL_CONFIGS, UNetConfig, UNet, create_model, output_size


def conv_count(model):
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_classic_depth_has_23_conv_layers(padding):
    model = create_model("unet_seed", padding=padding)
    assert conv_count(model) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 1  # one pool module, used 4 times


def test_conv_count_follows_depth():
    assert conv_count(create_model("unet_tiny", depth=3)) == 3 * 2 + 2 + 3 * 3 + 1


def test_channels_double_down_the_contracting_path():
    model = create_model("unet_seed")
    assert model.encoder.channels == [32, 64, 128, 256, 512]
    assert create_model("unet_paper").encoder.channels == [64, 128, 256, 512, 1024]


@pytest.mark.parametrize("name", ["unet_seed", "unet_carla", "unet_tiny"])
def test_same_padding_keeps_size(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 128))
    assert out.shape == (2, 23, 96, 128)


def test_valid_padding_matches_the_paper():
    # The paper: a 572x572 tile gives a 388x388 map.
    model = create_model("unet_tiny", padding="valid").eval()
    assert model.output_size(572, 572) == (388, 388)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 572, 572))
    assert out.shape == (1, 23, 388, 388)


def test_valid_padding_non_square():
    cfg = UNetConfig(base_filters=4, padding="valid", num_classes=5)
    h, w = output_size(cfg, 188, 252)
    with torch.no_grad():
        out = UNet(cfg).eval()(torch.randn(1, 3, 188, 252))
    assert out.shape[-2:] == (h, w) == (4, 68)


def test_size_not_divisible_names_a_valid_size():
    model = create_model("unet_tiny")
    with pytest.raises(InvalidInputError, match=r"input 481x640 is not divisible by 16.*--size 480x640"):
        model(torch.zeros(1, 3, 481, 640))


def test_valid_padding_bad_size_names_a_valid_size():
    model = create_model("unet_tiny", padding="valid")
    with pytest.raises(InvalidInputError, match=r"use --size 572x572"):
        model.output_size(573, 572)


def test_unknown_model_lists_names():
    with pytest.raises(InvalidInputError, match="unet_seed"):
        create_model("resnet")
    with pytest.raises(InvalidInputError, match="unknown model options"):
        create_model("unet_seed", filters=3)


def test_named_configs_keep_the_seed():
    seed = MODEL_CONFIGS["unet_seed"]
    assert (seed.base_filters, seed.depth, seed.num_classes, seed.padding) == (32, 4, 23, "same")
    assert MODEL_CONFIGS["unet_paper"].base_filters == 64


def test_dropout_only_in_deep_blocks():
    model = create_model("unet_seed")
    has_dropout = [any(isinstance(m, nn.Dropout2d) for m in b.modules()) for b in model.encoder.blocks]
    assert has_dropout == [False, False, False, True, True]


def test_batch_norm_option():
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_model("unet_seed", batch_norm=True).modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in create_model("unet_seed").modules())
