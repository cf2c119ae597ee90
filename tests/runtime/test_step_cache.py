"""The MagCache step cache: the skip plan against hand-computed cases, no residual across the expert switch, no
caching of short runs, threshold 0 bit-identical to no cache, and the reused residual standing in for the blocks."""

import pytest
import torch

from tests.tiny.checkpoint import write_official_checkpoint
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.cache_curve import Curve
from wanflow.runtime.step_cache import CacheSettings, ExpertCache, MagCache, parse_cache, plan
from wanflow.sampling.hooks import Step
from wanflow.tasks import get_task

KW = dict(size=(64, 64), frames=5)


def steps_of(experts: list[str], guide: float = 4.0) -> list[Step]:
    return [Step(i, len(experts), 999 - i, e, guide) for i, e in enumerate(experts)]


def flat_curve(n: int, cond: float, uncond: float | None = None) -> Curve:
    return Curve(((1.0, 1.0),) + ((cond, cond if uncond is None else uncond),) * (n - 1))


def test_plan_follows_magcache_rule_by_hand():
    steps = steps_of(["dense"] * 10)
    # retention 0.2 of 10 steps: steps 0 and 1 run. Ratio 0.9: one reuse costs |1 - 0.9| = 0.1, two 0.1 + 0.19.
    assert plan(flat_curve(10, 0.9), steps, CacheSettings(0.25, max_skips=2)) == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    # a larger threshold lets two in a row through; K = 2 then forces the third to run
    assert plan(flat_curve(10, 0.9), steps, CacheSettings(0.5, max_skips=2)) == [0, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    assert plan(flat_curve(10, 0.9), steps, CacheSettings(0.5, max_skips=1)) == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_a_batched_cfg_step_is_skipped_only_when_both_branches_would_be():
    steps = steps_of(["dense"] * 10)
    uneven = flat_curve(10, 0.9, 0.7)  # the unconditional branch changes faster: 0.3 > 0.25 at once
    assert plan(uneven, steps, CacheSettings(0.25)) == [False] * 10
    # guidance off: one (conditional) forward per step, so only its ratio counts
    assert plan(uneven, steps_of(["dense"] * 10, guide=1.0), CacheSettings(0.25)) == [0, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_each_expert_is_planned_on_its_own_and_computes_first():
    steps = steps_of(["high"] * 4 + ["low"] * 10)
    skips = plan(flat_curve(14, 1.0), steps, CacheSettings(0.1, max_skips=2))  # no change at all: skip all it may
    # high: step 0 runs (retention int(0.8) -> at least 1), 1-2 reuse, 3 runs (K); low: its first int(2.0) = 2 run
    high, low = skips[:4], skips[4:]
    assert high == [0, 1, 1, 0] and low == [0, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    # the published A14B curve dips to 0.655 at the switch: whatever it says, the first low step runs
    dip = Curve(tuple((1.0, 1.0) if i != 4 else (0.5, 0.5) for i in range(14)))
    assert plan(dip, steps, CacheSettings(10.0))[4] is False


def test_short_runs_and_threshold_zero_never_skip():
    assert plan(flat_curve(4, 1.0), steps_of(["dense"] * 4), CacheSettings(10.0)) == [False] * 4
    assert plan(flat_curve(9, 1.0), steps_of(["dense"] * 9), CacheSettings(10.0)) == [False] * 9  # < 10 steps
    assert plan(flat_curve(20, 1.0), steps_of(["dense"] * 20), CacheSettings(0.0)) == [False] * 20
    assert any(plan(flat_curve(10, 1.0), steps_of(["dense"] * 10), CacheSettings(0.01)))


def test_curve_maps_to_other_step_counts_by_nearest_index():
    curve = Curve(tuple((float(i), float(i) + 0.5) for i in range(1, 41)))  # 40 steps
    # step i of 20 -> round(i * 39 / 19): 0, 2 (2.05), 4 (4.1), ..., 39
    assert [curve.at(i, 20)[0] - 1 for i in (0, 1, 2, 10, 19)] == [0, 2, 4, 21, 39]
    assert curve.at(5, 40) == (6.0, 6.5)


def test_parse_cache_and_the_request_field():
    assert parse_cache(None) is None and parse_cache("none") is None
    assert parse_cache("magcache") == CacheSettings()
    assert parse_cache("magcache:0.3").threshold == 0.3 and str(parse_cache("magcache:0.3")) == "magcache:0.3"
    for bad in ("teacache", "magcache:-1", "magcache:abc", "magcache:nan"):
        with pytest.raises(ValueError, match="magcache"):
            parse_cache(bad)
    task = get_task("t2v-A14B")
    assert resolve(GenerateOptions("x", cache="magcache:0.2"), task).cache == CacheSettings(0.2)
    assert resolve(GenerateOptions("x"), task).cache is None


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return WanPipeline.from_pretrained(write_official_checkpoint(tmp_path_factory.mktemp("t2v"), "t2v-A14B"))


def test_threshold_zero_is_bit_identical_and_a_threshold_skips(t2v):
    plain = t2v("a red circle", seed=3, steps=12, **KW)
    zero = t2v("a red circle", seed=3, steps=12, cache="magcache:0", **KW)
    assert torch.equal(plain.frames, zero.frames) and zero.metadata["cache"] == "magcache:0"
    hook = t2v.step_cache(CacheSettings(1.0))
    cached = t2v("a red circle", seed=3, steps=12, hooks=[hook], **KW)
    assert hook.reused_steps > 0 and not torch.equal(plain.frames, cached.frames)


def test_a_four_step_run_does_not_cache(t2v):
    hook = t2v.step_cache(CacheSettings(10.0))
    plain = t2v("a red circle", seed=3, steps=4, **KW)
    cached = t2v("a red circle", seed=3, steps=4, hooks=[hook], **KW)
    assert hook.skips == [False] * 4 and hook.reused_steps == 0
    assert torch.equal(plain.frames, cached.frames)


class EveryStep(MagCache):
    """A wrong plan on purpose: reuse on every step after the first, the switch included."""

    def begin(self, steps):
        super().begin(steps)
        self.skips = [step.index > 0 for step in steps]
        self.steps = list(steps)


def test_no_residual_crosses_the_expert_switch(t2v):
    hook = MagCache(flat_curve(14, 1.0), CacheSettings(10.0))
    seen = []
    t2v("a red circle", seed=3, steps=14, hooks=[hook], callback=seen.append, **KW)
    expert = [s.expert for s in seen]
    assert set(hook.caches) == {"high", "low"}
    for name, cache in hook.caches.items():
        assert cache.reused, f"the {name} expert reused nothing: the test would prove nothing"
        assert all(expert[step] == expert[made_at] == name for step, made_at in cache.reused)
    # even a plan that asks for reuse right at the switch gets the low expert's own computed step there
    wrong = EveryStep(flat_curve(14, 1.0))
    t2v("a red circle", seed=3, steps=14, hooks=[wrong], **KW)
    first_low = expert.index("low")
    assert wrong.skips[first_low] and wrong.caches["low"].reused, "the wrong plan must ask for reuse at the switch"
    assert all(step != first_low for step, _ in wrong.caches["low"].reused)
    assert first_low + 1 in {step for step, _ in wrong.caches["low"].reused}  # from the switch step's own residual
    assert wrong.caches["high"].slots == []  # the high expert's residuals were freed at the switch
    assert all(expert[made_at] == "low" for _, made_at in wrong.caches["low"].reused)
    assert all(m.block_cache is None for m in t2v.experts.values())  # detached after the run


def test_a_reused_residual_stands_in_for_the_blocks(t2v):
    model = t2v.experts["low"]
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 16, 2, 8, 8, generator=g), torch.randn(2, 8, model.cfg.text_dim, generator=g)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        plain = model(x, t, context)
        cache = ExpertCache("low")
        model.block_cache = cache
        try:
            cache.begin_step(0, skip=False)
            first = model(x, t, context)
            cache.begin_step(1, skip=True)
            reused = model(x, t, context)
            cache.begin_step(2, skip=True, keep=False)
            other = model(x[:1], t[:1], context[:1])  # another batch shape: no residual fits, the blocks run
            cache.begin_step(3, skip=True, keep=False)
            after = model(x[:1], t[:1], context[:1])  # step 2 kept nothing (no step was to reuse it): run again
        finally:
            model.block_cache = None
    assert torch.equal(first, plain)
    torch.testing.assert_close(reused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other, plain[:1], rtol=1e-5, atol=1e-5)
    assert torch.equal(after, other) and cache.runs == 3 and cache.reused == [(1, 0)] and cache.slots == [None]
