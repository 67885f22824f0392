"""The memory planner's arithmetic: predicted peak GPU memory of an SFT / cold-start / GRPO step.

Every figure is a PREDICTION (bytes, reported in GB = 2^30 bytes) built from exact counts
(:mod:`mllm4d_lite.train.plan_model`) and what the installed stack does (docs/memory.md gives each
rule and where in transformers / peft / TRL / bitsandbytes it comes from):

- base weights: quantised Linear weights in NF4 (or int8) with their quantisation state; every
  other parameter in the compute dtype, or fp32 where peft's ``prepare_model_for_kbit_training``
  ran (the kit's SFT path through transformers + peft with 4/8-bit: embeddings, norms, biases
  and the whole vision tower become fp32, and so does the residual stream);
- LoRA: bf16 in 4/8-bit runs (TRL casts trainable parameters to bf16), fp32 otherwise (peft
  upcasts adapters); gradients and AdamW's two moments in the parameter's dtype (torch keeps
  ``exp_avg``/``exp_avg_sq`` like the parameter); GRPO with ``beta`` > 0 and ``adapter_init``: a
  frozen fp32 copy of the adapter (TRL's ``ref`` adapter);
- activations of the LLM per token and layer (tensors autograd saves: fp32 RMSNorm inputs,
  LoRA inputs and dropout masks, q/k/v/out and log-sum-exp of SDPA, SwiGLU's three I-wide
  tensors), with gradient checkpointing only each layer's input plus one recomputed layer;
  the frozen vision tower's transient working set; TRL 1.16's fused LM head, which never builds
  the (tokens x vocab) logits but works in (4096 x 32768) tiles;
- GRPO: the generation batch's KV cache, prefill and vision pass, then the training micro-batch.

:func:`predict` returns a :class:`Prediction`; ``mllm4d plan`` (:mod:`mllm4d_lite.train.plan`) builds
the :class:`Setup` from a recipe and prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mllm4d_lite.train.plan_model import LoraSpec, ModelShape, int8_bytes, nf4_bytes, video_grid, video_text_tokens

GB = 2 ** 30
CUDA_CONTEXT_GB = 0.6  # CUDA context + cuBLAS workspaces, outside torch's allocator (assumption)
ALLOCATOR_RESERVE = 0.10  # reserved-but-unallocated share of the allocated peak (assumption)
LM_HEAD_TILE = (4096, 32768)  # TRL 1.16 fused LM head: TOKEN_CHUNK_SIZE x _CHUNKED_LOGPROB_CHUNK_SIZE
TEXT_TOKENS = {"direct": (80, 4), "st-cot": (230, 350)}  # (prompt text, answer) tokens: assumptions
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Setup:
    """What one training step holds, as the planner reads it from a stage config."""

    stage: str  # sft | grpo
    label: str  # SFT | cold start | GRPO
    model: str
    shape: ModelShape
    quant: str  # none | 4bit | 8bit
    act_bytes: int  # compute dtype: 2 (bf16/fp16) or 4 (fp32)
    loader: str  # peft | unsloth
    lora: LoraSpec
    frames: int
    max_pixels: int | None
    min_pixels: int | None
    source_hw: tuple[int, int] | None
    batch: int  # per_device_train_batch_size (GRPO: completions per micro-batch)
    prompt_text_tokens: int
    answer_tokens: int  # SFT: answer tokens; GRPO: max_completion_length
    gradient_checkpointing: bool
    num_generations: int = 0
    generation_batch: int = 0  # GRPO: completions generated at once
    ref_adapter: bool = False  # GRPO: beta > 0 with adapter_init -> a frozen copy of the adapter
    lora_fp32: bool = True  # the stages' lora_fp32: the kit casts TRL's bf16 LoRA back to fp32
    notes: list[str] = field(default_factory=list)

    @property
    def kbit_prep(self) -> bool:
        """peft's prepare_model_for_kbit_training runs: SFT through transformers + peft on a
        quantised model (mllm4d_lite.train.lora.attach_lora); GRPO's loading does not call it."""
        return self.stage == "sft" and self.loader == "peft" and self.quant != "none"


