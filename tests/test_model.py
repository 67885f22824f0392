"""The offline tiny Qwen-VL: build, save, reload, chat template, forward, generate (both families)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mllm4d_lite.train.families import SPECIAL_TOKENS, ModelSetupError, family_of
from mllm4d_lite.train.loading import (check_gpu_only_settings, cuda_available, load_model_and_processor, pick_device,
                                       warn_if_adapter_base_differs)
from mllm4d_lite.train.tiny_model import TINY_BUILD_VERSION, build_tiny_model, tiny_model_dir
from mllm4d_lite.train.video_inputs import (build_messages, count_visual_tokens, generate_answers, load_video_for_model,
                                            video_kwargs)


@pytest.fixture(params=["qwen2.5-vl", "qwen3-vl"])
def tiny(request, tiny_qwen25, tiny_qwen3):
    return request.param, {"qwen2.5-vl": tiny_qwen25, "qwen3-vl": tiny_qwen3}[request.param]


def test_roundtrip_forward_generate(tiny, random_video):
    family, path = tiny
    from transformers import AutoModelForImageTextToText, AutoProcessor

    net = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    assert family_of(net) == family and family_of(proc) == family
    frames, meta = load_video_for_model(random_video, num_frames=8)
    assert frames.shape == (8, 120, 160, 3) and meta["frames_indices"][0] == 0 and meta["frames_indices"][-1] == 15

    text = proc.apply_chat_template(build_messages("Which way does the red cube move?"), tokenize=False,
                                    add_generation_prompt=True)
    assert text.count("<|video_pad|>") == 1
    assert ("<|vision_start|><|video_pad|>" in text) == (family == "qwen2.5-vl")
    inputs = proc(text=[text], return_tensors="pt", **video_kwargs(proc, [(frames, meta)]))
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 4  # 8 frames / temporal patch 2
    video_id = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    merge = proc.video_processor.merge_size
    assert int((inputs["input_ids"] == video_id).sum()) == t * h * w // (merge * merge)
    cost = count_visual_tokens(proc, frames, meta)
    assert cost["visual_tokens"] == t * h * w // (merge * merge)

    with torch.no_grad():
        logits = net(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    replies = generate_answers(net, proc, ["Which way?"], [(frames, meta)], max_new_tokens=8)
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_build_is_deterministic(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    from safetensors.torch import load_file

    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_build_leaves_the_callers_random_state_alone(tmp_path):
    """A run that builds the cached tiny model on first use draws the same LoRA initialisation as a
    run that finds it built (before, the first demo of a fresh clone trained other SFT weights, and
    which of the two SFT runs started side by side built the model was a race)."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    tiny_model_dir("qwen2.5-vl", root=tmp_path, vision="motion")
    assert torch.equal(torch.rand(4), expected)


