"""logger=mlflow and logger=wandb against their local backends: a tiny run logs the DRLoc metrics
and the hyper-parameters, read back through the tracker's own API / record format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import TINY, compose_cfg

from vt_drloc.app.train import train


def test_mlflow_logs_drloc_metrics_and_hparams_to_a_local_store(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    cfg = compose_cfg([*TINY, "logger=mlflow"], out)
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{out}/mlflow.db"  # local by default
    train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.task_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    metrics, params = run.data.metrics, run.data.params
    assert metrics["train/drloc_epoch"] > 0 and "train/ce_epoch" in metrics and "test/acc1" in metrics
    assert (
        float(params["lambda_drloc"]) == 1.0
        and params["drloc/num_pairs"] == "8"
        and params["drloc/schedule"] == "warmup_decay"
    )
    assert int(params["train_size"]) == 40
    assert (out / "csv").is_dir()  # the CSV log the sweep reports read is still written


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a 7-byte ``:W&B`` header,
    then LevelDB-log framing (32 KiB blocks; 7-byte chunk headers: crc, length, type). Read by hand
    because wandb 0.31 ships no Python reader for these files (its ``DataStore`` moved into the Go
    core); the records themselves are parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, chunks, out = path.read_bytes(), 7, 32768, [], []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if length == 0 and kind == 0:
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            chunks = [payload]
        elif kind in (3, 4):
            chunks.append(payload)
            if kind == 4:
                out.append(b"".join(chunks))
    records = []
    for raw in out:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def test_wandb_logs_offline_under_the_run_folder(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # recorded, so the "dryrun" WandbLogger sets is undone after the test
    monkeypatch.delenv("WANDB_MODE")  # the config alone must make the run offline
    out = tmp_path / "run"
    cfg = compose_cfg([*TINY, "logger=wandb"], out)
    assert cfg.logger.wandb.offline is True
    train(cfg)
    # W&B's service writes the run file in its own process; teardown waits for that process to exit,
    # so the file is closed before it is read. (One CI run found no train/drloc_epoch row without it,
    # which 31 runs here, alone or under load, did not reproduce; if it recurs, the message below
    # lists every record the file held.)
    wandb.teardown()
    (run_file,) = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    records = wandb_records(run_file)
    history: dict[str, float] = {}
    config: dict[str, str] = {}
    rows = []  # the keys of each history row, for the failure message
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            rows.append(sorted(k for k in row if not k.startswith("_")))
            history.update(row)
        elif kind == "config":
            config.update({i.key: i.value_json for i in record.config.update})
    record_types = [r.WhichOneof("record_type") for r in records]
    seen = f"{run_file.stat().st_size} bytes, records {record_types}, history rows {rows}"
    assert "train/drloc_epoch" in history and "test/acc1" in history, seen
    assert history["train/drloc_epoch"] > 0
    assert json.loads(config["lambda_drloc"]) == 1.0 and json.loads(config["drloc"])["num_pairs"] == 8
    assert any(r.WhichOneof("record_type") == "exit" for r in records), seen  # the run was finished


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_tracker_configs_keep_the_csv_log(name):
    cfg = compose_cfg([*TINY, f"logger={name}"])
    assert set(cfg.logger) == {"tensorboard", "csv", name}