@dataclass
class Prediction:
    """A predicted memory budget: ``components`` (GB per component, per phase), ``phases``
    (GB allocated at each phase's peak), the peak and whether it fits ``gpu_gb``."""

    setup: Setup
    tokens: dict[str, int]
    components: dict[str, dict[str, float]]  # phase -> component -> GB
    phases: dict[str, float]
    peak_phase: str
    peak_allocated_gb: float
    peak_gb: float  # allocated + allocator reserve + CUDA context
    gpu_gb: float

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_gb

    def to_json(self) -> dict[str, Any]:
        s = self.setup
        return {
            "prediction": True, "units": "GB = 2^30 bytes", "stage": s.stage, "label": s.label, "model": s.model,
            "quant": s.quant, "loader": s.loader, "compute_dtype_bytes": s.act_bytes,
            "kbit_prep_fp32": s.kbit_prep, "gradient_checkpointing": s.gradient_checkpointing,
            "frames": s.frames, "max_pixels": s.max_pixels, "min_pixels": s.min_pixels,
            "batch": s.batch, "num_generations": s.num_generations, "generation_batch": s.generation_batch,
            "tokens": self.tokens,
            "params": {**s.shape.groups, "total": s.shape.total},
            "lora": {"r": s.lora.r, "dropout": s.lora.dropout, "modules": len(s.lora.modules),
                     "params": s.lora.params, "source": s.lora.source, "ref_adapter": s.ref_adapter},
            "components_gb": self.components, "phases_gb": self.phases, "peak_phase": self.peak_phase,
            "peak_allocated_gb": round(self.peak_allocated_gb, 3),
            "cuda_context_gb": CUDA_CONTEXT_GB, "allocator_reserve": ALLOCATOR_RESERVE,
            "peak_gb": round(self.peak_gb, 3), "gpu_gb": self.gpu_gb, "fits": self.fits, "notes": s.notes,
        }


# -- weights ----------------------------------------------------------------------------------------
def weight_bytes(shape: ModelShape, quant: str, act_bytes: int, kbit_prep: bool) -> dict[str, int]:
    """Bytes of the base model's parameters by component (see the module docstring)."""
    other = 4 if kbit_prep else act_bytes
    g = shape.groups
    if quant == "4bit":
        linear = sum(nf4_bytes(n) for n in shape.linear_sizes)
    elif quant == "8bit":  # rows ~ sqrt(n): the per-row scales are a negligible term
        linear = sum(int8_bytes(n, int(n ** 0.5)) for n in shape.linear_sizes)
    else:
        linear = g["linear"] * act_bytes
    kind = {"4bit": "NF4", "8bit": "int8"}.get(quant, "unquantised")
    return {f"LLM decoder Linear weights ({kind})": linear, "LLM norms + biases": g["llm_other"] * other,
            "embeddings" + (" (= tied lm_head)" if shape.tied else ""): g["embeddings"] * other,
            "lm_head": g["lm_head"] * other, "vision tower + mergers": g["vision"] * other}


def lora_bytes(s: Setup) -> dict[str, int]:
    """LoRA weights, AdamW moments (in the LoRA dtype) and GRPO's frozen fp32 reference copy."""
    n = s.lora.params
    out = {"LoRA weights": n * lora_dtype_bytes(s), "AdamW moments (2 per LoRA param)": 2 * n * lora_dtype_bytes(s)}
    if s.ref_adapter:
        out["reference adapter (frozen fp32 copy)"] = n * 4
    return out


