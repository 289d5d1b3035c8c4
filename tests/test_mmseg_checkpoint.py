"""load_mmengine_checkpoint: mmengine's own checkpoints load with weights_only=True; malicious pickles don't."""

from __future__ import annotations

import builtins
import os
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from tips_eval.errors import CheckpointError, CheckpointNotFoundError

pytestmark = pytest.mark.mmseg


@pytest.fixture(scope="module", autouse=True)
def mmseg():
    pytest.importorskip("mmengine", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    pytest.importorskip("mmseg", reason="needs the optional [mmseg] extra: pip install -e '.[mmseg]'")
    from tips_eval.mmseg import import_mmseg

    return import_mmseg()


def _toy_runner_checkpoint(work_dir) -> tuple[str, object]:
    """Train a toy model for 4 iterations with mmengine's Runner; its CheckpointHook writes iter_4.pth."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, inputs, labels=None, mode="tensor"):
            out = self.lin(inputs).squeeze(-1)  # default_collate stacks the batch
            return {"loss": ((out - labels) ** 2).mean()} if mode == "loss" else out

    class Points(Dataset):
        metainfo: ClassVar[dict] = dict(classes=("a", "b"), palette=[[0, 0, 0], [255, 255, 255]])

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(inputs=torch.tensor([i / 8, 1.0]), labels=torch.tensor(i / 4))

    runner = Runner(
        model=Toy(), work_dir=str(work_dir), experiment_name="toy",
        train_dataloader=dict(dataset=Points(), batch_size=2, sampler=dict(type="DefaultSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-2)),
        param_scheduler=dict(type="PolyLR", by_epoch=False, begin=0, end=4, eta_min=0.0),
        train_cfg=dict(by_epoch=False, max_iters=4, val_interval=100),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=4, by_epoch=False),
                           logger=dict(type="LoggerHook", interval=1)),
        randomness=dict(seed=0), default_scope="mmseg", log_level="WARNING",
    )
    runner.train()
    path = os.path.join(str(work_dir), "iter_4.pth")
    assert os.path.isfile(path)
    return path, runner


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory):
    return _toy_runner_checkpoint(tmp_path_factory.mktemp("toy_runner"))


def test_plain_weights_only_load_refuses_mmengine_checkpoints(runner_checkpoint):
    """The problem being solved: torch's default loading fails on mmengine's own files."""
    path, _ = runner_checkpoint
    with pytest.raises(Exception, match="HistoryBuffer|Weights only load failed"):
        torch.load(path, weights_only=True)


def test_load_runner_checkpoint(runner_checkpoint):
    from mmengine.logging import HistoryBuffer

    from tips_eval.mmseg import load_mmengine_checkpoint

    path, runner = runner_checkpoint
    ckpt = load_mmengine_checkpoint(path)
    assert set(ckpt) >= {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    assert ckpt["meta"]["iter"] == 4 and ckpt["meta"]["dataset_meta"]["classes"] == ("a", "b")
    for k, v in runner.model.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][k], v.cpu(), rtol=0, atol=0)
    scalars = ckpt["message_hub"]["log_scalars"]
    assert isinstance(scalars["train/loss"], HistoryBuffer)
    live = runner.message_hub.log_scalars["train/loss"]
    np.testing.assert_array_equal(scalars["train/loss"].data[0], live.data[0])
    assert scalars["train/loss"].mean() == pytest.approx(live.mean())  # statistics methods resolved
    assert ckpt["optimizer"]["state"]  # AdamW moments came through


def test_no_global_allow_list_leaks(runner_checkpoint):
    from tips_eval.mmseg import load_mmengine_checkpoint

    path, _ = runner_checkpoint
    load_mmengine_checkpoint(path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)


def test_mmengine_load_checkpoint_inside_safe_globals(runner_checkpoint):
    """mmengine's own loader (plain torch.load) works inside mmengine_safe_globals(), and only there."""
    from mmengine.runner import load_checkpoint

    from tips_eval.mmseg import mmengine_safe_globals

    path, runner = runner_checkpoint
    model = type(runner.model)()
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(model, path, map_location="cpu", logger="silent")
    with mmengine_safe_globals():
        ckpt = load_checkpoint(model, path, map_location="cpu", logger="silent")
    assert ckpt["meta"]["iter"] == 4
    torch.testing.assert_close(model.lin.weight, runner.model.lin.weight.cpu())


def test_save_checkpoint_with_numpy_meta(tmp_path):
    """mmengine.runner.save_checkpoint with Runner-like meta holding numpy arrays and scalars of several dtypes."""
    from mmengine.logging import MessageHub
    from mmengine.runner import save_checkpoint

    from tips_eval.mmseg import load_mmengine_checkpoint

    hub = MessageHub.get_instance("tips_eval_test_hub")
    for i in range(3):
        hub.update_scalar("val/mIoU", np.float32(40.0 + i))
    hub.update_info("iter", np.int64(3))
    meta = dict(epoch=1, iter=3, seed=np.int64(7), scores=np.arange(4, dtype=np.uint8),
                best=np.float64(0.5), ratio=np.float16(0.25), flags=np.array([True, False]),
                cfg="model = dict(type='EncoderDecoder')")
    path = str(tmp_path / "ckpt.pth")
    save_checkpoint({"meta": meta, "state_dict": {"w": torch.ones(2)}, "message_hub": hub.state_dict()}, path)
    ckpt = load_mmengine_checkpoint(path)
    assert ckpt["meta"]["seed"] == 7 and ckpt["meta"]["seed"].dtype == np.int64
    assert ckpt["meta"]["scores"].dtype == np.uint8 and ckpt["meta"]["ratio"].dtype == np.float16
    assert ckpt["meta"]["flags"].tolist() == [True, False]
    assert ckpt["message_hub"]["log_scalars"]["val/mIoU"].current() == pytest.approx(42.0)
    assert ckpt["message_hub"]["runtime_info"]["iter"] == 3


class _RunsCode:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("func, args, named", [
    (os.system, ("touch {marker}",), "system"),
    (builtins.eval, ("open({marker!r}, 'w').close()",), "eval"),
    (builtins.exec, ("open({marker!r}, 'w').close()",), "exec"),
])
def test_malicious_pickle_refused(tmp_path, func, args, named):
    from tips_eval.mmseg import load_mmengine_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {}, "state_dict": _RunsCode(func, tuple(a.format(marker=str(marker)) for a in args))}, path)
    with pytest.raises(CheckpointError, match=f"evil.pth: refused to unpickle .*{named}"):
        load_mmengine_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("owner, attr", [("HistoryBuffer", "__init__"), ("HistoryBuffer", "update"),
                                         ("ndarray", "tofile")])
def test_getattr_is_restricted_to_history_statistics(tmp_path, owner, attr):
    """builtins.getattr is allowed only as HistoryBuffer.<min|max|current|mean>."""
    from mmengine.logging import HistoryBuffer

    from tips_eval.mmseg import load_mmengine_checkpoint

    obj = {"HistoryBuffer": HistoryBuffer, "ndarray": np.ndarray}[owner]
    path = tmp_path / "sneaky.pth"
    torch.save({"message_hub": {"m": _RunsCode(getattr, (obj, attr))}}, path)
    with pytest.raises(CheckpointError, match=f"getattr\\({owner},'{attr}'\\)"):
        load_mmengine_checkpoint(path)


def test_missing_and_corrupt_files(tmp_path):
    from tips_eval.mmseg import load_mmengine_checkpoint

    with pytest.raises(CheckpointNotFoundError, match="nope.pth does not exist"):
        load_mmengine_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pth is not a readable torch checkpoint"):
        load_mmengine_checkpoint(bad)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth holds a list"):
        load_mmengine_checkpoint(tmp_path / "list.pth")
