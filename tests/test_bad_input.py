"""Bad input gets a clear error naming the file and the problem -- or, where the data can be used without it, a
logged count -- and never a silent wrong result. One row per case; docs/troubleshooting.md lists the same policy."""
import json
import shutil

import pytest
import torch

from sampling_free.cli import main


@pytest.fixture()
def coco_copy(tiny_shapes, tmp_path):
    """A private copy of the tiny shapes dataset (train split), to break in different ways."""
    shutil.copytree(tiny_shapes / "train", tmp_path / "images")
    ann = json.loads((tiny_shapes / "annotations" / "instances_train.json").read_text())
    return tmp_path, ann


def _write(root, ann):
    (root / "ann.json").write_text(json.dumps(ann))


def _train(root, overrides, extra=()):
    name = f"coco:{root}/ann.json:{root}/images"
    opts = {**overrides, "DATASETS.TRAIN": [name], "DATASETS.TEST": [name], "SOLVER.MAX_ITER": 1,
            "OUTPUT_DIR": str(root / "run"), **dict(extra)}
    return main(["train", *[x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]])


def missing_image(root, ann):
    """Found when the dataset is built, before training (a short run may never reach the file)."""
    (root / "images" / ann["images"][5]["file_name"]).unlink()
    return f"ann.json: 1 of the {len(ann['images'])} image files it lists are not in {root / 'images'}: " \
           f"{ann['images'][5]['file_name']}"


def corrupt_image(root, ann):
    (root / "images" / ann["images"][0]["file_name"]).write_bytes(b"\xff\xd8 this is not a JPEG")
    return f"{ann['images'][0]['file_name']}: cannot read image"


