import os
import tempfile

import pytest
import torch

# Tests never write to the user's caches or the working directory.
_SANDBOX = tempfile.mkdtemp(prefix="sampling-free-tests-")
os.environ["SAMPLING_FREE_CACHE"] = os.path.join(_SANDBOX, "cache")
os.environ["SAMPLING_FREE_DATASETS"] = os.path.join(_SANDBOX, "datasets")

from sampling_free.data import shapes


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A small copy of the built-in dataset: 16 training and 8 validation images."""
    root = tmp_path_factory.mktemp("shapes")
    shapes.write_dataset(root, seed=0, splits={"train": 16, "val": 8})
    return root


@pytest.fixture(scope="session")
def tiny_dataset_overrides(tiny_shapes):
    """Config values that train a small, fast RetinaNet on ``tiny_shapes``."""
    r = tiny_shapes
    return {
        "DATASETS.TRAIN": [f"coco:{r}/annotations/instances_train.json:{r}/train"],
        "DATASETS.TEST": [f"coco:{r}/annotations/instances_val.json:{r}/val"],
        "MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": "", "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.RETINANET.NUM_CONVS": 1,
        "MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32], [64], [128], [256]],
        "INPUT.MIN_SIZE_TRAIN": [96, 128], "INPUT.MAX_SIZE_TRAIN": 160,
        "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 160,
        "SOLVER.IMS_PER_BATCH": 2, "SOLVER.BASE_LR": 0.005, "SOLVER.WARMUP_ITERS": 2, "SOLVER.STEPS": [100],
        "SOLVER.LOG_PERIOD": 1, "TEST.IMS_PER_BATCH": 4, "DATALOADER.NUM_WORKERS": 0,
    }


@pytest.fixture(scope="session")
def shapes_voc(tmp_path_factory, tiny_shapes):
    """``tiny_shapes`` (seed 0, 16 + 8 images) written again in the VOC layout, through the command line."""
    from sampling_free.cli import main

    out = tmp_path_factory.mktemp("shapes_voc")
    assert main(["data", "shapes", "--format", "voc", "--out", str(out), "--train-images", "16",
                 "--val-images", "8"]) == 0
    return out
