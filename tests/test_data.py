"""Training inputs: records, video cache, bad-video skipping, assistant-only loss mask, collator, toy set."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from mllm4d_lite import prompts
from mllm4d_lite.train.collator import IGNORE_INDEX, VideoSFTCollator, assistant_token_mask
from mllm4d_lite.train.loading import load_processor
from mllm4d_lite.train.records import DataError, balanced_subset, load_records, record_prompt
from mllm4d_lite.train.toy_data import write_toy_direction_set
from mllm4d_lite.train.video_inputs import VideoCache, build_messages, check_videos


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_direction_set(tmp_path_factory.mktemp("toy"), num_clips=4, seed=3)


@pytest.fixture(params=["qwen2.5-vl", "qwen3-vl"])
def processor(request, tiny_qwen25, tiny_qwen3):
    return load_processor(str({"qwen2.5-vl": tiny_qwen25, "qwen3-vl": tiny_qwen3}[request.param]))


CHATS = [
    build_messages("Which way?", True, None, "B"),
    build_messages("Which way?\nA: left\nB: right", True, prompts.ST_COT_SYSTEM_PROMPT,
                   "<thinking>Camera Center: [0.00, 0.00, 0.00] Object Center: null</thinking><answer>A</answer>"),
    # two assistant turns: both are trained
    build_messages("first", False, "sys", "one") + build_messages("second", False, None, "two 2.5 m")[-2:],
]


@pytest.mark.parametrize("chat", CHATS)
def test_mask_equals_template_generation_mask(processor, chat):
    """Our id-based mask equals the chat template's {% generation %} mask, token for token."""
    ref = processor.tokenizer.apply_chat_template(chat, chat_template=processor.chat_template, tokenize=True,
                                                  return_dict=True, return_assistant_tokens_mask=True)
    ids, want = ref["input_ids"], ref["assistant_masks"]
    assert sum(want) > 0  # the reference itself works on this transformers
    got = assistant_token_mask(torch.tensor(ids), processor.tokenizer)
    assert got.tolist() == [bool(m) for m in want]


def test_mask_of_truncated_turn_runs_to_the_end(processor):
    tok = processor.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nB: lef", add_special_tokens=False)
    mask = assistant_token_mask(ids, tok)
    n_answer = len(tok.encode("B: lef", add_special_tokens=False))
    assert mask.tolist() == [False] * (len(ids) - n_answer) + [True] * n_answer


def test_collator_labels_are_exactly_the_answers(processor, toy):
    records = load_records(toy)
    records[1] = dict(records[1], response="B: right, it slides to the right")  # longer answer: padding differs
    cache = VideoCache(num_frames=8)
    batch = VideoSFTCollator(processor, cache)(records[:2])
    assert {"input_ids", "attention_mask", "labels", "pixel_values_videos", "video_grid_thw",
            "mm_token_type_ids"} <= set(batch)
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    for row, record in enumerate(records[:2]):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == tok.encode(record["response"], add_special_tokens=False) + [end]
        # left padding: the answer is the last thing in the row and is contiguous
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions[-1] == labels.shape[0] - 1 and (positions.diff() == 1).all()
        assert (batch["input_ids"][row] == video_id).sum() > 0
        assert not ((labels == video_id).any())
    assert (batch["attention_mask"][0] == 0).sum() > 0  # the shorter row really was padded
    assert batch["video_grid_thw"].shape == (2, 3)


def test_records_resolve_videos_and_subset(toy):
    records = load_records(toy)
    assert len(records) == 4
    assert all(r["video_path"].startswith(str(toy.parent.resolve())) for r in records)
    sub_a = load_records(toy, max_samples=2, seed=1)
    sub_b = load_records(toy, max_samples=2, seed=1)
    assert [r["id"] for r in sub_a] == [r["id"] for r in sub_b] and len(sub_a) == 2
    assert record_prompt(records[0]).endswith(prompts.DIRECT_INSTRUCTION)
    no_prompt = {k: v for k, v in records[0].items() if k != "prompt"}
    assert record_prompt(no_prompt) == prompts.direct_prompt(records[0]["question"], records[0]["choices"])


def test_subset_balanced_by_answer(tmp_path):
    # 30 "not moving", 12 "left", 4 "right": a plain 12-record subset is mostly "not moving"
    answers = ["not moving"] * 30 + ["left"] * 12 + ["right"] * 4
    rows = [{"id": f"q{i}", "video": "v.mp4", "answer": a} for i, a in enumerate(answers)]
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(5):
        sub = load_records(path, max_samples=12, seed=seed, balance_key="answer")
        assert sorted(Counter(r["answer"] for r in sub).values()) == [4, 4, 4]
        assert [r["id"] for r in sub] == sorted((r["id"] for r in sub), key=lambda i: int(i[1:]))  # order kept
        assert sub == load_records(path, max_samples=12, seed=seed, balance_key="answer")
    # a label with too few records gives all it has; the others fill the rest evenly
    assert Counter(answers[i] for i in balanced_subset(answers, 20, np.random.default_rng(0))) == \
        {"not moving": 8, "left": 8, "right": 4}
    assert len(set(balanced_subset(answers, 100, np.random.default_rng(0)))) == len(answers)
    plain = [Counter(r["answer"] for r in load_records(path, max_samples=12, seed=s))["not moving"] for s in range(5)]
    assert max(plain) > 4


