"""vLLM requests for video GRPO (mllm4d_lite/train/vllm_video.py), checked against vLLM's documented
multimodal input format without vLLM (it cannot be installed here): one
``<|vision_start|><|video_pad|><|vision_end|>`` per video in the prompt, the frames the
transformers path gets, processor kwargs that reproduce the kit's processor inputs, and sampling
parameters that follow the GRPO config."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

from mllm4d_lite.train import vllm_video as vv
from mllm4d_lite.train.grpo_config import GRPOConfig, trl_vllm_args
from mllm4d_lite.train.grpo_data import prompt_messages
from mllm4d_lite.train.video_inputs import VideoCache, video_kwargs

RECORD = {"id": "q0", "question": "Which way does the camera move?", "choices": {"A": "left", "B": "right"}}


def _batch(processor, random_video, num_generations=4, num_frames=8):
    """Two distinct prompts x num_generations rows, as TRL's sampler lays them out."""
    cache = VideoCache(num_frames)
    video = cache.get(random_video)
    blank = (np.zeros_like(video[0]), video[1])
    prompts = []
    for frames in (video, blank):
        messages = prompt_messages(RECORD)
        part = next(p for p in messages[-1]["content"] if p["type"] == "video")
        part["video"], part["metadata"] = frames
        prompts += [messages] * num_generations
    texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    videos = [next((q["video"], q["metadata"]) for q in p[-1]["content"] if q["type"] == "video") for p in prompts]
    return texts, videos, video


@pytest.fixture(scope="module")
def processors(tiny_qwen25, tiny_qwen3):
    return {"qwen2.5-vl": AutoProcessor.from_pretrained(tiny_qwen25),
            "qwen3-vl": AutoProcessor.from_pretrained(tiny_qwen3)}


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_requests_follow_vllms_video_input_format(family, processors, random_video):
    processor = processors[family]
    texts, videos, (frames, meta) = _batch(processor, random_video)
    requests = vv.build_requests(processor, texts, videos)
    assert [r.rows for r in requests] == [[0, 1, 2, 3], [4, 5, 6, 7]] and [r.n for r in requests] == [4, 4]
    for req, text in zip(requests, (texts[0], texts[4])):
        inputs = req.colocate_input()
        assert set(inputs) == {"prompt", "multi_modal_data", "mm_processor_kwargs"}
        prompt = inputs["prompt"]
        assert prompt.count(vv.VIDEO_PLACEHOLDER) == 1 and prompt.count("<|video_pad|>") == 1
        assert prompt.count("<|vision_start|>") == 1 and prompt.count("<|vision_end|>") == 1
        assert prompt.replace(vv.VIDEO_PLACEHOLDER, "<|video_pad|>") == text.replace(vv.VIDEO_PLACEHOLDER, "<|video_pad|>")
        video, metadata = inputs["multi_modal_data"]["video"]
        assert video.dtype == np.uint8 and video.ndim == 4 and video.shape == (8, *frames.shape[1:3], 3)
        assert metadata["do_sample_frames"] is False and inputs["mm_processor_kwargs"]["do_sample_frames"] is False
        assert metadata["frames_indices"] == list(meta["frames_indices"]) and metadata["fps"] == meta["fps"]
    # the frames are the very frames the transformers path gets (the seeing and the blanked prompt)
    assert requests[0].frames is videos[0][0] and np.array_equal(requests[0].frames, frames)
    assert not requests[1].frames.any() and requests[0].frames.any()


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_processor_kwargs_reproduce_the_kits_processor_inputs(family, processors, random_video):
    """The HF processor run as vLLM runs it (request frames, metadata, mm_processor_kwargs) gives the
    kit's pixel values, grid, token count and (Qwen2.5-VL) second_per_grid_ts."""
    processor = processors[family]
    texts, videos, _ = _batch(processor, random_video, num_generations=2)
    req = vv.build_requests(processor, texts, videos)[0]
    kit = processor(text=[texts[0]], return_tensors="pt", **video_kwargs(processor, [videos[0]]))
    frames, meta = req.multi_modal_data()["video"]
    kwargs = dict(req.mm_processor_kwargs)
    metadata = [VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"})]
    if family == "qwen3-vl":
        # vLLM replaces the whole start/pad/end sequence with the per-frame expansion; the kit's
        # template has the bare pad, which the HF processor expands the same way
        text = req.prompt.replace(vv.VIDEO_PLACEHOLDER, "<|video_pad|>")
    else:
        text = req.prompt
    sim = processor(text=[text], videos=[frames], video_metadata=metadata, return_tensors="pt", **kwargs)
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        if key in kit:
            assert torch.equal(torch.as_tensor(kit[key]), torch.as_tensor(sim[key])), key
    if family == "qwen2.5-vl":  # 2 frames per temporal patch at the sampled 8/16 x fps
        assert float(sim["second_per_grid_ts"][0]) == pytest.approx(2 / vv.sampled_fps(meta))
    # without the metadata the frame rate would be guessed (24 fps) and the temporal positions differ
    if family == "qwen2.5-vl":
        blind_meta = processor(text=[text], videos=[frames], return_tensors="pt", **kwargs)
        assert not torch.equal(blind_meta["second_per_grid_ts"], kit["second_per_grid_ts"])


def test_sampling_params_follow_the_grpo_config(processors):
    cfg = GRPOConfig(temperature=0.9, top_p=0.95, top_k=20, min_p=0.05, max_completion_length=77, num_generations=4)
    args = SimpleNamespace(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p,
                           max_completion_length=cfg.max_completion_length, repetition_penalty=1.0)
    tok = processors["qwen2.5-vl"].tokenizer
    params = vv.grpo_sampling_kwargs(args, tok)
    assert params["temperature"] == 0.9 and params["top_p"] == 0.95 and params["top_k"] == 20
    assert params["min_p"] == 0.05 and params["max_tokens"] == 77 and params["logprobs"] == 0
    assert tok.convert_tokens_to_ids("<|im_end|>") in params["stop_token_ids"]
    vision = {tok.convert_tokens_to_ids(t) for t in vv.VISION_TOKENS}
    assert set(params["logit_bias"]) == vision and set(params["logit_bias"].values()) == {vv.SUPPRESS_BIAS}
    # defaults: the paper's plain sampling (top_k 0 and min_p 0 are "off" in vLLM too)
    plain = vv.grpo_sampling_kwargs(SimpleNamespace(temperature=1.0, top_p=1.0, top_k=None, min_p=None,
                                                    max_completion_length=96), tok)
    assert plain["top_k"] == 0 and plain["min_p"] == 0.0 and plain["temperature"] == 1.0


def test_trl_arguments_and_config_checks():
    assert trl_vllm_args(GRPOConfig()) == {}
    args = trl_vllm_args(GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_url="http://h:8000"))
    assert args["use_vllm"] and args["vllm_mode"] == "server" and args["vllm_server_base_url"] == "http://h:8000"
    with pytest.raises(ValueError, match="vllm_mode"):
        GRPOConfig(vllm_mode="remote").validate()


