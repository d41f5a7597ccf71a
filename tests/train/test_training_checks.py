import json
import math
import re
import shutil

import pytest
import torch
import yaml

from pipeline.cli import main
from train import trainer
from train.checkpoint import load_checkpoint
from train.data import find_pairs, split_by_runs
from train.errors import DatasetError
from train.evaluate import evaluate_checkpoint
from train.model import create_model
from train.trainer import slim_checkpoint, train


def write_config(path, **settings):
    path.write_text(yaml.safe_dump({"train": {"model": "unet_tiny", "input_size": [48, 64], "epochs": 1,
                                              "batch_size": 4, "val_every": 4, **settings}}))
    return path


def test_the_papers_unpadded_unet_trains_on_the_centre_of_its_masks(carla_dir, tmp_path):
    """Valid padding: the logits cover the centre of the input, so the masks are cropped to them."""
    torch.set_num_threads(2)
    assert create_model("unet_paper").output_size(572, 572) == (388, 388)
    model = create_model("unet_paper", base_filters=4)
    assert model.output_size(188, 188) == (4, 4)
    config = write_config(tmp_path / "paper.yaml", model="unet_paper", model_options={"base_filters": 4},
                          input_size=[188, 188], batch_size=2)
    best = train(carla_dir, tmp_path / "run", config=config)
    assert 0 <= best["miou"] <= 1 and 0 <= best["pixel_accuracy"] <= 1
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    result = evaluate_checkpoint(carla_dir, tmp_path / "run" / "best.pt", device="cpu")   # segpipe eval
    assert math.isfinite(result["miou"]) and result["frames"] == 3


@pytest.mark.parametrize("options,match", [
    ({"base_filters": 2.5}, "model option base_filters is 2.5 but must be an integer >= 1, e.g. 32"),
    ({"depth": "3"}, "model option depth is '3' but must be an integer >= 1, e.g. 4"),
    ({"dropout": 1.5}, "model option dropout is 1.5 but must be a number with 0 <= dropout < 1, e.g. 0.3"),
    ({"batch_norm": "yes"}, "model option batch_norm is 'yes' but must be true or false"),
    ({"num_classes": 0}, "model option num_classes is 0 but must be an integer 2..255"),
    ({"num_classes": 256}, r"num_classes is 256 but must be an integer 2..255 \(255 marks pixels to ignore\)"),
    ({"padding": "full"}, "model option padding is 'full' but must be 'same' or 'valid'"),
    ({"filters": 8}, r"unknown model options \['filters'\]: valid are"),
    ({1: 8}, "model_options is {1: 8} but must be a mapping of option names"),
])
def test_bad_model_options_are_one_line(carla_dir, tmp_path, capsys, options, match):
    config = write_config(tmp_path / "c.yaml", model_options=options)
    assert main(["train", "--data", str(carla_dir), "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert re.search(match, err), err
    assert not (tmp_path / "run" / "split.json").exists()               # refused before any work


def renamed(carla_dir, root, name):
    """The fixture frames copied under ``name(number)``."""
    for folder in ("CameraRGB", "CameraMask"):
        (root / folder).mkdir(parents=True)
        for path in (carla_dir / folder).iterdir():
            shutil.copy(path, root / folder / (name(int(path.stem)) + path.suffix))
    return root


def test_frame_numbers_are_the_trailing_digits_of_the_names(carla_dir, tmp_path):
    plain = find_pairs(carla_dir)
    prefixed = find_pairs(renamed(carla_dir, tmp_path / "prefixed", lambda n: f"frame_{n:06d}"))
    assert [p.number for p in prefixed] == [p.number for p in plain]
    assert [p.number for p in split_by_runs(prefixed, 4)[1]] == [6882, 6883, 6884]   # 4 runs, as unprefixed
    unpadded = find_pairs(renamed(carla_dir, tmp_path / "unpadded", lambda n: f"cam{n}"))
    assert [p.number for p in unpadded] == [p.number for p in plain]  # numeric order, not "cam10561" < "cam2106"


def test_names_without_frame_numbers_are_one_line(carla_dir, tmp_path):
    root = renamed(carla_dir, tmp_path / "data", lambda n: f"{n:06d}")
    for folder, ext in (("CameraRGB", ".jpg"), ("CameraMask", ".png")):
        shutil.copy(next((root / folder).iterdir()), root / folder / f"cover{ext}")
    with pytest.raises(DatasetError, match=r"image cover.jpg has no frame number at the end of its name \(1 such\): "
                                           r"names must end in frame numbers \(e.g. 000123.png or frame_000123.png\)"):
        find_pairs(root)


def test_resume_with_dropout_is_bit_exact(carla_dir, tmp_path, monkeypatch):
    """The global RNG (dropout) is in the checkpoint: stopped after epoch 0 and resumed, a run ends with the
    same weights as one that never stopped."""
    torch.set_num_threads(2)
    config = write_config(tmp_path / "c.yaml", model_options={"base_filters": 4, "dropout": 0.3}, epochs=2)
    train(carla_dir, tmp_path / "whole", config=config, device="cpu")

    real_plot = trainer.plot_curves

    def stop_after_epoch_0(history, *args):
        real_plot(history, *args)
        raise KeyboardInterrupt                                        # killed once last.pt is written
    monkeypatch.setattr(trainer, "plot_curves", stop_after_epoch_0)
    with pytest.raises(KeyboardInterrupt):
        train(carla_dir, tmp_path / "stopped", config=config, device="cpu")
    monkeypatch.setattr(trainer, "plot_curves", real_plot)
    last = load_checkpoint(tmp_path / "stopped" / "last.pt")           # loads with weights_only=True
    assert last["epoch"] == 0 and last["rng_state"].dtype == torch.uint8
    train(carla_dir, tmp_path / "stopped", config=config, device="cpu", resume=True)

    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert whole["epoch"] == resumed["epoch"] == 1
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name

    slim_checkpoint(tmp_path / "whole" / "last.pt", tmp_path / "slim" / "last.pt")
    slim = load_checkpoint(tmp_path / "slim" / "last.pt")
    assert not {"optimizer", "scheduler", "rng_state", "cuda_rng_state", "scaler"} & set(slim)