def test_subset_balanced_by_category_then_answer(tmp_path):
    # absent-object questions each have their own answer text ("no red cube there", ...): balanced by
    # answer alone, 20 of them crowd the 14 direction questions out of a 10-record pool
    rows = ([{"category": "false_positive", "answer": f"no object {i} there"} for i in range(20)]
            + [{"category": "object_direction", "answer": a} for a in ["left"] * 8 + ["right"] * 4 + ["not moving"] * 2])
    rows = [{"id": f"q{i}", "video": "v.mp4", **r} for i, r in enumerate(rows)]
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(5):
        by_answer = load_records(path, max_samples=10, seed=seed, balance_key="answer")
        assert Counter(r["category"] for r in by_answer)["object_direction"] <= 3
        nested = load_records(path, max_samples=10, seed=seed, balance_key=["category", "answer"])
        assert Counter(r["category"] for r in nested) == {"false_positive": 5, "object_direction": 5}
        # within the direction questions, each answer in turn: 2 / 2 / 1
        assert sorted(Counter(r["answer"] for r in nested if r["category"] == "object_direction").values()) == [1, 2, 2]
        assert len({r["id"] for r in nested}) == 10
    # a category with too few records gives all it has
    labels = [("a", "x")] * 2 + [("b", str(i)) for i in range(10)]
    assert Counter(labels[i][0] for i in balanced_subset(labels, 8, np.random.default_rng(0))) == {"a": 2, "b": 6}
    with pytest.raises(ValueError, match="same number of keys"):
        balanced_subset([("a", "x"), ("b",)], 1, np.random.default_rng(0))


def test_records_filtered_by_category(tmp_path):
    rows = [{"id": f"q{i}", "video": "v.mp4", "category": cat}
            for i, cat in enumerate(["counting", "object_direction", "counting", "object_direction_phase"])]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = load_records(path, categories=["object_direction", "object_direction_phase"])
    assert [r["id"] for r in kept] == ["q1", "q3"]
    assert [r["id"] for r in load_records(path, categories=[])] == ["q0", "q1", "q2", "q3"]
    with pytest.raises(DataError, match=r"no record of the categories \['camera_direction'\].*counting"):
        load_records(path, categories=["camera_direction"])


def test_cache_decodes_once_and_blind_keeps_shapes(toy):
    path = load_records(toy)[0]["video_path"]
    cache = VideoCache(num_frames=8)
    first = cache.get(path)
    assert cache.get(path) is first and len(cache) == 1
    frames, meta = first
    assert frames.shape[0] == 8 and frames.dtype == np.uint8 and frames.any()
    blank, blank_meta = VideoCache(num_frames=8, blank=True).get(path)
    assert blank.shape == frames.shape and not blank.any() and blank_meta == meta


def test_bad_videos_are_reported_by_id_and_skipped(toy, tmp_path, caplog):
    records = load_records(toy)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    bad = [dict(records[0], id="rec-missing", video_path=str(tmp_path / "nope.mp4")),
           dict(records[1], id="rec-broken", video_path=str(broken))]
    with caplog.at_level(logging.WARNING, logger="mllm4d_lite.train.video_inputs"):
        kept, skipped = check_videos(records + bad, VideoCache(num_frames=8))
    assert [r["id"] for r in kept] == [r["id"] for r in records]
    assert skipped == ["rec-missing", "rec-broken"]
    text = caplog.text
    assert "rec-missing" in text and "rec-broken" in text and "skipped 2 of 6" in text


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"id": "a", "video": "x.mp4"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"sft.jsonl:2"):
        load_records(path)
    with pytest.raises(DataError, match="not found"):
        load_records(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name, text, message", [
    ("bench.json", '[{"id": "a", "video": "x.mp4"},', r"bench.json: not valid JSON"),
    ("bench.json", '["a", "b"]', r"bench.json: record 1 is a str, not a JSON object"),
    ("rft.jsonl", '{"id": "a", "video": "x.mp4"}\n[1, 2]\n', r"rft.jsonl: record 2 is a list, not a JSON object"),
])
def test_malformed_record_files_name_the_file_and_the_fix(tmp_path, name, text, message):
    """A truncated .json list or a record that is no object is a DataError naming the file (the
    training commands print it as one line), not a traceback from json or dict()."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_records(path)


def test_toy_knobs_travel_size_and_background(tmp_path):
    """The learning benchmark's toy knobs: the square slides `travel` of the width over the given background."""
    from mllm4d_lite.curation.video import read_video

    yy, xx = np.mgrid[0:120, 0:160]
    # a smooth gradient (survives video compression), never as red as the square
    background = np.stack([xx / 2, 60 + yy / 1.2, np.full_like(xx, 100)], axis=-1).astype(np.uint8)
    path = write_toy_direction_set(tmp_path, num_clips=2, seed=5, width=160, height=120, travel=0.25,
                                     square=0.15, backgrounds=[background])
    for record in load_records(path):
        frames, _, _ = read_video(record["video_path"], None)
        assert frames.shape[1:3] == (120, 160)
        red = (frames[..., 0].astype(int) > 180) & (frames[..., 1].astype(int) < 110)
        xs = [np.nonzero(red[t].any(axis=0))[0] for t in (0, -1)]
        ys = np.nonzero(red[0].any(axis=1))[0]
        assert abs(len(ys) - 18) <= 2 and abs(len(xs[0]) - 18) <= 2  # side 0.15 * 120
        shift = xs[1].mean() - xs[0].mean()
        assert abs(abs(shift) - 40) <= 3  # 0.25 * 160 px
        assert (shift > 0) == (record["answer"] == "right")
        away = ~red[0]
        away[max(ys[0] - 4, 0):ys[-1] + 5] = False  # rows clear of the square (and its compression halo)
        assert np.abs(frames[0][away].astype(int) - background[away].astype(int)).mean() < 6
    with pytest.raises(ValueError, match="no room"):
        write_toy_direction_set(tmp_path / "bad", num_clips=1, width=64, height=48, travel=0.9)
