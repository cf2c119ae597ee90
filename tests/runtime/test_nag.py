"""Normalized attention guidance (``runtime.nag``): the closed form of its blend; a tiny checkpoint's runs against
diffusers' own ``WanPipeline`` whose cross-attention runs the NAG authors' Wan processor (their
``NAGWanAttnProcessor2_0``, restated here for diffusers' attention modules: checked once against theirs, below), at
guidance 1 (the few-step case NAG is for) and with classifier-free guidance beside it, both experts; the hook leaves
the model as it found it; the request's refusals; the CLI's and the server's fields."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import WanPipeline as DiffusersWanPipeline

from tests.pipelines.test_parity import ReferenceUniPC, compare
from tests.tiny.checkpoint import write_both_layouts
from wanflow.cli import main
from wanflow.io.clip import read_frames
from wanflow.io.video import to_uint8
from wanflow.models.attention import attention
from wanflow.pipelines.pipeline import WanPipeline
from wanflow.pipelines.request import GenerateOptions, resolve
from wanflow.runtime.nag import Nag, NagSettings, guide
from wanflow.server.schemas import GenerateRequest
from wanflow.tasks import TASKS

PROMPT = "a red circle moving right"
AVOID = "blue, static, blurry"


class AuthorsNag:
    """The NAG authors' cross-attention for Wan on a diffusers ``WanAttention`` (text keys only: Wan 2.2's tasks
    have no image keys): a context of twice the batch is the prompt's states then the negative's; the two attention
    outputs (heads flattened) are extrapolated, their per-token L1 norm ratio capped at tau, and blended with alpha.
    A context of the batch attends plainly (the unconditional pass of CFG). Checked against the authors' processor
    on diffusers 0.42.1's tiny transformer once (2026-12-07): the same outputs, bit for bit."""

    def __init__(self, scale: float, tau: float, alpha: float):
        self.scale, self.tau, self.alpha = scale, tau, alpha

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        heads = lambda x: x.unflatten(2, (attn.heads, -1)).transpose(1, 2)  # noqa: E731
        q = heads(attn.norm_q(attn.to_q(hidden_states)))
        k = heads(attn.norm_k(attn.to_k(encoder_hidden_states)))
        v = heads(attn.to_v(encoder_hidden_states))
        attend = lambda k, v: F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # noqa: E731
        if k.shape[0] == q.shape[0]:
            out = attend(k, v)
        else:
            (k_pos, k_neg), (v_pos, v_neg) = k.chunk(2), v.chunk(2)
            pos, neg = attend(k_pos, v_pos), attend(k_neg, v_neg)
            out = pos * self.scale - neg * (self.scale - 1)
            norm_pos = pos.norm(p=1, dim=-1, keepdim=True).expand_as(out)
            norm_out = out.norm(p=1, dim=-1, keepdim=True).expand_as(out)
            over = torch.nan_to_num(norm_out / norm_pos, 10) > self.tau
            out[over] = out[over] / (norm_out[over] + 1e-7) * norm_pos[over] * self.tau
            out = out * self.alpha + pos * (1 - self.alpha)
        return attn.to_out[1](attn.to_out[0](out))


