"""Does vLLM see the video? The GPU check of the kit's vLLM requests (mllm4d_lite/train/vllm_video.py).

    python scripts/gpu_vllm_check.py                      # CUDA + vLLM: random-weight Qwen2.5-VL-3B, 2 layers
    python scripts/gpu_vllm_check.py --shape qwen3-vl-4b  # the Qwen3-VL request form
    python scripts/gpu_vllm_check.py --dry-run --model tiny  # CPU, no vLLM: the request building only

It builds a random-weight model of the real architecture (``mllm4d_lite/train/shapes/``, cut to
``--layers`` decoder layers) and saves it, decodes ``--num-frames`` frames of a clip as GRPO does,
builds the vLLM requests for the same prompt with the real frames and with blanked frames, and
generates greedily with ``vllm.LLM`` (colocate mode). It prints one JSON object:

- ``prompt_tokens``: the kit's processor input length vs vLLM's prompt length (equal when vLLM
  expanded the video placeholder to the same number of video tokens);
- ``seeing`` / ``blanked``: vLLM's greedy completion ids and their summed log-prob; ``differ``:
  whether blanking the frames changed the completion or its log-probs (it must: vLLM sees the video);
- ``transformers_logprob_gap``: max |vLLM log-prob - transformers log-prob| of the seeing
  completion's tokens, the transformers forward fed the kit's own processor inputs (small when
  both see the same video with the same temporal positions);
- ``pass``: the two checks above.

``--dry-run`` stops before vLLM (it is not installed on the CPU machines): it prints the requests'
summary (prompt placeholders, frame shapes, processor kwargs, sampling parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECORD = {"id": "check", "question": "Which way does the camera move?",
          "choices": {"A": "left", "B": "right", "C": "forward", "D": "it does not move"}}


def _requests(processor, video):
    import numpy as np

    from mllm4d_lite.train import vllm_video as vv
    from mllm4d_lite.train.grpo_data import prompt_messages

    blank = (np.zeros_like(video[0]), video[1])
    texts, videos = [], []
    for frames in (video, blank):
        messages = prompt_messages(RECORD)
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        videos.append(frames)
    return texts, videos, vv.build_requests(processor, texts, videos)


def _transformers_logprobs(model_dir: Path, processor, text: str, video, completion: list[int], device: str):
    """Log-probs of ``completion`` given the kit's own processor inputs (the training forward's view)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from mllm4d_lite.train.video_inputs import video_kwargs

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.to(device).eval()
    enc = processor(text=[text], return_tensors="pt", **video_kwargs(processor, [video])).to(device)
    ids = torch.cat([enc["input_ids"], torch.tensor([completion], device=device)], dim=1)
    mask = torch.ones_like(ids)
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    mm = torch.zeros_like(ids)
    mm[:, :enc["input_ids"].size(1)] = enc["mm_token_type_ids"] if "mm_token_type_ids" in enc else 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, **extra).logits.float()
    n = len(completion)
    logp = torch.log_softmax(logits[0, -n - 1:-1], dim=-1)
    return logp.gather(1, torch.tensor(completion, device=device)[:, None])[:, 0].tolist(), int(enc["input_ids"].size(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-vl-3b", help="architecture from mllm4d_lite/train/shapes/")
    ap.add_argument("--model", default="", help="'tiny' / 'tiny-qwen3-vl': the kit's tiny model instead (dry runs)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the random-weight build")
    ap.add_argument("--video", default=str(REPO / "tiny_data" / "synth_s00000" / "left.mp4"))
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--work", default="", help="folder for the built model (default: a temporary one)")
    ap.add_argument("--dry-run", action="store_true", help="build the requests only (no vLLM, CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from transformers import AutoProcessor

    from mllm4d_lite.train.video_inputs import VideoCache

    t0 = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_vllm_check-"))
    if args.model.startswith("tiny"):
        from mllm4d_lite.train.tiny_model import build_tiny_model

        family = "qwen3-vl" if "qwen3" in args.model else "qwen2.5-vl"
        model_dir = build_tiny_model(work / args.model, family=family, seed=0)
    else:
        from mllm4d_lite.train.shapes import build_shape_model

        model_dir = build_shape_model(args.shape, shape_layers=args.layers, out_dir=work / args.shape, seed=0)
    processor = AutoProcessor.from_pretrained(model_dir)
    video = VideoCache(args.num_frames).get(args.video)
    texts, videos, requests = _requests(processor, video)
    from mllm4d_lite.train import vllm_video as vv

    sampling = vv.sampling_kwargs(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=args.max_tokens,
                                  stop_token_ids=[processor.tokenizer.convert_tokens_to_ids("<|im_end|>")])
    report = {"model": str(args.model or args.shape), "layers": args.layers, "video": args.video,
              "requests": [{"placeholders": r.prompt.count(vv.VIDEO_PLACEHOLDER), "frames": list(r.frames.shape),
                            "dtype": str(r.frames.dtype), "blank": not r.frames.any(),
                            "mm_processor_kwargs": r.mm_processor_kwargs, "n": r.n} for r in requests],
              "sampling": sampling}
    if args.dry_run:
        report["vllm"] = "skipped (dry run)"
        report["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report, indent=1, default=str))
        return 0

    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), max_model_len=4096, gpu_memory_utilization=0.4, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"video": 1})
    params = SamplingParams(**{**sampling, "logprobs": 0})
    outs = llm.generate([r.colocate_input() for r in requests], sampling_params=params, use_tqdm=False)
    runs = {}
    for name, out in zip(("seeing", "blanked"), outs):
        c = out.outputs[0]
        lps = [float(step[tok].logprob) for step, tok in zip(c.logprobs, c.token_ids)]
        runs[name] = {"ids": list(c.token_ids), "logprobs": lps, "sum_logprob": sum(lps),
                      "vllm_prompt_tokens": len(out.prompt_token_ids)}
    report.update(runs)
    seeing, blanked = runs["seeing"], runs["blanked"]
    report["differ"] = bool(seeing["ids"] != blanked["ids"] or abs(seeing["sum_logprob"] - blanked["sum_logprob"]) > 1e-3)
    del llm
    torch.cuda.empty_cache()
    tf_lps, kit_tokens = _transformers_logprobs(model_dir, processor, texts[0], videos[0], seeing["ids"], "cuda")
    report["prompt_tokens"] = {"kit": kit_tokens, "vllm": seeing["vllm_prompt_tokens"]}
    report["transformers_logprob_gap"] = max(abs(a - b) for a, b in zip(tf_lps, seeing["logprobs"]))
    report["pass"] = report["differ"] and kit_tokens == seeing["vllm_prompt_tokens"]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1, default=str))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
