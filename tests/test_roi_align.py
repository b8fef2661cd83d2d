"""Our thread-parallel RoIAlign backward against torchvision's own autograd: same outputs, same gradients."""
import torch
from torchvision.ops import MultiScaleRoIAlign

from sampling_free.modeling.roi_align import ParallelMultiScaleRoIAlign


def test_matches_torchvision_forward_and_backward():
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    features = {f"p{k}": torch.randn(2, 8, 64 // 2 ** (k - 2), 64 // 2 ** (k - 2), generator=g, requires_grad=True)
                for k in (2, 3, 4, 5)}
    xy = torch.rand(60, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(60, 2, generator=g) * 150 + 2], 1)
    boxes = [boxes[:25], boxes[25:]]
    ours = ParallelMultiScaleRoIAlign(list(features), 7, 2)
    reference = MultiScaleRoIAlign(list(features), 7, 2)
    out_ours = ours(features, boxes, [(256, 256)] * 2)
    upstream = torch.randn(out_ours.shape, generator=g)
    grads_ours = torch.autograd.grad((out_ours * upstream).sum(), list(features.values()))
    out_ref = reference(features, boxes, [(256, 256)] * 2)
    grads_ref = torch.autograd.grad((out_ref * upstream).sum(), list(features.values()))
    assert torch.equal(out_ours, out_ref)
    assert any(g.abs().sum() > 0 for g in grads_ref)
    for a, b in zip(grads_ours, grads_ref):
        assert torch.allclose(a, b, atol=1e-6)