def truncated_json(root, ann):
    text = json.dumps(ann)
    (root / "ann.json").write_text(text[: len(text) // 2])
    return "ann.json: not a valid COCO annotation file"


def malformed_json(root, ann):
    (root / "ann.json").write_text('{"images": 3, "annotations": [], "categories": []}')
    return "ann.json: not a valid COCO annotation file"


def unknown_category(root, ann):
    ann["annotations"][0]["category_id"] = 99
    return f"annotation id {ann['annotations'][0]['id']} has unknown category_id 99"


def annotation_of_an_unknown_image(root, ann):
    ann["annotations"][3]["image_id"] = 4242
    return f"ann.json: annotation id {ann['annotations'][3]['id']} refers to image id 4242, which is not among the images"


def repeated_image_id(root, ann):
    ann["images"][2]["id"] = ann["images"][1]["id"]
    return f"ann.json: image id {ann['images'][1]['id']} appears 2 times in 'images'; ids must be unique"


def repeated_annotation_id(root, ann):
    ann["annotations"][2]["id"] = ann["annotations"][1]["id"]
    return f"ann.json: annotation id {ann['annotations'][1]['id']} appears 2 times in 'annotations'"


def nan_box(root, ann):
    ann["annotations"][1]["bbox"][2] = float("nan")
    return f"ann.json: annotation id {ann['annotations'][1]['id']} (image id {ann['annotations'][1]['image_id']}) has " \
           f"bbox [{', '.join(map(repr, ann['annotations'][1]['bbox']))}]; expected four finite numbers"


def infinite_box(root, ann):
    ann["annotations"][0]["bbox"][0] = float("inf")
    return f"ann.json: annotation id {ann['annotations'][0]['id']} (image id {ann['annotations'][0]['image_id']}) has bbox [inf"


def empty_dataset(root, ann):
    ann["images"], ann["annotations"] = [], []
    return "ann.json: no images"


def image_size_mismatch(root, ann):
    ann["images"][0]["width"] += 7
    return "but " + str(root / "ann.json") + " says"


def missing_annotation_file(root, ann):
    return "ann.json: annotation file not found"  # the fixture writes no ann.json; nor does this case


def wrong_config_type(root, ann):
    return "SOLVER.BASE_LR must be a float"


def unknown_config_key(root, ann):
    return "unknown config key 'SOLVER.BASE_LRR'; did you mean 'SOLVER.BASE_LR'"


def output_not_writable(root, ann):
    (root / "a_file").write_text("")
    return "is not writable"


def cuda_without_gpu(root, ann):
    return "PyTorch sees no CUDA GPU"


def amp_on_cpu(root, ann):
    return "SOLVER.AMP='bf16' needs a CUDA device"


STOPS = {
    missing_image: {}, corrupt_image: {}, truncated_json: {}, malformed_json: {}, unknown_category: {},
    annotation_of_an_unknown_image: {}, repeated_image_id: {}, repeated_annotation_id: {}, nan_box: {},
    infinite_box: {},
    empty_dataset: {}, image_size_mismatch: {}, missing_annotation_file: {},
    wrong_config_type: {"SOLVER.BASE_LR": "fast"}, unknown_config_key: {"SOLVER.BASE_LRR": "0.1"},
    output_not_writable: "OUTPUT_DIR", cuda_without_gpu: {"MODEL.DEVICE": "cuda"}, amp_on_cpu: {"SOLVER.AMP": "bf16"},
}


@pytest.mark.parametrize("case", list(STOPS), ids=lambda f: f.__name__)
def test_stops_with_a_message_naming_file_and_problem(case, coco_copy, tiny_dataset_overrides, capsys):
    if case is cuda_without_gpu and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    root, ann = coco_copy
    message = case(root, ann)
    if case not in (truncated_json, malformed_json, missing_annotation_file):  # these write (or omit) the file
        _write(root, ann)
    extra = STOPS[case]
    if extra == "OUTPUT_DIR":
        extra = {"OUTPUT_DIR": str(root / "a_file" / "run")}
    assert _train(root, tiny_dataset_overrides, extra) == 2
    assert message in capsys.readouterr().err


def test_degenerate_and_outside_boxes_are_dropped_with_a_count(coco_copy, tiny_dataset_overrides, caplog):
    root, ann = coco_copy
    first = ann["annotations"][0]
    ann["annotations"] += [{**first, "id": 10_001, "bbox": [5, 5, -3, 4]},  # negative width
                           {**first, "id": 10_002, "bbox": [5, 5, 0, 4]},  # zero width
                           {**first, "id": 10_003, "bbox": [5000, 5000, 10, 10]}]  # outside the image
    _write(root, ann)
    assert _train(root, tiny_dataset_overrides) == 0
    assert "dropped 3 degenerate boxes" in caplog.text


def test_a_class_that_never_appears_is_a_warning(coco_copy, tiny_dataset_overrides, caplog):
    root, ann = coco_copy
    ann["categories"].append({"id": 77, "name": "hexagon", "supercategory": "shape"})
    _write(root, ann)
    assert _train(root, tiny_dataset_overrides) == 0
    assert "no training box of class hexagon" in caplog.text


def test_weights_of_another_architecture(coco_copy, tiny_dataset_overrides, capsys):
    root, ann = coco_copy
    _write(root, ann)
    assert _train(root, tiny_dataset_overrides, {"SOLVER.MAX_ITER": 1}) == 0
    weights = root / "run" / "model_final.pth"
    code = main(["eval", "--weights", str(weights), "--config-file", str(root / "run" / "config.yaml"),
                 "MODEL.META_ARCHITECTURE", "FCOS", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE", "1",
                 "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[1.0]", "OUTPUT_DIR", str(root / "eval")])
    assert code == 2
    assert f"{weights}: weights do not fit the model of this config (FCOS" in capsys.readouterr().err


def test_non_finite_loss_stops_naming_iteration_and_term(coco_copy, tiny_dataset_overrides, capsys):
    root, ann = coco_copy
    _write(root, ann)
    code = _train(root, tiny_dataset_overrides, {"SOLVER.BASE_LR": 1e12, "SOLVER.WARMUP_ITERS": 0,
                                                "SOLVER.MAX_ITER": 5, "SOLVER.CHECKPOINT_PERIOD": 1})
    err = capsys.readouterr().err
    assert code == 2
    assert "iteration " in err and "loss_retina_" in err and "training stopped before the update" in err
    assert not (root / "run" / "model_final.pth").exists()