def with_nag(pipe, settings: NagSettings, prompt_embeds: torch.Tensor, nag_embeds: torch.Tensor) -> None:
    """diffusers' pipeline run as the authors' NAG pipeline: every cross-attention is ``AuthorsNag``, and the pass
    that reads the prompt's states reads the negative ones beside them (the authors' pipeline concatenates them)."""

    def append_negative(module, args, kwargs):
        if torch.equal(kwargs["encoder_hidden_states"], prompt_embeds):
            kwargs["encoder_hidden_states"] = torch.cat([prompt_embeds, nag_embeds])
        return args, kwargs

    for transformer in filter(None, (pipe.transformer, pipe.transformer_2)):
        procs = {
            name: AuthorsNag(settings.scale, settings.tau, settings.alpha) if "attn2" in name else proc
            for name, proc in transformer.attn_processors.items()
        }
        transformer.set_attn_processor(procs)
        transformer.register_forward_pre_hook(append_negative, with_kwargs=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {task: write_both_layouts(tmp_path_factory.mktemp(task), task, seed=31) for task in ("t2v-A14B", "ti2v-5B")}


def test_the_blend_in_closed_form():
    settings = NagSettings(3.0, tau=2.5, alpha=0.25)
    pos = torch.tensor([[1.0, -1.0, 2.0, 0.0], [1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.9, -0.9, 1.8, 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    out = guide(pos, neg, settings)
    # row 0: 3 pos - 2 neg = (3, -5, 4, -2), L1 14 > 2.5 * |pos| = 10: scaled to L1 10, then 1/4 of it + 3/4 of pos
    capped = torch.tensor([3.0, -5.0, 4.0, -2.0]) * 10 / (14 + 1e-7)
    assert torch.allclose(out[0], 0.25 * capped.double() + 0.75 * pos[0], atol=1e-12)
    # row 1: the extrapolation is 1.2 pos (ratio 1.2 <= 2.5, kept): 0.25 * 1.2 + 0.75 = 1.05 times pos
    assert torch.allclose(out[1], 1.05 * pos[1], atol=1e-12)
    assert torch.equal(out[2], torch.zeros(4, dtype=torch.float64))  # a zero token stays zero (no NaN)


# guidance 1: the one pass NAG is for; 4: CFG beside NAG (the unconditional pass plain)
@pytest.mark.parametrize(("task", "scale"), [("t2v-A14B", 1.0), ("t2v-A14B", 4.0), ("ti2v-5B", 1.0)])
def test_runs_as_diffusers_with_the_authors_nag(checkpoints, task, scale):
    settings = NagSettings(4.0, tau=2.0, alpha=0.3, negative_prompt=AVOID)
    ours = WanPipeline.from_pretrained(checkpoints[task] / "official")
    theirs = DiffusersWanPipeline.from_pretrained(checkpoints[task] / "diffusers")
    theirs.scheduler = ReferenceUniPC.from_config(theirs.scheduler.config, flow_shift=TASKS[task].shift)
    theirs.set_progress_bar_config(disable=True)
    negative = TASKS[task].negative_prompt
    with torch.no_grad():
        prompt_embeds, negative_embeds = theirs.encode_prompt(PROMPT, negative, max_sequence_length=512)
        nag_embeds = theirs.encode_prompt(AVOID, do_classifier_free_guidance=False, max_sequence_length=512)[0]
    with_nag(theirs, settings, prompt_embeds, nag_embeds)
    s = ours.vae.cfg.stride[1]
    noise = ours.noise((ours.vae.cfg.z_dim, 3, 64 // s, 64 // s), seed=5)
    steps = []  # t2v at shift 12: 6 steps on the high-noise expert, 2 on the low-noise one
    video = ours(
        PROMPT, size=(64, 64), frames=9, steps=8, latents=noise, guide_scale=scale, nag_scale=4.0, nag_tau=2.0,
        nag_alpha=0.3, nag_negative_prompt=AVOID, callback=steps.append,
    )  # fmt: skip
    with torch.no_grad():
        out = theirs(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, height=64, width=64, num_frames=9,
            num_inference_steps=8, latents=noise.clone(), output_type="pt", guidance_scale=scale,
        ).frames  # fmt: skip
    compare(video, out)
    assert {s.expert for s in steps} == ({"high", "low"} if TASKS[task].boundary else {"dense"})
    plain = ours(PROMPT, size=(64, 64), frames=9, steps=8, latents=noise, guide_scale=scale)
    assert (plain.frames - video.frames).abs().max() > 0.01  # NAG moved the video (100 times the tolerance)
    assert video.metadata["nag"] == {"scale": 4.0, "tau": 2.0, "alpha": 0.3, "negative_prompt": AVOID}


def test_scale_one_is_the_plain_run_and_the_model_is_left_as_found():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    call = dict(steps=6, seed=2, guide_scale=1.0)
    plain = pipe(PROMPT, **call).frames
    assert torch.equal(pipe(PROMPT, nag_scale=1.0, nag_tau=9.0, **call).frames, plain)  # 1: off (the authors' too)
    guided = pipe(PROMPT, nag_scale=5.0, nag_negative_prompt="red", **call).frames
    assert (guided - plain).abs().max() > 0.05
    modules = [b.cross_attn for expert in pipe.experts.values() for b in expert.blocks]
    assert all("attend" not in m.__dict__ and m.attend is attention for m in modules)  # the hook put theirs back
    with pytest.raises(RuntimeError, match="stop here"):  # ... also when a run fails part way

        def stop(step):
            if step.index == 2:
                raise RuntimeError("stop here")

        pipe(PROMPT, nag_scale=5.0, callback=stop, **call)
    assert all("attend" not in m.__dict__ for m in modules)
    assert torch.equal(pipe(PROMPT, **call).frames, plain)


def test_the_negative_prompt_is_encoded_once_when_nag_reads_it_too(monkeypatch):
    pipe = WanPipeline.from_builtin("t2v-A14B")
    texts = []
    encode = pipe.text_encoder.encode
    monkeypatch.setattr(pipe.text_encoder, "encode", lambda batch: texts.append(batch[0]) or encode(batch))
    pipe(PROMPT, steps=2, seed=1, guide_scale=3.0, nag_scale=2.0, negative_prompt="green")
    assert texts == [PROMPT, "green"]  # NAG's default negative is the run's
    texts.clear()
    pipe(PROMPT, steps=2, seed=1, guide_scale=1.0, nag_scale=2.0, negative_prompt="green", nag_negative_prompt="blue")
    assert texts == [PROMPT, "blue"]  # guidance 1: only NAG reads a negative
    texts.clear()
    pipe(PROMPT, steps=2, seed=1, guide_scale=3.0, nag_scale=2.0, negative_prompt="green", nag_negative_prompt="blue")
    assert texts == [PROMPT, "green", "blue"]
    texts.clear()
    pipe(PROMPT, steps=2, seed=1, guide_scale=1.0, nag_scale=2.0, negative_prompt="green")
    assert texts == [PROMPT, "green"]  # guidance 1: the negative prompt is read by NAG alone


def test_given_negative_states_are_nag_negative_by_default():
    """diffusers' ``negative_prompt_embeds`` are the run's negative prompt: NAG reads them unless it is given its own
    text (as the authors' pipeline takes the CFG negative embeds)."""
    pipe = WanPipeline.from_builtin("t2v-A14B")
    states = pipe.encode_prompt("green", do_classifier_free_guidance=False)[0]
    call = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(2), output_type="pt", nag_scale=3.0)
    for scale in (1.0, 3.0):
        by_text = pipe(prompt=PROMPT, negative_prompt="green", guidance_scale=scale, **call).frames
        call["generator"] = torch.Generator().manual_seed(2)
        by_states = pipe(prompt=PROMPT, negative_prompt_embeds=states, guidance_scale=scale, **call).frames
        call["generator"] = torch.Generator().manual_seed(2)
        assert torch.allclose(by_text, by_states, atol=1e-6)
        other = pipe(prompt=PROMPT, negative_prompt="blue", guidance_scale=scale, **call).frames
        call["generator"] = torch.Generator().manual_seed(2)
        assert (other - by_text).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(nag_tau=3.0), r"\['nag_tau'\] set NAG's details: nag_scale above 1 turns it on"),
        (dict(nag_scale=0.5), "nag_scale above 1 turns NAG on"),
        (dict(nag_scale=3.0, nag_alpha=1.5), r"nag_alpha is a blend weight in \[0, 1\]"),
        (dict(nag_scale=3.0, nag_tau=0.0), "nag_tau is a norm ratio above 0"),
        (dict(nag_scale=float("inf")), "NAG's numbers must be finite"),
        (dict(nag_scale="4"), "nag_scale must be a number"),
        (dict(nag_scale=3.0, nag_negative_prompt=7), "nag_negative_prompt must be a string"),
    ],
)
def test_refusals(options, message):
    with pytest.raises(ValueError, match=message):
        resolve(GenerateOptions(PROMPT, **options), TASKS["t2v-A14B"])


def test_defaults_and_the_diffusers_shaped_call():
    request = resolve(GenerateOptions(PROMPT, nag_scale=4.0, negative_prompt="dim"), TASKS["t2v-A14B"])
    assert request.nag == NagSettings(4.0, 2.5, 0.25, None)  # the authors' defaults; the run's negative prompt
    assert request.metadata()["nag"]["negative_prompt"] == "dim"
    pipe = WanPipeline.from_builtin("t2v-A14B")
    out = pipe(prompt=PROMPT, num_inference_steps=2, nag_scale=4.0, output_type="np")  # the authors' pipeline's call
    assert out.frames[0].shape == (9, 64, 64, 3)  # diffusers' output, not a wanflow Video


def test_cli_flags_give_the_python_frames(tmp_path):
    call = dict(steps=4, seed=6, guide_scale=1.0, nag_scale=3.0, nag_tau=2.0, nag_alpha=0.5, nag_negative_prompt="red")
    ours = WanPipeline.from_builtin("t2v-A14B")(PROMPT, **call).frames
    flags = ["--nag_scale", "3", "--nag_tau", "2", "--nag_alpha", "0.5", "--nag_negative_prompt", "red"]
    sampler = ["--sample_steps", "4", "--base_seed", "6", "--sample_guide_scale", "1"]
    assert main(["generate", PROMPT, *flags, *sampler, "--save_file", str(tmp_path / "out") + "/"]) == 0
    frames = np.stack([np.asarray(f) for f in read_frames(tmp_path / "out")])
    assert np.array_equal(frames, to_uint8(ours))


def test_server_fields_reach_the_options():
    fields = dict(prompt=PROMPT, nag_scale=4, nag_tau=3, nag_alpha=0.5, nag_negative_prompt="red")
    options = GenerateRequest(**fields).options()
    assert (options.nag_scale, options.nag_tau, options.nag_alpha, options.nag_negative_prompt) == (4, 3, 0.5, "red")
    with pytest.raises(ValueError, match="nag_alpha"):
        GenerateRequest(prompt=PROMPT, nag_scale=4, nag_alpha=2)


def test_hook_sets_each_expert_once_per_run():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    hook = Nag(NagSettings(2.0))
    model = pipe.experts["high"]
    hook.before(None, model)
    hook.before(None, model)  # a second step of the same expert: nothing more to put back
    assert len(hook._set) == len(model.blocks)
    hook.end()
    assert all("attend" not in b.cross_attn.__dict__ for b in model.blocks)


def test_a_step_cache_at_threshold_zero_leaves_a_nag_run_bit_for_bit():
    pipe = WanPipeline.from_builtin("t2v-A14B")
    call = dict(steps=12, seed=4, guide_scale=1.0, nag_scale=3.0)
    assert torch.equal(pipe(PROMPT, cache="magcache:0", **call).frames, pipe(PROMPT, **call).frames)
    assert pipe(PROMPT, cache="magcache", **call).metadata["nag"]["scale"] == 3.0  # (and runs with a skipping cache)