def lora_dtype_bytes(s: Setup) -> int:
    """fp32 (peft's upcast; in 4/8-bit runs the kit's ``lora_fp32`` undoes TRL's bf16 cast), bf16
    in a 4/8-bit run with ``lora_fp32: false`` (TRL casts trainable parameters to bf16)."""
    return 2 if s.quant != "none" and not s.lora_fp32 else 4


# -- activations -------------------------------------------------------------------------------------
def _layer_lora(s: Setup) -> dict[str, int]:
    """LoRA'd projections of one decoder layer -> their input width."""
    h, q, i = s.shape.hidden, s.shape.heads * s.shape.head_dim, s.shape.intermediate
    width = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": i}
    layer0 = [m for m in s.lora.modules if re.search(r"language_model\.layers\.0\.", m)]
    return {p: width[p] for p in PROJECTIONS if any(m.endswith("." + p) for m in layer0)}


def residual_bytes(s: Setup) -> int:
    """The residual stream's dtype: fp32 after peft's k-bit preparation (fp32 embeddings and
    norms), else the compute dtype."""
    return 4 if s.kbit_prep or s.act_bytes == 4 else s.act_bytes


def layer_saved_per_token(s: Setup) -> int:
    """Bytes autograd keeps per token for one decoder layer in training (no checkpointing)."""
    sh, a, r = s.shape, s.act_bytes, s.lora.r
    h, q, kv, i = sh.hidden, sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim, sh.intermediate
    saved = 2 * 4 * h  # two RMSNorms keep their fp32 input
    if sh.qk_norm:
        saved += 4 * (q + kv)
    saved += a * (q + 2 * kv) + a * q + 4 * sh.heads  # SDPA: q, k, v (after RoPE), output, log-sum-exp
    saved += 3 * a * i  # SwiGLU: gate, silu(gate), up
    lora = _layer_lora(s)
    if s.lora.dropout > 0:  # each LoRA'd projection keeps its own dropped-out input and the mask
        saved += sum(w * (a + 1) for w in lora.values())
    else:  # projections sharing an input keep it once
        saved += a * sum({("attn" if p in ("q_proj", "k_proj", "v_proj") else "mlp" if p in ("gate_proj", "up_proj")
                            else p): w for p, w in lora.items()}.values())
    saved += len(lora) * r * a  # LoRA A's output, kept for B
    return saved


def layer_backward_work_per_token(s: Setup) -> int:
    """Gradient tensors alive while one layer runs backward, per token."""
    sh, a = s.shape, s.act_bytes
    q, kv = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim
    return 2 * residual_bytes(s) * sh.hidden + 3 * a * sh.intermediate + 2 * a * (q + 2 * kv)


def layer_forward_transient_per_token(s: Setup) -> int:
    """Tensors alive inside one layer's forward without autograd (prefill, scoring), per token."""
    sh, a = s.shape, s.act_bytes
    q, kv = sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim
    return 3 * residual_bytes(s) * sh.hidden + a * (2 * q + 2 * kv) + 3 * a * sh.intermediate


def pixel_bytes(s: Setup, clips: int, grid: dict[str, int]) -> int:
    """The processor's fp32 ``pixel_values_videos`` of ``clips`` clips (patches x C*2*p*p)."""
    sh = s.shape
    return clips * grid["patches"] * sh.in_channels * sh.temporal_patch * sh.patch ** 2 * 4


def vision_transient(s: Setup, clips: int, grid: dict[str, int]) -> int:
    """One block of the frozen vision tower at work on ``clips`` clips (no autograd: nothing before
    the merger trains): the pixels in the tower's dtype, the residual stream, attention and MLP."""
    sh, a = s.shape, s.act_bytes
    patches = clips * grid["patches"]
    tower = 4 if s.kbit_prep or a == 4 else a
    mlp = (3 if sh.vis_gated_mlp else 2) * sh.vis_intermediate
    return patches * (sh.in_channels * sh.temporal_patch * sh.patch ** 2 * tower
                      + 3 * tower * sh.vis_hidden + a * (3 * sh.vis_hidden + mlp))


