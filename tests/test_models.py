import pytest
import torch

from fewshot_metaopt.models import conv4, mlp


def test_conv4_shapes_for_omniglot_and_miniimagenet():
    omniglot = conv4(5)
    assert omniglot(torch.zeros(3, 1, 28, 28)).shape == (3, 5)
    # 4 convs (640 + 3 x 36,928), 4 batch norms (4 x 128), head 64 x 5 + 5
    assert sum(p.numel() for p in omniglot.parameters()) == 112261
    mini = conv4(5, in_channels=3, hidden=32, image_size=84)
    assert mini(torch.zeros(2, 3, 84, 84)).shape == (2, 5)
    # batch norm keeps no running statistics: nothing for adaptation to write
    assert not any(True for _ in omniglot.buffers())


def test_mlp_default_is_the_sinusoid_regressor():
    net = mlp(1, 1)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [40, 40, 1]
    assert net(torch.zeros(4, 1)).shape == (4, 1)
    assert mlp(3, 2, hidden=()).forward(torch.zeros(1, 3)).shape == (1, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ways": 0}, "conv4 needs positive ways"),
        ({"ways": 5, "hidden": 0}, "conv4 needs positive ways"),
        ({"ways": 5, "image_size": 12}, "image_size=12 is too small"),
    ],
)
def test_conv4_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv4(**kwargs)
