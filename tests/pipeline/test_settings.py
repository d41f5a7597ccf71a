"""configs/pipeline.yaml: one section per stage, identical to the built-in defaults; overrides win."""
import pytest
import yaml

from engine.sizes import parse_size
from pipeline.settings import CONFIG_FILE, Settings, load_settings
from train.errors import InputNotFoundError, InvalidInputError


def test_the_shipped_config_equals_the_built_in_defaults():
    assert CONFIG_FILE.exists()
    data = yaml.safe_load(CONFIG_FILE.read_text())
    assert list(data) == ["decode", "preprocess", "infer", "colourise", "encode", "queues", "live"]
    assert load_settings() == Settings()
    assert Settings().to_dict() == data


def test_file_then_overrides(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("infer: {batch: 2, size: 96x128}\ncolourise: {view: mask}\n")
    s = load_settings(cfg, infer={"batch": 6, "backend": None}, colourise={"alpha": 0.2})
    assert s.infer.batch == 6 and s.infer.size == (96, 128) and s.infer.backend == "auto"
    assert s.colourise.view == "mask" and s.colourise.alpha == 0.2


@pytest.mark.parametrize("text,match", [
    ("infer: {batchsize: 2}", r"unknown infer settings \['batchsize'\]"),
    ("inference: {batch: 2}", "unknown section 'inference'"),
    ("colourise: {view: heatmap}", "use one of overlay, mask, side-by-side"),
    ("colourise: {alpha: 3}", "outside 0..1"),
    ("queues: {policy: lossy}", "unknown: use auto, block"),
    ("infer: {size: 144}", "write it like 144x192"),
    ("infer: [", "not valid YAML at line 1, column 9"),
    ("queues: {capacity: 0}", r"p.yaml: queues.capacity 0 must be >= 1"),
    ("decode: {thread_type: fast}", "use one of"),
    ("decode: {fps: .nan}", "decode.fps is nan but must be a finite number"),
    ("encode: {fragment_s: .inf}", "encode.fragment_s is inf but must be a finite number"),
    # negative thread counts ran (encode.threads -4 was then blamed on "an FFmpeg too old for fragments")
    ("encode: {threads: -4}", r"p.yaml: encode.threads -4 is a thread count: it must be >= 0"),
    ("infer: {torch_threads: -2}", r"infer.torch_threads -2 is a thread count"),
    ("decode: {threads: -3}", r"decode.threads -3 is a thread count"),
    ("preprocess: {cv2_threads: -7}", r"preprocess.cv2_threads -7 is a thread count"),
])
def test_bad_settings_say_how_to_fix(tmp_path, text, match):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        load_settings(cfg)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputNotFoundError, match="drop --config"):
        load_settings(tmp_path / "nope.yaml")


def test_parse_size():
    assert parse_size("144x192") == (144, 192) and parse_size(None) is None
    with pytest.raises(InvalidInputError, match="larger than 8192 a side"):
        parse_size("100000x100000")


def test_thread_type_in_any_case(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("decode: {thread_type: frame}")
    assert load_settings(cfg).decode.thread_type == "FRAME"     # what PyAV wants
