import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main
from train.checkpoint import load_checkpoint, load_model, make_checkpoint, save_checkpoint
from train.classes import CARLA_CLASSES
from train.errors import CheckpointError, InputNotFoundError, InvalidInputError
from train.data import find_pairs, split_by_runs
from train.evaluate import checkpoint_split, evaluate_checkpoint
from train.model import check_input_size, create_model
from train.trainer import load_train_config, train


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"train": {
        "model": "unet_tiny", "input_size": [48, 64], "epochs": 3, "batch_size": 4, "lr": 0.01,
        "val_every": 4, "augment": False}}))
    return path


def test_the_lovasz_term_is_trained_on(carla_dir, tiny_config, tmp_path):
    torch.set_num_threads(2)
    config = yaml.safe_load(tiny_config.read_text())
    first = {}
    for loss in ("ce", "ce+lovasz"):
        config["train"].update(loss=loss, epochs=2)
        tiny_config.write_text(yaml.safe_dump(config))
        train(carla_dir, tmp_path / loss, config=tiny_config)
        log = [json.loads(line) for line in (tmp_path / loss / "log.jsonl").read_text().splitlines()]
        assert log[-1]["train_loss"] < log[0]["train_loss"], loss
        first[loss] = log[0]["train_loss"]
    assert first["ce+lovasz"] - first["ce"] > 0.3       # the Lovasz term (1 - IoU, near 1 at the start) is in it


def test_short_training_run_lowers_loss(carla_dir, tiny_config, tmp_path, caplog):
    torch.set_num_threads(2)
    out = tmp_path / "run"
    best = train(carla_dir, out, config=tiny_config)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert 0 <= best["miou"] <= 1 and 0 <= best["pixel_accuracy"] <= 1
    for name in ("best.pt", "last.pt", "curves.png", "split.json", "settings.yaml"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert split["val"] == ["006882", "006883", "006884"]

    # the checkpoint alone is enough for inference
    model, ckpt = load_model(out / "best.pt")
    assert ckpt["input_size"] == [48, 64] and len(ckpt["class_names"]) == 23 and len(ckpt["palette"]) == 23
    assert set(ckpt["normalize"]) == {"mean", "std"}
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 23, 48, 64)

    # resume continues where it stopped
    best2 = train(carla_dir, out, config=tiny_config, epochs=4, resume=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1, 2, 3]
    assert best2["miou"] >= best["miou"]

    # a run is never overwritten or resumed into something else by mistake, and says so before any work
    with pytest.raises(InvalidInputError, match="already holds a training run .* pass --resume"):
        train(carla_dir, out, config=tiny_config)
    with pytest.raises(InvalidInputError, match="already trained 4 of 4 epochs: pass --epochs N"):
        train(carla_dir, out, config=tiny_config, epochs=4, resume=True)
    other = tiny_config.with_name("other.yaml")
    other.write_text(yaml.safe_dump({"train": {"model": "unet_tiny", "model_options": {"base_filters": 4},
                                               "input_size": [48, 64]}}))
    with pytest.raises(InvalidInputError, match="with other settings than this config builds"):
        train(carla_dir, out, config=other, epochs=6, resume=True)

    # the checkpoint records its split: a frame added to the folder shifts the runs, not what eval scores
    assert ckpt["split"] == split
    grown = tmp_path / "grown"
    shutil.copytree(carla_dir, grown)
    for folder in ("CameraRGB", "CameraMask"):
        last = sorted((grown / folder).iterdir())[-1]
        shutil.copy(last, last.with_name("000001" + last.suffix))
    assert [p.stem for p in split_by_runs(find_pairs(grown), 4)[1]] != split["val"]
    assert [p.stem for p in checkpoint_split(grown, ckpt)] == split["val"]
    with pytest.raises(InvalidInputError, match="split differently from when .* started"):
        train(grown, out, config=tiny_config, epochs=6, resume=True)

    # other settings on resume go on with the saved optimizer and schedule, and it says so; the lr recorded
    # is the one the saved optimizer goes on with
    faster = tiny_config.with_name("faster.yaml")
    faster.write_text(tiny_config.read_text().replace("lr: 0.01", "lr: 0.05"))
    train(carla_dir, out, config=faster, epochs=5, resume=True, batch_size=3)
    assert "--resume: settings changed since" in caplog.text and "batch_size 4 -> 3" in caplog.text
    assert "lr 0.01 -> 0.05" in caplog.text and load_checkpoint(out / "last.pt")["settings"]["lr"] == 0.01


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cpu_training_in_each_precision_lowers_loss(carla_dir, tiny_config, tmp_path, precision):
    """fp32 (auto on the CPU) and the opt-in bf16 (about twice as fast on CPUs with native BF16) both learn."""
    config = yaml.safe_load(tiny_config.read_text())
    config["train"]["precision"] = precision
    tiny_config.write_text(yaml.safe_dump(config))
    train(carla_dir, tmp_path / "run", config=tiny_config, device="cpu")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())["train"]["precision"] == precision
    assert load_model(tmp_path / "run" / "best.pt")[0].head.weight.dtype == torch.float32  # weights stay FP32


