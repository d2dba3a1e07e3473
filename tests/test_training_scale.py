"""Training at SDXL scale: gradient checkpointing, float32 copies of only the trained tensors in a half-precision
model, and data parallelism (N processes train what one process does with N x the batch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from erasekit.concepts import ConceptSet
from erasekit.errors import ConfigError
from erasekit.methods import ESD, DuMo
from erasekit.methods.training import data_parallel
from erasekit.models import ModelAdapter, load_pipeline

FAST = {"steps": 2, "sampling_steps": 4, "lr": 1e-3, "progress": False}
CONCEPTS = ConceptSet.build(["dog"], preserve=["cat"])


def trained(edit) -> dict[str, torch.Tensor]:
    return {**edit.weights, **edit.modules}


@pytest.mark.parametrize("method", [ESD, DuMo])
def test_gradient_checkpointing_recomputes_blocks_without_changing_the_result(tiny_model, method):
    block = tiny_model.unet.up_blocks[-1].resnets[-1]  # its input depends on the trained tensors
    calls = []
    hook = block.register_forward_pre_hook(lambda m, a: calls.append(1))  # recomputation may stop before the end
    plain = method(**FAST).fit(tiny_model, CONCEPTS)
    n_plain, calls[:] = len(calls), []
    checkpointed = method(**FAST, gradient_checkpointing=True).fit(tiny_model, CONCEPTS)
    hook.remove()
    assert len(calls) > n_plain, "the backward pass must run the block again"
    assert not any(getattr(m, "gradient_checkpointing", False) for m in tiny_model.unet.modules())
    a, b = trained(plain), trained(checkpointed)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("method", [ESD, DuMo])
def test_a_bf16_model_trains_float32_copies_of_only_the_trained_tensors(tiny_path, method):
    pipe = load_pipeline(tiny_path, dtype=torch.bfloat16)
    unet = pipe.unet
    float32 = []  # elements of the UNet held in float32 at each UNet call
    hook = unet.register_forward_pre_hook(
        lambda m, a: float32.append(sum(p.numel() for p in m.parameters() if p.dtype == torch.float32))
    )
    edit = method(**FAST).fit(ModelAdapter(pipe), CONCEPTS)
    hook.remove()
    expected = sum(w.numel() for w in edit.weights.values())  # ESD-x's tensors; 0 for DuMo (its network is apart)
    assert max(float32) == expected and all(p.dtype == torch.bfloat16 for p in unet.parameters())
    assert all(t.dtype == torch.float32 for t in edit.modules.values())


def test_a_data_parallel_process_must_hold_its_model_on_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="cuda:1"):
        data_parallel(torch.device("cuda", 0))


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from erasekit.concepts import ConceptSet
from erasekit.methods import ESD
from erasekit.models import ModelAdapter, load_pipeline
edit = ESD(steps=3, sampling_steps=4, lr=1e-3, progress=False, batch_size=1, work_dir=sys.argv[3]).fit(
    ModelAdapter(load_pipeline(sys.argv[1])), ConceptSet.build(["dog"], preserve=["cat"]))
if torch.distributed.get_rank() == 0:
    torch.save({**edit.weights, "losses": torch.tensor(edit.info["training"]["losses"])}, sys.argv[2])
"""


@pytest.mark.slow
def test_two_processes_train_what_one_process_does_with_twice_the_batch(tiny_path, tiny_model, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(SCRIPT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tiny_path), str(tmp_path / "two.pt"), str(tmp_path / "work")]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    two = torch.load(tmp_path / "two.pt")
    checkpoint = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=True)
    assert '"processes": 2' in checkpoint["identity"], "a resumed run must use as many processes"
    one = ESD(steps=3, sampling_steps=4, lr=1e-3, progress=False, batch_size=2).fit(tiny_model, CONCEPTS)
    torch.testing.assert_close(two.pop("losses"), torch.tensor(one.info["training"]["losses"]), rtol=1e-4, atol=0)
    assert set(two) == set(one.weights)
    for name, weight in one.weights.items():  # a different batch moves the weights by ~5e-3; float noise by ~5e-6
        torch.testing.assert_close(two[name], weight, rtol=0, atol=1e-4)
