import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sampling_free.cli import main
from sampling_free.config import load_config
from sampling_free.data import shapes
from sampling_free.data.build import build_datasets
from sampling_free.data.catalog import resolve
from sampling_free.data.coco import COCODetection, DatasetError, collate
from sampling_free.data.voc import VOCDetection
from sampling_free.evaluation.coco import evaluate_dataset
from sampling_free.evaluation.voc import evaluate_detections

# The devkit's class list, typed out here rather than imported.
VOC20 = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
         "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]

# VOC2007 000005.xml, shortened: a difficult chair, and a person without a <difficult> tag covering the whole image.
HAND_XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <segmented>0</segmented>
  <object>
    <name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
  </object>
  <object>
    <name>chair</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
    <bndbox><xmin>5</xmin><ymin>244</ymin><xmax>67</xmax><ymax>374</ymax></bndbox>
  </object>
  <object>
    <name>person</name>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>375</ymax></bndbox>
  </object>
</annotation>
"""


def _obj_xml(name, x1, y1, x2, y2, difficult=0):
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _devkit(root, split, files: dict, sizes: dict | None = None, *, missing=()):
    """``files``: file id -> XML text; ``sizes``: file id -> (w, h) of a JPEG to write; the other images are empty
    files (present, unreadable), but for the ids in ``missing``."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for file_id, text in files.items():
        if text is not None:
            (root / "Annotations" / f"{file_id}.xml").write_text(text)
        if file_id not in missing:
            (root / "JPEGImages" / f"{file_id}.jpg").write_bytes(b"")
    for file_id, (w, h) in (sizes or {}).items():
        Image.new("RGB", (w, h), (90, 120, 30)).save(root / "JPEGImages" / f"{file_id}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in files))
    return root


def _small_xml(w, h, objects):
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            + "".join(_obj_xml(*o) for o in objects) + "</annotation>")


# --- parsing ----------------------------------------------------------------------------------------------------

def test_hand_written_xml_one_based_inclusive_to_continuous(tmp_path):
    root = _devkit(tmp_path / "VOC2007", "test", {"000005": HAND_XML}, {"000005": (500, 375)})
    ds = VOCDetection(root, "test", training=False)
    assert ds.class_names == VOC20 and ds.category_ids == list(range(1, 21)) and ds.num_classes == 20
    assert len(ds) == 1 and ds.file_id(0) == "000005" and ds.image_ids == [1]
    assert ds.image_size(0) == (375, 500)
    boxes, labels = ds.annotations(0)
    # [xmin - 1, ymin - 1, xmax, ymax]: pixels 263..324 are 62 wide, from 262 to 324; 1..500 is the whole width.
    assert boxes.tolist() == [[262, 210, 324, 339], [4, 243, 67, 374], [0, 0, 500, 375]]
    assert labels.tolist() == [9, 9, 15]  # chair is the 9th VOC class, person the 15th
    assert ds.difficult(0).tolist() == [False, True, False]
    assert ds.ann_file == root / "ImageSets" / "Main" / "test.txt"
    image, target = ds[0]
    assert image.shape == (3, 375, 500) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["difficult"].tolist() == [False, True, False] and target["image_id"] == 1
    _, flipped = ds[(0, True)]
    assert flipped["boxes"][0].tolist() == [500 - 324, 210, 500 - 262, 339]
    # The in-memory COCO: xywh of the same continuous boxes, the difficult chair a crowd region.
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in anns] == [[262, 210, 62, 129], [4, 243, 63, 131], [0, 0, 500, 375]]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0] and [a["category_id"] for a in anns] == [9, 9, 15]
    assert ds.coco.imgs[1]["width"] == 500 and ds.coco.cats[9]["name"] == "chair"


def test_difficult_dropped_in_training_kept_for_evaluation(tmp_path):
    root = _devkit(tmp_path / "VOC2007", "trainval", {"000005": HAND_XML}, {"000005": (500, 375)})
    ds = VOCDetection(root, "trainval", training=True)
    boxes, labels = ds.annotations(0)
    assert boxes.tolist() == [[262, 210, 324, 339], [0, 0, 500, 375]] and labels.tolist() == [9, 15]
    _, target = ds[0]
    assert target["boxes"].tolist() == boxes.tolist() and "difficult" not in target
    assert len(VOCDetection(root, "trainval", training=False).annotations(0)[0]) == 3