def test_fp16_training_on_the_cpu_is_refused_in_one_line(carla_dir, tiny_config, tmp_path, capsys):
    args = ["train", "--data", str(carla_dir), "--config", str(tiny_config), "--out", str(tmp_path / "run"),
            "--device", "cpu", "--precision", "fp16"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("precision fp16 needs a CUDA GPU: use bf16 or fp32 on the CPU") and "\n" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_checkpoint_round_trip(tmp_path):
    model = create_model("unet_tiny").eval()
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(model, "unet_tiny", (96, 128)), path)
    loaded, ckpt = load_model(path)
    assert ckpt["model"] == "unet_tiny"
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint(make_checkpoint(create_model("unet_tiny"), "unet_tiny", (96, 128)), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(cut)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a segpipe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_flipped_byte_in_the_weights_is_caught(tmp_path):
    """torch.load ignores the zip's CRCs: the checkpoint's own weights checksum catches the damage."""
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(create_model("unet_tiny"), "unet_tiny", (96, 128)), path)
    with zipfile.ZipFile(path) as z:                       # the largest tensor's bytes
        entry = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    h = entry.header_offset                                # local header: 30 bytes, name, extra, data
    at = h + 30 + int.from_bytes(data[h + 26:h + 28], "little") + int.from_bytes(data[h + 28:h + 30], "little")
    at += entry.file_size // 2
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(path)
    assert load_checkpoint()["weights_sha256"]            # the shipped weights carry theirs


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "segpipe-unet/1", "payload": Exception("runs code")}, path)
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)


