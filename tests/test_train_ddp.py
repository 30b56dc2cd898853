"""Two CPU processes (torchrun, gloo) on batch 4 each equal one process on the batch of 8, within 1e-5
(tiled InfoNCE and SigLIP, plain step and GradCache)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchrun import torchrun

HERE = Path(__file__).resolve().parent


def _torchrun(worker: str, out: Path) -> Path:
    """Run ``tests/<worker> <out>`` as 2 gloo processes under torchrun; return ``out`` (written by rank 0)."""
    proc = torchrun([str(HERE / worker), str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow  # ~50 s on 2 cores: 8 torchrun steps
@pytest.mark.timeout(900)  # two training processes; minutes on a busy 2-core machine
def test_two_process_gloo_equals_one_process_double_batch(tmp_path):
    sys.path.insert(0, str(HERE))
    from train_ddp_worker import step_grads

    singles = {loss: step_grads(0, loss)[0] for loss in ("tiled", "siglip")}
    ddp = load_file(str(_torchrun("train_ddp_worker.py", tmp_path / "ddp.safetensors")))
    assert "grad.logit_bias" in singles["siglip"] and "grad.logit_bias" not in singles["tiled"]
    for (loss, chunk), single in ((key, singles[key[0]]) for key in
                                  (("tiled", 0), ("tiled", 3), ("siglip", 0), ("siglip", 3))):
        # plain DDP step and GradCache under DDP, for InfoNCE and SigLIP (whose bias GradCache must carry)
        grads = [k for k in single if k.startswith("grad.")]
        assert len(grads) > 10 and "grad.logit_scale" in grads
        total = torch.cat([single[k].flatten() for k in grads]).norm()
        prefix = f"{loss}.chunk{chunk}"
        torch.testing.assert_close(ddp[f"{prefix}.loss"], single["loss"], rtol=1e-5, atol=0)
        for k in grads:
            err = (ddp[f"{prefix}.{k}"] - single[k]).norm() / torch.maximum(single[k].norm(), 1e-3 * total)
            assert err < 1e-5, f"{prefix} {k}: relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_validation_sharded_over_two_processes_equals_one_process(tmp_path):
    """Each rank encodes a slice of 11 pairs (5 + 6) and scores a share of the retrieval queries, the uniformity
    pairs and the permutations; the gathered metrics equal a single process's."""
    import json

    sys.path.insert(0, str(HERE))
    from val_ddp_worker import metrics

    single, _ = metrics()
    sharded = json.loads(_torchrun("val_ddp_worker.py", tmp_path / "val.json").read_text())
    assert sharded.keys() == single.keys() and single["val_n"] == sharded["val_n"] == 11
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0 < single["val_i2t_R@5"] < 1 and single["val_n_permutations"] == 1000  # nothing degenerate compared
    shares = [json.loads((tmp_path / f"val.json.rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["queries"] for s in shares] == [[[0, 5]], [[5, 11]]]  # each rank ranked its queries only
    pair_rows = [s["pair_rows"] for s in shares]  # image and text uniformity: rows split by pair count (34 + 21)
    assert pair_rows[0] == [[0, 4]] * 2 and pair_rows[1] == [[4, 10]] * 2
    assert [s["permutations"] for s in shares] == [[500], [500]]
