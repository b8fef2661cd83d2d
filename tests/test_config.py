import pytest
import yaml

from sampling_free.config import ConfigError, load_config, save_config
from sampling_free.config.loader import parse_override_value


def test_defaults_and_overrides():
    cfg = load_config(overrides=["MODEL.SAMPLING_FREE_ON", "True", "SOLVER.BASE_LR", "1e-3",
                                 "DATASETS.TRAIN", "('coco_2017_train', 'coco:a.json:imgs')", "SOLVER.STEPS", "[5, 8]"])
    assert cfg.MODEL.SAMPLING_FREE_ON is True
    assert cfg.SOLVER.BASE_LR == 0.001
    assert cfg.DATASETS.TRAIN == ["coco_2017_train", "coco:a.json:imgs"]
    assert cfg.SOLVER.STEPS == [5, 8]
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA == 2.0  # untouched default


def test_single_string_is_a_one_element_list():
    assert load_config(overrides=["DATASETS.TEST", "shapes_val"]).DATASETS.TEST == ["shapes_val"]


def test_unknown_key_names_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.SAMPLNG_FREE_ON'.*'MODEL.SAMPLING_FREE_ON'"):
        load_config(overrides=["MODEL.SAMPLNG_FREE_ON", "True"])


def test_unknown_key_in_file_names_file_and_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  BASE_RL: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'SOLVER.BASE_RL'.*'SOLVER.BASE_LR'"):
        load_config(path)


@pytest.mark.parametrize("key,value,message", [
    ("SOLVER.MAX_ITER", "ten", "SOLVER.MAX_ITER must be a int"),
    ("SOLVER.MAX_ITER", "1.5", "SOLVER.MAX_ITER must be a int"),
    ("MODEL.SAMPLING_FREE_ON", "1", "MODEL.SAMPLING_FREE_ON must be a bool"),
    ("SOLVER.STEPS", "5", "SOLVER.STEPS must be a list of ints"),
    ("MODEL.BACKBONE.NAME", "resnet5", "did you mean 'resnet50'"),
    ("SOLVER.BASE_LR", "None", "SOLVER.BASE_LR must be a float"),
])
def test_wrong_types_fail_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[key, value])


def test_nullable_keys_accept_null(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("MODEL:\n  SAMPLING_FREE:\n    BIAS_INIT: null\n    PRIOR: 1e-4\n")
    cfg = load_config(path)
    assert cfg.MODEL.SAMPLING_FREE.BIAS_INIT is None
    assert cfg.MODEL.SAMPLING_FREE.PRIOR == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string


def test_override_without_value_is_an_error():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(overrides=["SOLVER.MAX_ITER"])


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(overrides=["SOLVER.MAX_ITER", "7", "MODEL.SAMPLING_FREE_ON", "True"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["SOLVER"]["MAX_ITER"] == 7
    assert load_config(tmp_path / "config.yaml") == cfg


def test_config_is_read_only():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.SOLVER.MAX_ITER = 3


def test_override_values_are_literals():
    assert parse_override_value("cpu") == "cpu"
    assert parse_override_value("True") is True and parse_override_value("true") is True
    assert parse_override_value("null") is None
    assert parse_override_value("(1, 2)") == (1, 2)
    assert parse_override_value("coco:a.json:b") == "coco:a.json:b"


def test_config_reference_is_current():
    from pathlib import Path

    from sampling_free.config.reference import render

    assert (Path(__file__).parent.parent / "docs" / "config_reference.md").read_text() == render(), \
        "run: python -m sampling_free.config.reference > docs/config_reference.md"
