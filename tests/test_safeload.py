"""Safe loading (llm/safeload.py): a pickled ``__reduce__`` payload planted in a DeepSpeed shard
file, a DCP ``.metadata`` or a DCP byte item is refused with a message naming the file, and the
payload never runs (its side effect, creating a directory, is checked); what the libraries
legitimately store still loads. The strategies' own resume paths are tested under torchrun in
tests/test_strategies.py::test_planted_payload_is_refused."""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from llm import safeload
from llm.rundir import find_checkpoint, readable


class Payload:
    """Runs ``os.mkdir(marker)`` when unpickled: the test's stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant_dcp_metadata(ckpt: Path, marker: Path) -> None:
    with open(ckpt / ".metadata", "rb") as f:
        md = pickle.load(f)  # the test's own file
    md.planner_data["planted"] = Payload(marker)
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(md, f)


def dcp_checkpoint(path: Path) -> dict:
    """A single-process DCP checkpoint with tensors and the non-tensor items an optimizer holds."""
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6.0).reshape(2, 3), "opt": {"lr": 3e-4, "betas": (0.9, 0.95), "step": 7, "fused": None}}
    dcp.save(state, checkpoint_id=path)
    return state


def test_torch_load_refuses_a_payload_and_names_the_file(tmp_path):
    marker, f = tmp_path / "ran", tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "planted": Payload(marker)}, f)
    with pytest.raises(safeload.UnsafeCheckpointError) as e:
        safeload.torch_load(f)
    msg = str(e.value)
    assert str(f) in msg and "posix.mkdir" in msg and "Nothing in it was run" in msg, msg
    assert not marker.exists()


def test_torch_load_accepts_deepspeed_records(tmp_path):
    """The classes DeepSpeed pickles into its optimizer shards (found by listing the globals of
    real ZeRO 1/2/3/offload checkpoints) load, and their values survive."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    f = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"loss_scaler": LossScaler(2.0), "zero_stage": ZeroStageEnum(3), "map": {"w": fragment_address(numel=4, start=8)}}, f)
    sd = safeload.torch_load(f)
    assert sd["loss_scaler"].cur_scale == 2.0 and sd["zero_stage"] == ZeroStageEnum(3) and sd["map"]["w"].start == 8


def test_dcp_load_round_trip_and_refusals(tmp_path):
    """A clean DCP checkpoint loads through the safe reader and planner with every value equal;
    a payload in its ``.metadata`` or in one of its byte items is refused before it runs, both
    by the loader and by the pre-resume check."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    saved = dcp_checkpoint(ckpt)
    out = {"w": torch.zeros(2, 3), "opt": {"lr": 0.0, "betas": (0.0, 0.0), "step": 0, "fused": True}}
    safeload.dcp_load(out, ckpt)
    assert torch.equal(out["w"], saved["w"]) and out["opt"] == saved["opt"]
    safeload.check_directory(ckpt)

    # a byte item (the learning rate) rewritten to a payload, appended to its shard file
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import MetadataIndex

    bad = tmp_path / "bad-item"
    dcp.save(saved, checkpoint_id=bad)
    with open(bad / ".metadata", "rb") as f:
        md = pickle.load(f)
    idx = MetadataIndex("opt.lr")
    info = md.storage_data[idx]
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    with open(bad / info.relative_path, "ab") as f:
        offset = f.tell()
        f.write(buf.getvalue())
    info.offset, info.length = offset, len(buf.getvalue())
    with open(bad / ".metadata", "wb") as f:
        pickle.dump(md, f)
    with pytest.raises(safeload.UnsafeCheckpointError, match=r"item opt\.lr.*posix\.mkdir"):
        safeload.check_directory(bad)
    with pytest.raises(safeload.UnsafeCheckpointError, match=r"item opt\.lr.*posix\.mkdir"):
        safeload.dcp_load({"w": torch.zeros(2, 3), "opt": {"lr": 0.0, "betas": (0.0, 0.0), "step": 0, "fused": True}}, bad)
    assert not marker.exists()

    plant_dcp_metadata(ckpt, marker)
    for check in (lambda: safeload.check_directory(ckpt), lambda: safeload.dcp_load(out, ckpt)):
        with pytest.raises(safeload.UnsafeCheckpointError, match=r"\.metadata: refused to load: it names posix\.mkdir"):
            check()
    assert not marker.exists()


def test_deepspeed_latest_tag_must_stay_inside(tmp_path):
    """DeepSpeed loads ``<dir>/<tag>/*.pt`` for the tag in ``latest``: a tag that leaves the
    checkpoint directory would load files the check never read."""
    ckpt = tmp_path / "step0000004.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    torch.save({"module": {}}, ckpt / "checkpoint" / "mp_rank_00_model_states.pt")
    (ckpt / "latest").write_text("checkpoint")
    safeload.check_directory(ckpt)
    (tmp_path / "elsewhere").mkdir()
    (ckpt / "latest").write_text("../elsewhere")
    with pytest.raises(safeload.UnsafeCheckpointError, match="names the tag '../elsewhere'"):
        safeload.check_directory(ckpt)


def test_resume_falls_back_past_a_planted_directory_checkpoint(tmp_path, caplog):
    """``ckpt_path=last`` with a payload in the newest directory checkpoint: it is reported and the
    one before used; with every checkpoint planted the run is refused with each reason; an
    explicit ``ckpt_path`` to it is refused; ``weights_only=false`` trusts it (and says so)."""
    marker, ckpts = tmp_path / "ran", tmp_path / "checkpoints"
    dcp_checkpoint(ckpts / "step0000004.ckpt")
    dcp_checkpoint(ckpts / "step0000008.ckpt")
    plant_dcp_metadata(ckpts / "step0000008.ckpt", marker)
    with caplog.at_level(logging.WARNING, logger="llm.rundir"):
        assert find_checkpoint("last", tmp_path) == str(ckpts / "step0000004.ckpt")
    assert "step0000008.ckpt cannot be resumed from (UnsafeCheckpointError" in caplog.text
    with pytest.raises(ValueError, match=r"ckpt_path=.*step0000008.ckpt: cannot be resumed from \(UnsafeCheckpointError"):
        find_checkpoint(str(ckpts / "step0000008.ckpt"), tmp_path)
    plant_dcp_metadata(ckpts / "step0000004.ckpt", marker)
    with pytest.raises(ValueError, match=r"none of the 2 checkpoints.*step0000008.ckpt: Unsafe.*step0000004.ckpt: Unsafe"):
        find_checkpoint("last", tmp_path)
    assert not marker.exists()
    assert readable(ckpts / "step0000008.ckpt", weights_only=False) is None