@pytest.mark.parametrize("text,message", [
    ("<annotation><size><width>50</width>", r"000007.xml: not a valid VOC annotation file"),
    (_small_xml(50, 40, [("dog", 1, 1, 5, float("nan"))]), r"000007.xml: object 0 \(dog\) <bndbox/ymax> is 'nan', "
                                                         r"not a finite number"),
    (_small_xml(50, 40, [("dog", 1, "-inf", 5, 5)]), r"000007.xml: object 0 \(dog\) <bndbox/ymin> is '-inf', not a finite"),
    (_small_xml(50, 40, [("dog", 1, 1, 5, 5), ("cat", 9, 1, 5, 5)]), r"000007.xml: object 1 \(cat\) has xmax < xmin"),
    ("<annotation><object><name>dog</name></object></annotation>", r"000007.xml: the image has no <size/width>"),
    (_small_xml(50, 40, [("dog", 1, 1, 5, "x")]), r"000007.xml: object 0 \(dog\) <bndbox/ymax> is 'x'"),
])
def test_bad_annotations_name_the_file_and_object(tmp_path, text, message):
    root = _devkit(tmp_path / "VOC", "train", {"000007": text})
    with pytest.raises(DatasetError, match=message):
        VOCDetection(root, "train", training=True)


def test_missing_files_are_named(tmp_path):
    root = _devkit(tmp_path / "VOC", "train", {"000005": HAND_XML, "000009": None})
    with pytest.raises(DatasetError, match=r"000009.xml: annotation file not found"):
        VOCDetection(root, "train", training=True)
    with pytest.raises(DatasetError, match=r"test.txt: split file not found"):
        VOCDetection(root, "test", training=True)
    root = _devkit(tmp_path / "VOC2", "train", {"000005": HAND_XML, "000006": HAND_XML}, missing=["000006"])
    with pytest.raises(DatasetError, match=r"train.txt: 1 of the 2 image files it lists are not in .*JPEGImages: "
                                           r"000006.jpg$"):
        VOCDetection(root, "train", training=True)
    root = _devkit(tmp_path / "VOC3", "train", {"000005": HAND_XML})
    ds = VOCDetection(root, "train", training=True)
    with pytest.raises(DatasetError, match=r"000005.jpg: cannot read image"):
        ds[0]
    with pytest.raises(DatasetError, match=r"no instance masks"):
        VOCDetection(root, "train", training=True, with_masks=True)


# --- shapes in VOC layout, catalog, build --------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("training", [True, False])
def test_shapes_voc_layout_matches_the_coco_layout_exactly(shapes_voc, tiny_shapes, split, training):
    voc = VOCDetection(shapes_voc, split, training=training)
    coco = COCODetection(tiny_shapes / "annotations" / f"instances_{split}.json", tiny_shapes / split,
                         training=training)
    assert voc.class_names == list(shapes.CLASSES) and voc.category_ids == coco.category_ids
    assert len(voc) == len(coco) and voc.image_ids == coco.image_ids
    assert (shapes_voc / "Annotations" / f"{split}_000003.xml").is_file()
    for i in range(len(voc)):
        assert voc.image_size(i) == coco.image_size(i)
        (vb, vl), (cb, cl) = voc.annotations(i), coco.annotations(i)
        assert np.array_equal(vb, cb) and np.array_equal(vl, cl)
        assert not voc.difficult(i).any()
    assert torch.equal(voc[2][0], coco[2][0])


def test_shapes_voc_xml_is_one_based_inclusive(shapes_voc, tiny_shapes):
    coco = json.loads((tiny_shapes / "annotations" / "instances_train.json").read_text())
    x, y, w, h = coco["annotations"][0]["bbox"]  # COCO: continuous [x, x + w)
    text = (shapes_voc / "Annotations" / "train_000000.xml").read_text()
    assert coco["annotations"][0]["image_id"] == 1
    assert f"<xmin>{x + 1}</xmin>" in text and f"<ymin>{y + 1}</ymin>" in text
    assert f"<xmax>{x + w}</xmax>" in text and f"<ymax>{y + h}</ymax>" in text