def vision_kept(s: Setup, clips: int, grid: dict[str, int], train: bool) -> int:
    """The vision tower's outputs (visual features + deepstack features), and in training what the
    merger's LoRA keeps per merged token: each LoRA'd Linear's (dropped-out) input and A's output,
    and the GELU's input after a LoRA'd first merger Linear."""
    sh, a = s.shape, s.act_bytes
    tokens = clips * grid["tokens"]
    out = tokens * sh.hidden * a * (1 + sh.deepstack)
    if train:
        extra = 1 if s.lora.dropout > 0 else 0
        for module, (width_in, width_out) in s.lora.widths.items():
            if ".visual." in module or module.startswith("visual."):
                out += tokens * (width_in * (a + extra) + s.lora.r * a)
                if module.endswith(("fc1", "mlp.0")):
                    out += tokens * width_out * a
    return out


def lm_head_bytes(s: Setup, loss_tokens: int, train: bool) -> int:
    """TRL 1.16's fused LM head over ``loss_tokens`` positions: the gathered hidden states, one
    logits tile, a compute-dtype copy of a vocabulary chunk of the head when the head is stored
    otherwise (fp32 after k-bit preparation), and in backward the fp32 hidden-state gradient."""
    sh, a = s.shape, s.act_bytes
    rows, cols = LM_HEAD_TILE
    out = loss_tokens * sh.hidden * a + min(loss_tokens, rows) * cols * a
    if s.kbit_prep and a != 4:
        out += cols * sh.hidden * a
    if train:
        out += loss_tokens * sh.hidden * (4 + a)
    return out


def kv_bytes_per_token(s: Setup) -> int:
    sh = s.shape
    return 2 * sh.layers * sh.kv_heads * sh.head_dim * s.act_bytes


def _dequant(s: Setup) -> int:
    """bitsandbytes dequantises a 4-bit weight to the compute dtype for each matmul."""
    return s.shape.largest_linear * s.act_bytes if s.quant != "none" else 0


# -- phases: what is held, and the transients of which only the largest is alive at once ---------
TRANSIENT = "~ "  # prefix of a transient row


def train_phase(s: Setup, rows: int, seq: int, loss_tokens: int, grid: dict[str, int]) -> dict[str, int]:
    """One training micro-batch of ``rows`` x ``seq`` tokens (forward + backward)."""
    sh = s.shape
    tokens = rows * seq
    rs = residual_bytes(s)
    saved = layer_saved_per_token(s)
    out = {"LoRA gradients": s.lora.params * lora_dtype_bytes(s)}
    if s.gradient_checkpointing:
        kept_layers = 2 if s.loader == "unsloth" else sh.layers  # Unsloth offloads layer inputs to CPU
        out["checkpointed layer inputs"] = kept_layers * tokens * sh.hidden * rs
        layer = tokens * (saved + layer_backward_work_per_token(s))
        out[TRANSIENT + "one layer recomputed + its backward"] = layer + _dequant(s)
    else:
        out["saved activations (all layers)"] = sh.layers * tokens * saved
        out[TRANSIENT + "one layer's backward"] = tokens * layer_backward_work_per_token(s) + _dequant(s)
    out["embeddings, RoPE, final norm, attention mask"] = (
        tokens * (2 * rs * sh.hidden + 4 * sh.hidden + 2 * sh.head_dim * s.act_bytes + 24)
        + (rows * seq * seq if rows > 1 else 0))
    out["video pixels + visual features (+ merger LoRA inputs)"] = (pixel_bytes(s, rows, grid)
                                                                   + vision_kept(s, rows, grid, train=True))
    out[TRANSIENT + "LM head backward (fused, chunked)"] = lm_head_bytes(s, loss_tokens, train=True)
    out[TRANSIENT + "vision tower forward (frozen)"] = vision_transient(s, rows, grid)
    return out