def test_motion_vision_tower(tmp_path, tiny_qwen25):
    """vision='motion': only the patch embedding and the vision blocks' output projections differ
    from the random build, and the tower's tokens answer to change between frames, not to a
    static picture."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    with pytest.raises(ModelSetupError, match="qwen2.5-vl only"):
        build_tiny_model(tmp_path / "q3", family="qwen3-vl", vision="motion")
    with pytest.raises(ModelSetupError, match="unknown tiny vision"):
        build_tiny_model(tmp_path / "x", vision="flow")
    path = tiny_model_dir("qwen2.5-vl", root=tmp_path, vision="motion")  # what model: tiny-motion loads
    assert path.name == f"qwen2.5-vl-seed0-{TINY_BUILD_VERSION}-motion"
    assert "vision tower motion" in (path / "TINY_MODEL.txt").read_text()
    w_rand, w_mot = load_file(tiny_qwen25 / "model.safetensors"), load_file(path / "model.safetensors")
    changed = {k for k in w_rand if not torch.equal(w_rand[k], w_mot[k])}
    assert changed == {"visual.patch_embed.proj.weight"} | {f"visual.blocks.{i}.{n}.weight" for i in range(2)
                                                            for n in ("attn.proj", "mlp.down_proj")}
    filt = w_mot["visual.patch_embed.proj.weight"].flatten(1)
    gram = filt @ filt.T  # orthogonal DCT filters: 32 on the frame difference (norm 3), 32 on the sum (0.1)
    assert torch.allclose(gram, torch.diag(torch.diag(gram)), atol=1e-5)
    assert sorted(torch.diag(gram).sqrt().tolist()) == pytest.approx([0.1] * 32 + [3.0] * 32, rel=1e-5)

    net = AutoModelForImageTextToText.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    rng = np.random.default_rng(0)
    background = rng.integers(60, 140, (112, 112, 3), dtype=np.uint8)
    static = np.repeat(background[None], 8, axis=0)
    moving = static.copy()
    for t in range(8):  # a bright square moving 2 px per frame
        moving[t, 10:40, 6 + 2 * t:36 + 2 * t] = (250, 40, 40)
    meta = {"fps": 8.0, "frames_indices": list(range(8)), "total_num_frames": 8, "duration": 1.0}
    w = net.model.visual.patch_embed.proj.weight
    is_diff = (w[:, :, 0] * w[:, :, 1]).sum(dim=(1, 2, 3)) < 0  # filters on frame 2 - frame 1

    def embed(frames):
        enc = proc(text=["<|vision_start|><|video_pad|><|vision_end|>"], return_tensors="pt",
                   **video_kwargs(proc, [(frames, meta)]))
        with torch.no_grad():
            return net.model.visual.patch_embed(enc["pixel_values_videos"])

    still, move = embed(static), embed(moving)
    assert int(is_diff.sum()) == 32
    assert still[:, is_diff].abs().max() < 1e-4 and still[:, ~is_diff].abs().max() > 0.1
    energy = move[:, is_diff].norm(dim=1)  # per 14x14 patch: large only where the square's edges pass
    assert (energy > 1.0).sum() > 0 and (energy > 1.0).float().mean() < 0.25
    crossed = energy > 1.0
    assert (move[crossed][:, is_diff].norm(dim=1) > move[crossed][:, ~is_diff].norm(dim=1)).all()


def test_reload_gives_identical_logits(tiny_qwen25, random_video):
    net1, proc = load_model_and_processor(str(tiny_qwen25))
    net2, _ = load_model_and_processor(str(tiny_qwen25))
    frames, meta = load_video_for_model(random_video, 4)
    text = proc.apply_chat_template(build_messages("hi"), tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text], return_tensors="pt", **video_kwargs(proc, [(frames, meta)]))
    with torch.no_grad():
        assert torch.equal(net1(**inputs).logits, net2(**inputs).logits)


def test_video_reaches_the_model(tiny_qwen25, random_video):
    """Blanking the frames changes the logits: the video is not silently dropped."""
    net, proc = load_model_and_processor(str(tiny_qwen25))
    frames, meta = load_video_for_model(random_video, 4)
    blank, _ = load_video_for_model(random_video, 4, blank=True)
    assert not blank.any()
    text = proc.apply_chat_template(build_messages("hi"), tokenize=False, add_generation_prompt=True)
    outs = []
    for f in (frames, blank):
        inputs = proc(text=[text], return_tensors="pt", **video_kwargs(proc, [(f, meta)]))
        with torch.no_grad():
            outs.append(net(**inputs).logits[0, -1])
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_tokenizer_roundtrip_and_specials(tiny_qwen25):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen25)
    for special in SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, special
    text = "<thinking>Camera Center: [0.12, -1.50, 3.00]</thinking><answer>B</answer> élan"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_gpu_only_settings_give_clear_errors():
    if cuda_available():
        pytest.skip("CUDA present: GPU-only settings are allowed here")
    with pytest.raises(ModelSetupError, match="use_unsloth: true.*needs a CUDA GPU.*recipes/tiny"):
        check_gpu_only_settings("cpu", use_unsloth=True)
    with pytest.raises(ModelSetupError, match="use_vllm"):
        check_gpu_only_settings("cpu", use_vllm=True)
    with pytest.raises(ModelSetupError, match="device: cuda"):
        pick_device("cuda")


def test_4bit_on_cpu_warns(tiny_qwen25):
    pytest.importorskip("bitsandbytes")
    with pytest.warns(UserWarning, match="slow"):
        net, _ = load_model_and_processor(str(tiny_qwen25), quant="4bit", device="cpu")
    assert any("4bit" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in net.modules())


def test_missing_adapter_is_clear(tiny_qwen25, tmp_path):
    with pytest.raises(ModelSetupError, match="adapter_config.json"):
        load_model_and_processor(str(tiny_qwen25), adapter=str(tmp_path))


def test_two_processes_building_the_same_tiny_model_both_succeed(tmp_path):
    """The demo trains SFT and the blind control side by side from a fresh checkout: both
    processes build the cached tiny model at once, and neither may break the other's build."""
    import subprocess
    import sys

    code = ("import sys; from mllm4d_lite.train.tiny_model import tiny_model_dir; "
            "print(tiny_model_dir('qwen2.5-vl', root=sys.argv[1], vision='motion'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-2000:]
    folders = {stdout.strip() for stdout, _ in results}
    assert len(folders) == 1
    built = Path(folders.pop())
    assert (built / "config.json").is_file() and (built / "TINY_MODEL.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary folder left behind


def test_an_adapter_for_another_base_is_named_in_a_warning(tmp_path, caplog):
    """Loading an adapter onto a model it was not trained on warns, naming both (the tiny builds
    share LoRA shapes, so peft itself would load it without a word)."""
    import json

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    motion = tiny_model_dir("qwen2.5-vl", vision="motion")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(motion)}))
    with caplog.at_level("WARNING", logger="mllm4d_lite.train.loading"):
        assert warn_if_adapter_base_differs(adapter, "tiny-motion") is None
        assert warn_if_adapter_base_differs(adapter, str(motion)) is None
        message = warn_if_adapter_base_differs(adapter, "tiny")
    assert message and f"was trained on {motion} but the model is tiny" in message
    assert message in caplog.text
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct"}))
    assert warn_if_adapter_base_differs(adapter, "Qwen/Qwen2.5-VL-3B-Instruct") is None
    assert "Qwen/Qwen3-VL-4B-Instruct" in warn_if_adapter_base_differs(adapter, "Qwen/Qwen3-VL-4B-Instruct")