def test_catalog_names_and_voc_paths(tmp_path):
    spec = resolve("voc:/data/VOC2012:val")
    assert (spec.kind, spec.split, spec.devkit_root) == ("voc", "val", type(spec.devkit_root)("/data/VOC2012"))
    assert str(spec.ann_file) == "/data/VOC2012/ImageSets/Main/val.txt"
    assert resolve("voc:/data/with:colon/VOC2007:test").devkit_root.as_posix() == "/data/with:colon/VOC2007"
    with pytest.raises(ValueError, match="expected voc:<devkit root>:<split>"):
        resolve("voc:/data/VOC2012")
    with pytest.raises(ValueError, match="did you mean 'voc_2007_test'"):
        resolve("voc_2007_tset", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"voc/VOC2012/ImageSets/Main/trainval.txt not found"):
        resolve("voc_2012_trainval", tmp_path)
    assert resolve("coco:/x/a.json:/x/imgs").kind == "coco"
    expected = {"voc_2007_train": ("VOC2007", "train"), "voc_2007_val": ("VOC2007", "val"),
                "voc_2007_trainval": ("VOC2007", "trainval"), "voc_2007_test": ("VOC2007", "test"),
                "voc_2012_train": ("VOC2012", "train"), "voc_2012_val": ("VOC2012", "val"),
                "voc_2012_trainval": ("VOC2012", "trainval")}
    for name, (year, split) in expected.items():
        _devkit(tmp_path / "voc" / year, split, {"000005": HAND_XML})
        spec = resolve(name, tmp_path)
        assert spec.devkit_root == tmp_path / "voc" / year and spec.split == split and spec.kind == "voc"


def test_build_07_plus_12_and_the_class_check(tmp_path, shapes_voc):
    _devkit(tmp_path / "voc" / "VOC2007", "trainval", {"000005": HAND_XML})
    _devkit(tmp_path / "voc" / "VOC2012", "trainval", {"2008_000008": HAND_XML})
    cfg = load_config(overrides=["DATASETS.ROOT", str(tmp_path)])
    d07, d12 = build_datasets(["voc_2007_trainval", "voc_2012_trainval"], cfg, training=True)
    assert isinstance(d07, VOCDetection) and d07.name == "voc_2007_trainval" and d12.file_id(0) == "2008_000008"
    assert d07.training and len(d12.annotations(0)[0]) == 2
    with pytest.raises(DatasetError, match=r"train_000000.xml: object 0 \(\w+\) has class name '\w+', which is not "
                                           r"among the classes of voc_2007_trainval: \['aeroplane'"):
        build_datasets(["voc_2007_trainval", f"voc:{shapes_voc}:train"], cfg, training=True)


# --- class names: classes.txt, the names in the files, the model's ----------------------------------------------

OWN = {"a": _small_xml(50, 40, [("charlie", 1, 1, 5, 5), ("alpha", 9, 9, 20, 20)]),
       "b": _small_xml(50, 40, [("bravo", 1, 1, 5, 5)])}