def test_wrong_architecture_checkpoint(tmp_path):
    ckpt = make_checkpoint(create_model("unet_tiny"), "unet_tiny", (96, 128))
    ckpt["model_config"]["base_filters"] = 16  # weights are for 8 filters
    save_checkpoint(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(tmp_path / "wrong.pt")


def test_eval_json_fields(carla_dir, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(create_model("unet_tiny").eval(), "unet_tiny", (48, 64)), path)
    out = tmp_path / "metrics.json"
    assert main(["eval", "--data", str(carla_dir), "--weights", str(path), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"miou", "pixel_accuracy", "per_class_iou", "frames", "scored_at"}
    assert result["scored_at"] == "48x64"
    assert isinstance(result["miou"], float) and isinstance(result["frames"], int)
    assert all(isinstance(v, float) for v in result["per_class_iou"].values())
    assert (tmp_path / "metrics.png").is_file()


def test_eval_of_shipped_model_on_real_frames(carla_dir):
    result = evaluate_checkpoint(carla_dir, split="all")
    assert result["frames"] == 12
    assert result["pixel_accuracy"] > 0.8  # a random model scores about 1/23


def test_eval_native_scores_the_masks_that_run_writes(carla_dir, tmp_path, settings):
    """--native: the labels at each frame's own size, as `segpipe run --masks` writes them."""
    from pipeline.run import run
    from train.data import read_mask
    from train.metrics import ConfusionMatrix

    native = evaluate_checkpoint(carla_dir, split="all", native=True)
    assert native["scored_at"] == "native" and native["frames"] == 12
    masks = tmp_path / "masks"
    run(carla_dir / "CameraRGB", None, settings.override(infer={"backend": "torch-cpu", "precision": "fp32"}),
        masks=masks)
    cm = ConfusionMatrix(23)
    for written, truth in zip(sorted(masks.iterdir()), sorted((carla_dir / "CameraMask").iterdir())):
        cm.update(torch.from_numpy(read_mask(written)), torch.from_numpy(read_mask(truth)))
    assert cm.matrix.sum() == 12 * 240 * 320                           # scored at 320x240, the frames' size
    assert abs(cm.pixel_accuracy() - native["pixel_accuracy"]) < 0.002 and abs(cm.miou() - native["miou"]) < 0.01
    assert native["pixel_accuracy"] != evaluate_checkpoint(carla_dir, split="all")["pixel_accuracy"]


def test_cli_user_errors_are_one_line(carla_dir, capsys):
    assert main(["eval", "--data", "/nonexistent/carla"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "Traceback" not in err
    assert main(["train", "--data", str(carla_dir), "--config", "/nonexistent.yaml"]) == 2
    assert "config /nonexistent.yaml does not exist" in capsys.readouterr().err
    a_file = carla_dir / "CameraRGB" / sorted(p.name for p in (carla_dir / "CameraRGB").iterdir())[0]
    assert main(["eval", "--data", str(a_file)]) == 2
    assert "is a file, not a folder: pass --data with a folder" in capsys.readouterr().err


@pytest.mark.parametrize("text,match", [
    ("epochs: x", r"c.yaml: epochs is 'x' but must be an integer >= 1"),
    ("lr: fast", "lr is 'fast' but must be a number > 0"),
    ("input_size: 5", r"input_size is 5 but must be \[height, width\]"),
    ("input_size: [100, 100]", r"use input_size: \[96, 96\]"),
    ("batch_size: [", "not valid YAML at line 2, column 1"),
    ("- 1", "must be a mapping of settings"),
    ("loss: dice", "loss is 'dice' but must be ce or ce\\+lovasz"),
    ("lr: .inf", "lr is inf but must be a number > 0"),
    ("same_scene: .nan", "same_scene is nan but must be a number >= 0"),
    ("{model: unet_tiny, input_size: [48, 64], crop: [96, 96]}", r"crop \[96, 96\] is larger than input_size"),
    ("train: {epochs: 1}\ninput_size: [96, 128]", r"has \['input_size'\] beside its train: section: move them"),
    ("class_names: [a, b]", r"class_names lists 2 classes but the model has 23"),
    ("class_names: [road, road]", r"class_names is \['road', 'road'\] but must be null or a list of distinct names"),
    ("palette: [[0, 0, 300]]", r"palette is .* but must be null or a list of \[R, G, B\] \(0-255\)"),
])
def test_bad_training_configs_are_one_line(carla_dir, tmp_path, capsys, text, match):
    (tmp_path / "c.yaml").write_text(text + "\n")
    assert main(["train", "--data", str(carla_dir), "--config", str(tmp_path / "c.yaml"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(match, err), err


@pytest.mark.parametrize("flags,match", [
    (["--epochs", "0"], "--epochs is 0 but must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size is 0 but must be an integer >= 1"),
    (["--max-frames", "0"], "--max-frames 0 must be >= 1"),
    (["--resume"], "last.pt does not exist: pass the --out of an earlier run"),
])
def test_bad_training_flags_are_one_line(carla_dir, tmp_path, capsys, flags, match):
    assert main(["train", "--data", str(carla_dir), "--out", str(tmp_path / "run"), *flags]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run" / "split.json").exists()          # refused before any work


def test_yaml_numbers_without_a_dot_and_the_shipped_config_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("train: {lr: 3e-3}\n")
    assert load_train_config(tmp_path / "c.yaml", {})["lr"] == 0.003
    monkeypatch.chdir(tmp_path)                                     # not the repository root
    assert load_train_config("configs/unet_carla.yaml", {})["model"] == "unet_carla"
    with pytest.raises(InputNotFoundError, match="mine/configs/unet_carla.yaml does not exist"):
        load_train_config("mine/configs/unet_carla.yaml", {})       # a path of the user's: never swapped


def test_init_fine_tunes_from_a_checkpoint(carla_dir, tiny_config, tmp_path):
    start = tmp_path / "start.pt"
    model = create_model("unet_tiny")
    save_checkpoint(make_checkpoint(model, "unet_tiny", (48, 64)), start)
    train(carla_dir, tmp_path / "ft", config=tiny_config, epochs=1, init=start)
    assert (tmp_path / "ft" / "best.pt").is_file()
    other = tmp_path / "other.pt"
    save_checkpoint(make_checkpoint(create_model("unet_seed"), "unet_seed", (48, 64)), other)
    with pytest.raises(InvalidInputError, match="use a checkpoint of the same model"):
        train(carla_dir, tmp_path / "bad", config=tiny_config, epochs=1, init=other)
    assert not (tmp_path / "bad" / "split.json").exists()          # refused before the data is read


def test_a_model_of_its_own_classes_carries_their_names_and_colours(carla_dir, tmp_path):
    """num_classes other than CARLA's 23: the checkpoint names (and colours) each class, and every
    command that reads names (training's metrics, eval, the pipeline's legend) has one per class."""
    config = tmp_path / "c30.yaml"
    names = [f"thing {i}" for i in range(30)]
    config.write_text(yaml.safe_dump({"train": {
        "model": "unet_tiny", "model_options": {"num_classes": 30}, "input_size": [48, 64], "epochs": 1,
        "batch_size": 4, "val_every": 4, "augment": False, "class_names": names}}))
    train(carla_dir, tmp_path / "run", config=config)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["class_names"] == names and len(ckpt["palette"]) == 30
    assert set(ckpt["metrics"]["per_class_iou"]) <= set(names[:23])      # CARLA's ids, named as given
    assert set(evaluate_checkpoint(carla_dir, tmp_path / "run" / "best.pt")["per_class_iou"]) <= set(names)
    # a checkpoint from before the names followed the classes (CARLA's 23 for a 30-class model)
    old = dict(ckpt, class_names=ckpt["class_names"][:23], palette=ckpt["palette"][:23])
    save_checkpoint(old, tmp_path / "old.pt")
    again = load_checkpoint(tmp_path / "old.pt")
    assert again["class_names"][22:24] == ["thing 22", "class 23"] and len(again["palette"]) == 30
    carla_named = dict(ckpt, class_names=list(CARLA_CLASSES), palette=ckpt["palette"][:23])
    save_checkpoint(carla_named, tmp_path / "carla_named.pt")     # CARLA's names were the old default
    assert load_checkpoint(tmp_path / "carla_named.pt")["class_names"] == [f"class {i}" for i in range(30)]
    # the run's own settings.yaml is a config that builds the same run
    assert load_train_config(tmp_path / "run" / "settings.yaml", {})["class_names"] == names


def test_frames_of_several_drives_split_by_drive(tmp_path, carla_dir):
    """drive0_000001 ... drive3_000003: the same frame numbers in four drives are four runs, not one."""
    for sub in ("CameraRGB", "CameraMask"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    pairs = find_pairs(carla_dir)
    for i, p in enumerate(pairs):
        drive, number = divmod(i, 3)
        shutil.copy(p.image, tmp_path / "d" / "CameraRGB" / f"drive{drive}_{number + 1:06d}{p.image.suffix}")
        shutil.copy(p.mask, tmp_path / "d" / "CameraMask" / f"drive{drive}_{number + 1:06d}{p.mask.suffix}")
    train_pairs, val_pairs = split_by_runs(find_pairs(tmp_path / "d"), val_every=4)
    assert sorted(p.stem for p in val_pairs) == [f"drive2_{n:06d}" for n in (1, 2, 3)]
    assert len(train_pairs) == 9


def test_training_on_crops(carla_dir, tmp_path):
    config = tmp_path / "crops.yaml"
    config.write_text(yaml.safe_dump({"train": {
        "model": "unet_tiny", "input_size": [64, 96], "crop": [48, 64], "zoom": [0.8, 1.4], "epochs": 1,
        "batch_size": 4, "val_every": 4}}))
    best = train(carla_dir, tmp_path / "run", config=config)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["input_size"] == [64, 96]   # crops only in training
    assert 0 <= best["miou"] <= 1
    config.write_text(yaml.safe_dump({"train": {"model": "unet_tiny", "input_size": [64, 96], "crop": [50, 64]}}))
    with pytest.raises(InvalidInputError, match="50"):
        train(carla_dir, tmp_path / "bad", config=config)


@pytest.mark.parametrize("name", ["unet_carla", "unet_seed", "unet_gpu"])
def test_every_training_config_builds_its_model(name):
    settings = load_train_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml", {})
    model = create_model(settings["model"], **settings["model_options"])
    check_input_size(model.config, *settings["input_size"])
    if settings["crop"]:
        check_input_size(model.config, *settings["crop"])


def test_a_run_from_before_checkpoints_kept_the_split_resumes_only_on_its_split_json(carla_dir, tiny_config, tmp_path):
    out = tmp_path / "run"
    train(carla_dir, out, config=tiny_config, epochs=1)
    state = load_checkpoint(out / "last.pt")
    del state["split"]                                     # as an older segpipe wrote it
    save_checkpoint(state, out / "last.pt")
    split = json.loads((out / "split.json").read_text())
    (out / "split.json").write_text(json.dumps({"train": split["val"], "val": split["train"]}))
    with pytest.raises(InvalidInputError, match="split differently from when .* started"):
        train(carla_dir, out, config=tiny_config, epochs=2, resume=True)
    (out / "split.json").write_text(json.dumps(split))
    assert train(carla_dir, out, config=tiny_config, epochs=2, resume=True)["epoch"] >= 0


def test_rare_class_sampling_draws_frames_that_hold_rare_classes(carla_dir, tiny_config, tmp_path):
    from train.trainer import rare_class_draws

    presence = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 1]], dtype=torch.bool)
    shares = torch.tensor([0.90, 0.06, 0.04], dtype=torch.float64)
    draws = rare_class_draws(presence, shares, 0.05, 2000, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4)
    assert counts[1] == 0 and counts[2] > 0 and counts[3] > 0       # frame 1 holds only the common class
    assert counts[2] + counts[3] > counts[0]                           # the rarest class's frames come most
    config = yaml.safe_load(tiny_config.read_text())
    config["train"].update(rare_class_sampling=0.01, epochs=2)
    tiny_config.write_text(yaml.safe_dump(config))
    train(carla_dir, tmp_path / "run", config=tiny_config)             # trains with it
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2


def test_without_a_terminal_training_logs_its_progress(carla_dir, tiny_config, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("train.trainer.PROGRESS_EVERY_S", 0.0)      # every batch, not every 30 s
    config = yaml.safe_load(tiny_config.read_text())
    config["train"]["epochs"] = 1
    tiny_config.write_text(yaml.safe_dump(config))
    with caplog.at_level("INFO", logger="segpipe.train"):
        train(carla_dir, tmp_path / "run", config=tiny_config, max_frames=12)   # pytest's stderr is no terminal
    lines = [r.getMessage() for r in caplog.records if "batch" in r.getMessage()]
    assert lines and re.fullmatch(r"epoch 0: batch 1/\d+, loss \d+\.\d{3}, \d+\.\d img/s", lines[0]), lines


def test_training_and_eval_leave_out_pixels_labelled_255(carla_dir, tiny_config, tmp_path):
    """Cityscapes-style data: the sky and the top rows of every mask are void (255): trained and scored
    without them."""
    import cv2
    from train.data import read_mask
    data = tmp_path / "void"
    shutil.copytree(carla_dir / "CameraRGB", data / "CameraRGB")
    (data / "CameraMask").mkdir()
    for pair in find_pairs(carla_dir):
        ids = read_mask(pair.mask)
        ids[ids == 13] = 255                                                     # the sky
        ids[:8] = 255
        cv2.imwrite(str(data / "CameraMask" / f"{pair.stem}.png"), ids)          # single-channel ids
    best = train(data, tmp_path / "run", config=tiny_config, epochs=1)
    assert 0 <= best["miou"] <= 1 and best["pixel_accuracy"] > 0
    grid = tmp_path / "grid.png"
    scored = evaluate_checkpoint(data, tmp_path / "run" / "best.pt", grid=str(grid))
    assert "sky" not in scored["per_class_iou"]            # void: not a class present
    assert cv2.imread(str(grid)) is not None
    native = evaluate_checkpoint(data, tmp_path / "run" / "best.pt", native=True)
    assert "sky" not in native["per_class_iou"]
