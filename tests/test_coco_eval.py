"""Mask predictions are encoded as COCO RLE as they are predicted, and encode the same masks as thresholding."""
import json

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sampling_free.evaluation.coco import coco_records, masks_to_rle, run_inference


class _MaskDetector(torch.nn.Module):
    """Two detections per image with soft full-image masks, fixed by a seed."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)
        self.given = []

    def forward(self, images):
        outputs = []
        for image in images:
            h, w = image.shape[-2:]
            out = {"boxes": torch.tensor([[1.0, 2, 8, 9], [0, 0, 5, 5]]), "scores": torch.tensor([0.9, 0.3]),
                   "labels": torch.tensor([1, 2]), "masks": torch.rand(2, 1, h, w, generator=self.generator)}
            self.given.append(out["masks"].clone())
            outputs.append(out)
        return outputs


def test_inference_keeps_masks_as_rle_equal_to_thresholding():
    images = [(torch.zeros(3, 12, 10), {"image_id": k}) for k in range(3)]
    loader = torch.utils.data.DataLoader(images, batch_size=2, collate_fn=lambda b: tuple(zip(*b)))
    model = _MaskDetector()
    predictions = run_inference(model, loader, torch.device("cpu"))
    assert len(predictions) == 3
    for prediction, given in zip(predictions, model.given):
        assert all(isinstance(rle, dict) for rle in prediction["masks"])  # no full-image tensors kept
        decoded = mask_utils.decode(prediction["masks"])  # (H, W, N), pycocotools' own decoder
        np.testing.assert_array_equal(decoded.transpose(2, 0, 1), (given[:, 0] > 0.5).numpy().astype(np.uint8))
    boxes, masks = coco_records(predictions[0], image_id=0, category_ids=[5, 7])
    assert [m["category_id"] for m in masks] == [5, 7]
    json.dumps(masks)  # segm.json is written from these records
    # a caller holding tensors (sampling-free predict) gets the same records
    _, from_tensors = coco_records({**predictions[0], "masks": model.given[0]}, image_id=0, category_ids=[5, 7])
    assert from_tensors == masks


def test_no_masks_encode_to_an_empty_list():
    assert masks_to_rle(torch.zeros(0, 1, 4, 4)) == []
