"""Regional compilation: the block traces as one graph (no breaks) and the compiled model computes what eager does."""

import pytest
import torch
from torch._dynamo.utils import counters

from tests.tiny.checkpoint import write_official_checkpoint
from tests.tiny.dit import TINY_T2V, TINY_TI2V, random_dit
from wanflow.cli import main
from wanflow.models.dit import TokenTimesteps
from wanflow.models.rope import rope_tables
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.runtime.compile import compile_blocks

GRID = (3, 4, 4)  # 48 tokens


def block_inputs(model, per_token: bool):
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, cfg.dim, generator=gen)
    context = model.embed_text(torch.randn(2, 7, cfg.text_dim, generator=gen))
    if per_token:
        index = torch.ones(2, 48, dtype=torch.long)
        index[:, :16] = 0
        t = TokenTimesteps(torch.tensor([[0.0, 900.0], [0.0, 900.0]]), index)
    else:
        t = torch.tensor([900.0, 400.0])
    return x, model.embed_time(t, 48), context, rope_tables(cfg.head_dim, GRID)


@pytest.mark.parametrize("per_token", [False, True], ids=["per-sample", "per-token"])
def test_block_is_one_graph_without_breaks(per_token):
    torch._dynamo.reset()
    model = random_dit(TINY_TI2V, seed=1)
    explained = torch._dynamo.explain(model.blocks[0])(*block_inputs(model, per_token))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("cfg", [TINY_T2V, TINY_TI2V], ids=["t2v", "ti2v"])
def test_compiled_blocks_match_eager_and_share_one_graph(cfg):
    torch._dynamo.reset()
    counters.clear()
    model = random_dit(cfg, seed=2)
    keys = list(model.state_dict())
    gen = torch.Generator().manual_seed(3)
    x, context = torch.randn(2, cfg.in_dim, 3, 8, 8, generator=gen), torch.randn(2, 7, cfg.text_dim, generator=gen)
    if cfg.model_type == "ti2v":
        t = TokenTimesteps(torch.tensor([[0.0, 937.0]]).repeat(2, 1), (torch.arange(48) >= 16).long().expand(2, -1))
    else:
        t = torch.tensor([937, 500])
    with torch.no_grad():
        eager = model(x, t, context)
        compile_blocks(model, backend="aot_eager", fullgraph=True)
        compiled = model(x, t, context)
        again = model(x, t, context)
    assert eager.abs().max() > 0.1
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, compiled)
    assert list(model.state_dict()) == keys  # compiled in place: no _orig_mod. prefix
    assert counters["stats"]["unique_graphs"] == 1  # both blocks run the one traced graph


def test_compile_blocks_needs_a_dit():
    with pytest.raises(ValueError, match="needs a WanDiT"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_pipeline_compiles_the_blocks_of_every_expert_and_the_cli_asks_for_it(tmp_path, monkeypatch):
    ckpt = write_official_checkpoint(tmp_path / "t2v", "t2v-A14B")
    for flag in (True, False):
        pipe = WanPipeline.from_pretrained(ckpt, compile=flag)
        blocks = [block for expert in pipe.experts.values() for block in expert.blocks]
        assert len(blocks) == 4 and all((block._compiled_call_impl is not None) == flag for block in blocks)
    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(WanPipeline, "from_pretrained", fake)
    out = str(tmp_path / "v.mp4")
    assert main(["generate", "a cat", "--ckpt_dir", str(ckpt), "--save_file", out, "--compile"]) == 2
    assert seen["compile"] is True