def grpo_phases(s: Setup, prompt: int, seq: int, grid: dict[str, int]) -> dict[str, dict[str, int]]:
    """Generation (prefill, decoding) of the generation batch, and the reference model's scoring."""
    sh, g = s.shape, s.generation_batch
    kv = kv_bytes_per_token(s)
    return {
        "generation: prefill": {
            "KV cache (prompts)": g * prompt * kv,
            "video pixels + visual features": pixel_bytes(s, g, grid) + vision_kept(s, g, grid, train=False),
            "embeddings": g * prompt * 2 * residual_bytes(s) * sh.hidden,
            TRANSIENT + "one layer's forward": g * prompt * layer_forward_transient_per_token(s) + _dequant(s),
            TRANSIENT + "vision tower forward": vision_transient(s, g, grid)},
        "generation: decoding": {
            "KV cache (prompts + completions)": g * seq * kv,
            "video pixels": pixel_bytes(s, g, grid),
            TRANSIENT + "cache growth (one layer copied) + sampling": g * seq * kv // sh.layers + 3 * g * sh.vocab * 4
            + _dequant(s)},
        "scoring (reference log-probs)": {
            "video pixels + visual features": pixel_bytes(s, s.batch, grid) + vision_kept(s, s.batch, grid, False),
            "embeddings": s.batch * seq * 2 * residual_bytes(s) * sh.hidden,
            TRANSIENT + "one layer's forward": s.batch * seq * layer_forward_transient_per_token(s) + _dequant(s),
            TRANSIENT + "LM head (fused)": lm_head_bytes(s, s.batch * s.answer_tokens, train=False),
            TRANSIENT + "vision tower forward": vision_transient(s, s.batch, grid)},
    }


def phase_total(rows: dict[str, int]) -> int:
    """Held rows add up; of the transient rows only the largest is alive at once."""
    held = sum(v for k, v in rows.items() if not k.startswith(TRANSIENT))
    return held + max((v for k, v in rows.items() if k.startswith(TRANSIENT)), default=0)


def predict(s: Setup, gpu_gb: float = 24.0) -> Prediction:
    """Predict the step's memory (see the module docstring)."""
    sh = s.shape
    grid = video_grid(sh, s.frames, s.max_pixels, s.min_pixels, s.source_hw)
    prompt = grid["tokens"] + video_text_tokens(sh, grid["grid_t"]) + s.prompt_text_tokens
    seq = prompt + s.answer_tokens
    tokens = {"visual_per_clip": grid["tokens"], "patches_per_clip": grid["patches"],
              "frame_height": grid["height"], "frame_width": grid["width"], "prompt": prompt,
              "prompt_text": s.prompt_text_tokens, "answer_or_completion": s.answer_tokens, "sequence": seq,
              "micro_batch_tokens": s.batch * seq}
    persistent = weight_bytes(sh, s.quant, s.act_bytes, s.kbit_prep)
    persistent.update(lora_bytes(s))
    phases = {"train": train_phase(s, s.batch, seq, s.batch * s.answer_tokens, grid)}
    if s.stage == "grpo":
        phases.update(grpo_phases(s, prompt, seq, grid))
    base = sum(persistent.values())
    totals = {name: (base + phase_total(rows)) / GB for name, rows in phases.items()}
    peak_phase = max(totals, key=totals.get)
    peak_alloc = totals[peak_phase]
    components = {"persistent": {k: round(v / GB, 3) for k, v in persistent.items()}}
    components.update({n: {k: round(v / GB, 3) for k, v in rows.items()} for n, rows in phases.items()})
    return Prediction(setup=s, tokens=tokens, components=components,
                      phases={k: round(v, 3) for k, v in totals.items()}, peak_phase=peak_phase,
                      peak_allocated_gb=peak_alloc, peak_gb=peak_alloc * (1 + ALLOCATOR_RESERVE) + CUDA_CONTEXT_GB,
                      gpu_gb=float(gpu_gb))