def test_expanded_or_missing_placeholders_are_refused():
    with pytest.raises(ValueError, match="2 <\\|video_pad\\|> tokens"):
        vv.placeholder_prompt("<|vision_start|>" + "<|video_pad|>" * 2 + "<|vision_end|>")
    with pytest.raises(ValueError, match="0 <\\|video_pad\\|>"):
        vv.placeholder_prompt("no video here")
    assert vv.placeholder_prompt("a <|video_pad|> b") == f"a {vv.VIDEO_PLACEHOLDER} b"


def test_completions_return_to_their_rows():
    reqs = [vv.VideoRequest("p0", np.zeros((2, 4, 4, 3), np.uint8), {}, "qwen2.5-vl", {}, rows=[0, 2]),
            vv.VideoRequest("p1", np.zeros((2, 4, 4, 3), np.uint8), {}, "qwen2.5-vl", {}, rows=[1, 3])]
    ids, logps = vv._scatter(reqs, [[([1], [-0.1]), ([2], [-0.2])], [([3], [-0.3]), ([4], [-0.4])]])
    assert ids == [[1], [3], [2], [4]] and logps == [[-0.1], [-0.3], [-0.2], [-0.4]]
    with pytest.raises(RuntimeError, match="asked for 2"):
        vv._scatter(reqs, [[([1], None)], [([3], None), ([4], None)]])


def test_server_request_carries_the_frames(processors, random_video):
    processor = processors["qwen2.5-vl"]
    texts, videos, (frames, _) = _batch(processor, random_video, num_generations=2)
    req = vv.build_requests(processor, texts, videos)[0]
    messages = prompt_messages(RECORD)
    params = vv.sampling_kwargs(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=32, stop_token_ids=[5],
                                suppress_token_ids=[7])
    body = vv.server_payload(req, messages, params, model="m")
    assert body["n"] == 2 and body["max_tokens"] == 32 and body["return_token_ids"] and body["logprobs"] is True
    assert body["logit_bias"] == {"7": vv.SUPPRESS_BIAS} and body["mm_processor_kwargs"]["do_sample_frames"] is False
    video_parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
                   if p["type"] == "video_url"]
    assert len(video_parts) == 1
    url = video_parts[0]["video_url"]["url"]
    assert url.startswith("data:video/jpeg;base64,")
    import base64

    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(b), np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB) for b in url.split(",", 1)[1].split(",")]
    assert len(decoded) == len(frames)
    err = np.abs(np.stack(decoded).astype(float) - frames.astype(float)).mean()
    assert err < 4.0, f"JPEG frames differ from the kit's by {err:.2f} grey levels on average"


def test_vllm_is_not_imported_by_request_building():
    assert "vllm" not in sys.modules


def test_gpu_check_dry_run_builds_the_requests(tmp_path, capsys):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("gpu_vllm_check", vv.__file__.replace(
        "mllm4d_lite/train/vllm_video.py", "scripts/gpu_vllm_check.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--dry-run", "--model", "tiny", "--work", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vllm"] == "skipped (dry run)"
    assert [(r["placeholders"], r["frames"][0], r["blank"]) for r in report["requests"]] == [(1, 8, False), (1, 8, True)]
    assert report["sampling"]["max_tokens"] == 16 and "vllm" not in sys.modules
