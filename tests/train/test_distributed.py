import json
import subprocess
import sys

import yaml

from train.checkpoint import REQUIRED_KEYS, load_model


def test_two_process_gloo_ddp_trains_and_writes_the_same_checkpoint_format(carla_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"train": {
        "model": "unet_tiny", "input_size": [48, 64], "epochs": 2, "batch_size": 2, "val_every": 4,
        "augment": False}}))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "pipeline.cli", "train", "--data", str(carla_dir), "--config", str(config), "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # only rank 0 logs: one line per epoch, not two
    assert proc.stdout.count("epoch 1:") == 1
    settings = yaml.safe_load((out / "settings.yaml").read_text())
    assert settings["world_size"] == 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1]
    # 9 training frames over 2 ranks at 2 per batch: each rank sees 5 (the sampler pads), 3 steps per epoch
    model, ckpt = load_model(out / "last.pt")
    assert all(k in ckpt for k in REQUIRED_KEYS)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # saved unwrapped
    assert ckpt["model"] == "unet_tiny" and ckpt["input_size"] == [48, 64]
