"""QAConfig: the thresholds, caps and modes of question generation (docs/questions.md explains each)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mllm4d_lite.config import ConfigError

# ``qa_option_order`` modes (docs/questions.md, "Multiple choice")
OPTION_ORDERS = ("balanced", "fixed")

DEFAULT_ABSENT_LABELS = [
    f"{colour} {shape}"
    for colour in ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
    for shape in ("cube", "sphere", "cylinder", "cone")
]


@dataclass
class QAConfig:
    """Question generation (thresholds are physical: metres, degrees; see docs/questions.md)."""

    qa_seed: int = field(default=0, metadata={"help": "seed of the clip split, phrasing, distractors and letters"})
    bench_fraction: float = field(default=0.25, metadata={"help": "share of clips (not questions) held out for bench.json"})
    rft_fraction: float = field(default=0.0, metadata={"help": "share of all clips whose questions go to rft.jsonl only, so that GRPO prompts come from clips SFT and the cold start never saw (as the paper's RFT set is its own); 0 = rft.jsonl holds the training clips' questions"})
    qa_static_max_m: float = field(default=0.15, metadata={"help": "displacement / distance change below this = 'not moving' / 'same' (m)"})
    qa_moving_min_m: float = field(default=0.3, metadata={"help": "displacement / distance change above this = moving / changing (m); between the two: dropped"})
    qa_direction_margin_deg: float = field(default=15.0, metadata={"help": "drop direction questions whose motion lies within this angle of a diagonal (deg)"})
    qa_max_vertical_ratio: float = field(default=0.5, metadata={"help": "drop direction questions when |dy| > this x horizontal displacement"})
    qa_turn_static_deg: float = field(default=3.0, metadata={"help": "camera heading change below this = 'not turning' (deg); also max pitch change"})
    qa_turn_min_deg: float = field(default=10.0, metadata={"help": "camera heading change above this = turning (deg)"})
    qa_rotation_static_deg: float = field(default=5.0, metadata={"help": "object yaw change below this = 'not rotating' (deg)"})
    qa_rotation_min_deg: float = field(default=15.0, metadata={"help": "object yaw change above this = rotating (deg)"})
    qa_speed_same_ratio: float = field(default=1.15, metadata={"help": "speed ratio below this = 'about the same speed'"})
    qa_speed_faster_ratio: float = field(default=1.5, metadata={"help": "speed ratio above this = one is faster"})
    qa_min_visible_fraction: float = field(default=0.5, metadata={"help": "ask about an object only if its centre is known in at least this share of frames"})
    qa_smooth_degree: int = field(default=2, metadata={"help": "object centres and yaw are replaced by a robust polynomial fit of this degree in time over the visible frames (0 = raw annotations)"})
    qa_smooth_outlier_m: float = field(default=0.1, metadata={"help": "centres farther than this (m, or 3x the median residual) from the first fit are ignored by the second"})
    qa_smooth_outlier_deg: float = field(default=5.0, metadata={"help": "the same for yaw (deg)"})
    qa_max_per_category_per_clip: int = field(default=4, metadata={"help": "at most this many questions of one category per clip"})
    qa_false_positives_per_clip: int = field(default=2, metadata={"help": "false-positive (absent object) questions per clip"})
    qa_max_answer_share: float = field(default=0.5, metadata={"help": "per split and multiple-choice category, drop seeded questions of the most common answer until it is at most this share (1 = keep all); false positives exempt"})
    qa_numeric: bool = field(default=True, metadata={"help": "include numeric (metres) questions"})
    qa_balance_train: bool = field(default=True, metadata={"help": "repeat under-represented categories in the training split with other phrasings, up to the median category count"})
    qa_option_order: str = field(default="balanced", metadata={"help": "balanced: the right answer's letter cycles through shuffled A-D blocks (VLM4D style); fixed: options listed in one canonical order (left, right, towards, away, not moving, ...), for the tiny random model, which cannot learn a shuffled letter lookup"})
    qa_absent_labels: list[str] = field(default_factory=lambda: list(DEFAULT_ABSENT_LABELS), metadata={"help": "labels for false-positive questions (those present in a clip are skipped)"})

    def validate(self) -> None:
        if not 0.0 <= self.bench_fraction < 1.0:
            raise ConfigError(f"bench_fraction must be in [0, 1), got {self.bench_fraction}")
        if not 0.0 <= self.rft_fraction < 1.0 or self.bench_fraction + self.rft_fraction >= 1.0:
            raise ConfigError(f"rft_fraction must be in [0, 1) with bench_fraction + rft_fraction < 1 (training clips "
                              f"must remain), got rft_fraction {self.rft_fraction}, bench_fraction {self.bench_fraction}")
        pairs = [("qa_static_max_m", "qa_moving_min_m"), ("qa_turn_static_deg", "qa_turn_min_deg"),
                 ("qa_rotation_static_deg", "qa_rotation_min_deg"), ("qa_speed_same_ratio", "qa_speed_faster_ratio")]
        for low, high in pairs:
            if not 0 <= getattr(self, low) <= getattr(self, high):
                raise ConfigError(f"need 0 <= {low} <= {high}, got {getattr(self, low)} and {getattr(self, high)}")
        if not 0 <= self.qa_direction_margin_deg < 45:
            raise ConfigError(f"qa_direction_margin_deg must be in [0, 45), got {self.qa_direction_margin_deg}")
        if not 0.25 <= self.qa_max_answer_share <= 1.0:
            raise ConfigError(f"qa_max_answer_share must be in [0.25, 1], got {self.qa_max_answer_share}")
        if self.qa_option_order not in OPTION_ORDERS:
            raise ConfigError(f"qa_option_order must be one of {list(OPTION_ORDERS)}, got {self.qa_option_order!r}")
        if self.qa_max_per_category_per_clip < 1:
            raise ConfigError(f"qa_max_per_category_per_clip must be >= 1, got {self.qa_max_per_category_per_clip}")
