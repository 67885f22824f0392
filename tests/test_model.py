"""The offline tiny Qwen-VL: build, save, reload, chat template, forward, generate (both families)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mllm4d_lite import model as M


@pytest.fixture(params=["qwen2.5-vl", "qwen3-vl"])
def tiny(request, tiny_qwen25, tiny_qwen3):
    return request.param, {"qwen2.5-vl": tiny_qwen25, "qwen3-vl": tiny_qwen3}[request.param]


def test_roundtrip_forward_generate(tiny, random_video):
    family, path = tiny
    from transformers import AutoModelForImageTextToText, AutoProcessor

    net = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    assert M.family_of(net) == family and M.family_of(proc) == family
    frames, meta = M.load_video_for_model(random_video, num_frames=8)
    assert frames.shape == (8, 120, 160, 3) and meta["frames_indices"][0] == 0 and meta["frames_indices"][-1] == 15

    text = proc.apply_chat_template(M.build_messages("Which way does the red cube move?"), tokenize=False,
                                    add_generation_prompt=True)
    assert text.count("<|video_pad|>") == 1
    assert ("<|vision_start|><|video_pad|>" in text) == (family == "qwen2.5-vl")
    inputs = proc(text=[text], return_tensors="pt", **M.video_kwargs(proc, [(frames, meta)]))
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4  # 8 frames / temporal patch 2
    video_id = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    merge = proc.video_processor.merge_size
    assert int((inputs["input_ids"] == video_id).sum()) == t * h * w // (merge * merge)
    cost = M.count_visual_tokens(proc, frames, meta)
    assert cost["visual_tokens"] == t * h * w // (merge * merge)

    with torch.no_grad():
        logits = net(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    replies = M.generate_answers(net, proc, ["Which way?"], [(frames, meta)], max_new_tokens=8)
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_build_is_deterministic(tmp_path):
    a = M.build_tiny_model(tmp_path / "a", seed=3)
    b = M.build_tiny_model(tmp_path / "b", seed=3)
    c = M.build_tiny_model(tmp_path / "c", seed=4)
    from safetensors.torch import load_file

    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_reload_gives_identical_logits(tiny_qwen25, random_video):
    net1, proc = M.load_model_and_processor(str(tiny_qwen25))
    net2, _ = M.load_model_and_processor(str(tiny_qwen25))
    frames, meta = M.load_video_for_model(random_video, 4)
    text = proc.apply_chat_template(M.build_messages("hi"), tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text], return_tensors="pt", **M.video_kwargs(proc, [(frames, meta)]))
    with torch.no_grad():
        assert torch.equal(net1(**inputs).logits, net2(**inputs).logits)


def test_video_reaches_the_model(tiny_qwen25, random_video):
    """Blanking the frames changes the logits: the video is not silently dropped."""
    net, proc = M.load_model_and_processor(str(tiny_qwen25))
    frames, meta = M.load_video_for_model(random_video, 4)
    blank, _ = M.load_video_for_model(random_video, 4, blank=True)
    assert not blank.any()
    text = proc.apply_chat_template(M.build_messages("hi"), tokenize=False, add_generation_prompt=True)
    outs = []
    for f in (frames, blank):
        inputs = proc(text=[text], return_tensors="pt", **M.video_kwargs(proc, [(f, meta)]))
        with torch.no_grad():
            outs.append(net(**inputs).logits[0, -1])
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_tokenizer_roundtrip_and_specials(tiny_qwen25):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen25)
    for special in M.SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, special
    text = "<thinking>Camera Center: [0.12, -1.50, 3.00]</thinking><answer>B</answer> élan"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_gpu_only_settings_give_clear_errors():
    if M.cuda_available():
        pytest.skip("CUDA present: GPU-only settings are allowed here")
    with pytest.raises(M.ModelSetupError, match="use_unsloth: true.*needs a CUDA GPU.*recipes/tiny"):
        M.check_gpu_only_settings("cpu", use_unsloth=True)
    with pytest.raises(M.ModelSetupError, match="use_vllm"):
        M.check_gpu_only_settings("cpu", use_vllm=True)
    with pytest.raises(M.ModelSetupError, match="device: cuda"):
        M.pick_device("cuda")


def test_4bit_on_cpu_warns(tiny_qwen25):
    pytest.importorskip("bitsandbytes")
    with pytest.warns(UserWarning, match="slow"):
        net, _ = M.load_model_and_processor(str(tiny_qwen25), quant="4bit", device="cpu")
    assert any("4bit" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in net.modules())


def test_missing_adapter_is_clear(tiny_qwen25, tmp_path):
    with pytest.raises(M.ModelSetupError, match="adapter_config.json"):
        M.load_model_and_processor(str(tiny_qwen25), adapter=str(tmp_path))
