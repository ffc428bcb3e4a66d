import pytest
import torch

from picmap.model import EmbeddingNet, make_backbone


@pytest.mark.parametrize("out_dim", [2, 128])
def test_the_readout_runs_in_float32_under_bfloat16_autocast(out_dim):
    backbone, dim = make_backbone("small", 3, 16)
    net = EmbeddingNet(backbone, dim, 64, out_dim)
    hidden = []
    net.head.hidden.register_forward_hook(lambda module, args, out: hidden.append(out.dtype))
    x = torch.rand(4, 3, 16, 16)
    with torch.autocast("cpu", torch.bfloat16):
        z = net(x)
    assert hidden == [torch.bfloat16]  # the rest of the network still runs in bfloat16 …
    assert z.dtype == torch.float32  # … the coordinates do not