def test_own_names_without_classes_txt_are_the_sorted_names_found(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ds = VOCDetection(_devkit(tmp_path / "mine", "train", OWN), "train", training=True)
    assert ds.class_names == ["alpha", "bravo", "charlie"]
    assert [ds.annotations(i)[1].tolist() for i in range(2)] == [[3, 1], [2]]
    assert "3 class names found in the XML files, in sorted order: alpha, bravo, charlie" in caplog.text
    # names that are all VOC classes: the VOC 20 in the devkit's order, even when some classes never occur
    ds = VOCDetection(_devkit(tmp_path / "voc", "train", {"a": _small_xml(50, 40, [("person", 1, 1, 5, 5)])}),
                      "train", training=True)
    assert ds.class_names == VOC20 and ds.annotations(0)[1].tolist() == [15]


def test_a_name_outside_classes_txt_or_the_models_classes_is_an_error_naming_them(tmp_path):
    root = _devkit(tmp_path / "mine", "train", OWN)
    (root / "classes.txt").write_text("alpha\ncharlie\n")
    with pytest.raises(DatasetError, match=r"b.xml: object 0 \(bravo\) has class name 'bravo', which is not among "
                                           r".*mine/classes.txt \(add the name there, or delete the file"):
        VOCDetection(root, "train", training=True)
    (root / "classes.txt").unlink()
    # a trained model's names, matched by name: another order than the sorted one, and one name the data lacks
    ds = VOCDetection(root, "train", training=False, class_names=["charlie", "zulu", "bravo", "alpha"],
                      name_source="the classes of the model in m.pth")
    assert ds.class_names == ["charlie", "zulu", "bravo", "alpha"]
    assert [ds.annotations(i)[1].tolist() for i in range(2)] == [[1, 4], [3]]
    (root / "classes.txt").write_text("alpha\nbravo\ncharlie\n")
    with pytest.raises(DatasetError, match=r"b.xml: object 0 \(bravo\) has class name 'bravo', which is not among the "
                                           r"classes of the model in m.pth: \['alpha', 'charlie'\]; .*classes.txt is "
                                           r"not used when the class names are given"):
        VOCDetection(root, "train", training=False, class_names=["alpha", "charlie"],
                     name_source="the classes of the model in m.pth")


def test_training_on_own_voc_names_records_them_and_evaluation_matches_by_name(tmp_path, tiny_dataset_overrides,
                                                                                 capsys):
    """A test split holding only some of the classes (here: one) is labelled by the trained model's names, not by
    the names its own files happen to contain."""
    files = {f"t{k}": _small_xml(64, 48, [("charlie", 2, 2, 30, 30), ("alpha", 30, 20, 60, 46)]) for k in range(4)}
    root = _devkit(tmp_path / "mine", "train", files, {k: (64, 48) for k in files})
    test = {"v0": _small_xml(64, 48, [("charlie", 2, 2, 30, 30)])}
    _devkit(root, "val", test, {"v0": (64, 48)})
    run = tmp_path / "run"
    opts = {**tiny_dataset_overrides, "DATASETS.TRAIN": [f"voc:{root}:train"], "DATASETS.TEST": [f"voc:{root}:val"],
            "SOLVER.MAX_ITER": 1, "OUTPUT_DIR": str(run)}
    assert main(["train", *[x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]]) == 0
    assert load_config(run / "config.yaml").DATASETS.CLASS_NAMES == ["alpha", "charlie"]
    cfg = load_config(run / "config.yaml")
    (val,) = build_datasets(cfg.DATASETS.TEST, cfg, training=False)
    assert val.class_names == ["alpha", "charlie"] and val.annotations(0)[1].tolist() == [2]
    _devkit(root, "other", {"o0": _small_xml(64, 48, [("delta", 2, 2, 30, 30)])}, {"o0": (64, 48)})
    code = main(["eval", "--weights", str(run / "model_final.pth"), "DATASETS.TEST", f"('voc:{root}:other',)"])
    assert code == 2
    assert f"o0.xml: object 0 (delta) has class name 'delta', which is not among the classes of the model in " \
           f"{run / 'model_final.pth'}: ['alpha', 'charlie']" in capsys.readouterr().err


# --- VOC AP by hand ----------------------------------------------------------------------------------------------

def _det(*rows):
    """rows: (label, score, x1, y1, x2, y2)."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return {"labels": a[:, 0].astype(np.int64), "scores": a[:, 1], "boxes": a[:, 2:]}


def _gt(*rows):
    """rows: (label, difficult, x1, y1, x2, y2)."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return {"labels": a[:, 0].astype(np.int64), "difficult": a[:, 1].astype(bool), "boxes": a[:, 2:]}


# Classes: cat = 1, dog = 2, bird = 3.
#   image 0: cat G1 [0,0,10,10], cat G2 [20,0,30,10], cat G3 [40,0,50,10] difficult, bird [0,50,10,60]
#   image 1: cat G4 [0,0,10,10], dog [0,20,10,30] difficult (dog has no non-difficult object)
# cat detections, ranked by score (npos = 3: G1, G2, G4):
#   0.95 img0 [0,0,10,10]   IoU(G1) = 1                         TP (G1 found)
#   0.90 img0 [0,0,10,9]    IoU(G1) = 90/100 = 0.9, G1 taken    FP (duplicate)
#   0.85 img0 [40,0,50,10]  IoU(G3) = 1, G3 difficult           ignored: neither TP nor FP
#   0.80 img1 [0,0,10,5]    IoU(G4) = 50/(100+50-50) = 0.5      TP (>= 0.5, as VOCevaldet.m)
#   0.70 img1 [60,60,70,70] no overlap                          FP
#   0.60 img0 [20,0,30,10]  IoU(G2) = 1                         TP
# cumulative TP 1,1,1,2,2,3; FP 0,1,1,1,2,2
#   recall    = 1/3, 1/3, 1/3, 2/3, 2/3, 1
#   precision = 1/1, 1/2, 1/2, 2/3, 2/4, 3/5
CASE_DETECTIONS = [
    _det((1, 0.95, 0, 0, 10, 10), (1, 0.90, 0, 0, 10, 9), (1, 0.85, 40, 0, 50, 10), (1, 0.60, 20, 0, 30, 10)),
    _det((1, 0.80, 0, 0, 10, 5), (1, 0.70, 60, 60, 70, 70), (2, 0.99, 0, 20, 10, 30)),
]
CASE_GROUND_TRUTH = [
    _gt((1, 0, 0, 0, 10, 10), (1, 0, 20, 0, 30, 10), (1, 1, 40, 0, 50, 10), (3, 0, 0, 50, 10, 60)),
    _gt((1, 0, 0, 0, 10, 10), (2, 1, 0, 20, 10, 30)),
]


def test_voc07_11_point_ap_by_hand():
    # cat, max precision at recall >= t:
    #   t = 0.0, 0.1, 0.2, 0.3: every point (recall >= 1/3)       -> 1
    #   t = 0.4, 0.5, 0.6:      recall 2/3 or 1: 2/3, 2/4, 3/5    -> 2/3
    #   t = 0.7, 0.8, 0.9, 1.0: recall 1 only                     -> 3/5
    #   AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = (4 + 2 + 2.4) / 11 = 8.4 / 11
    # bird: one object, no detection -> 0. dog: only a difficult object -> NaN, not in mAP.
    r = evaluate_detections(CASE_DETECTIONS, CASE_GROUND_TRUTH, ["cat", "dog", "bird"], metric="voc07_11point")
    assert r["metric"] == "voc07_11point"
    assert r["per_class"]["cat"] == pytest.approx(100 * 8.4 / 11)
    assert r["per_class"]["bird"] == 0 and math.isnan(r["per_class"]["dog"])
    assert r["mAP"] == pytest.approx(100 * (8.4 / 11 + 0) / 2)


def test_area_ap_by_hand():
    # cat, precision envelope (best precision at this recall or beyond), area under it:
    #   recall 0   -> 1/3: envelope max(1, 1/2, 1/2, 2/3, 2/4, 3/5) = 1     -> 1/3 * 1   = 1/3
    #   recall 1/3 -> 2/3: envelope max(2/3, 2/4, 3/5)             = 2/3   -> 1/3 * 2/3 = 2/9
    #   recall 2/3 -> 1:   envelope 3/5                                     -> 1/3 * 3/5 = 1/5
    #   AP = 1/3 + 2/9 + 1/5 = (15 + 10 + 9) / 45 = 34/45
    r = evaluate_detections(CASE_DETECTIONS, CASE_GROUND_TRUTH, ["cat", "dog", "bird"], metric="area")
    assert r["metric"] == "area"
    assert r["per_class"]["cat"] == pytest.approx(100 * 34 / 45)
    assert r["mAP"] == pytest.approx(100 * 17 / 45)


def test_11_point_counts_a_recall_of_exactly_three_tenths():
    # Ten cat objects; detections 0.9 TP, 0.8 FP (nothing there), 0.7 TP, 0.6 TP.
    #   recall 0.1, 0.1, 0.2, 0.3; precision 1, 1/2, 2/3, 3/4
    #   11-point: t = 0, 0.1 -> 1; t = 0.2 -> 3/4; t = 0.3 -> 3/4 (recall 3/10 reaches it); t >= 0.4 -> 0
    #   AP = (1 + 1 + 3/4 + 3/4) / 11 = 3.5 / 11
    #   area: 0.1 * 1 + 0.1 * 3/4 + 0.1 * 3/4 + 0.7 * 0 = 0.25
    gt = [_gt(*[(1, 0, 20 * k, 0, 20 * k + 10, 10) for k in range(10)])]
    det = [_det((1, 0.9, 0, 0, 10, 10), (1, 0.8, 0, 100, 10, 110), (1, 0.7, 20, 0, 30, 10), (1, 0.6, 40, 0, 50, 10))]
    assert evaluate_detections(det, gt, ["cat"])["mAP"] == pytest.approx(100 * 3.5 / 11)
    assert evaluate_detections(det, gt, ["cat"], metric="area")["mAP"] == pytest.approx(25)
    with pytest.raises(ValueError, match="VOC metric 'voc12'"):
        evaluate_detections(det, gt, ["cat"], metric="voc12")


def test_iou_is_on_continuous_boxes_without_the_devkit_plus_one():
    # GT [0,0,10,10]; detection [0,0,10,4.9]: IoU = 49/100 = 0.49 -> a miss (AP 0). With the devkit's +1 on
    # already-converted boxes it would read 11*5.9/(121) = 0.536 and count as found. [0,0,10,5]: 0.5 -> found.
    gt = [_gt((1, 0, 0, 0, 10, 10))]
    assert evaluate_detections([_det((1, 0.9, 0, 0, 10, 4.9))], gt, ["cat"])["mAP"] == 0
    assert evaluate_detections([_det((1, 0.9, 0, 0, 10, 5))], gt, ["cat"])["mAP"] == pytest.approx(100)


class _FixedDetector(torch.nn.Module):
    """Returns the given detections, one list entry per image, in loader order."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = iter(outputs)

    def forward(self, images):
        return [next(self.outputs) for _ in images]


def test_evaluate_dataset_scores_voc_with_difficult_ignored_by_both_metrics(tmp_path):
    # cat = 8. Image 1: cat [0,0,10,10], difficult cat [20,10,30,20]. Image 2: cat [10,10,30,30], difficult cat
    # [0,0,5,5]. Detections: both normal cats exactly, plus the top-scored one on image 1's difficult cat; image 2's
    # difficult cat is missed. Difficult ignored -> every non-difficult object found at precision 1: AP 100 in VOC
    # and in COCO (iscrowd). Were they counted, the missed one would cap recall at 2/3 and the extra detection
    # would be a false positive ranked first.
    files = {"a": _small_xml(40, 30, [("cat", 1, 1, 10, 10), ("cat", 21, 11, 30, 20, 1)]),
             "b": _small_xml(40, 30, [("cat", 11, 11, 30, 30), ("cat", 1, 1, 5, 5, 1)])}
    ds = VOCDetection(_devkit(tmp_path / "VOC", "test", files, {"a": (40, 30), "b": (40, 30)}), "test",
                      training=False)

    def out(*rows):
        return {"boxes": torch.tensor([r[1:] for r in rows], dtype=torch.float32),
                "scores": torch.tensor([r[0] for r in rows]), "labels": torch.full((len(rows),), 8)}

    outputs = [out((0.9, 0, 0, 10, 10), (0.95, 20, 10, 30, 20)), out((0.7, 10, 10, 30, 30))]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate)
    with pytest.raises(ValueError, match="VOC metric 'voc10'"):
        evaluate_dataset(_FixedDetector(outputs), ds, loader, torch.device("cpu"), tmp_path / "x", voc_metric="voc10")
    metrics = evaluate_dataset(_FixedDetector(outputs), ds, loader, torch.device("cpu"), tmp_path / "eval",
                               voc_metric="area")
    assert metrics["voc"]["mAP"] == pytest.approx(100) and metrics["voc"]["metric"] == "area"
    assert metrics["voc"]["per_class"]["cat"] == pytest.approx(100) and math.isnan(metrics["voc"]["per_class"]["dog"])
    assert metrics["bbox"]["AP"] == pytest.approx(100) and metrics["bbox"]["AP50"] == pytest.approx(100)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["voc"]["mAP"] == pytest.approx(100)
