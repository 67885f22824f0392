"""What questions say: categories, phrasings (templates), answer texts and the canonical option order.

docs/questions.md describes each category and how its answer is decided.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "object_direction",      # left / right / towards / away / not moving (world frame)
    "object_direction_phase",  # the same over the first / second half ("at the end of the video")
    "object_approach",       # closer to / farther from the (moving) camera
    "camera_direction",      # forward / backward / left / right / not moving
    "camera_rotation",       # turning left / right / not turning
    "object_rotation",       # clockwise / counter-clockwise / not rotating, seen from above
    "counting",              # how many objects move in a given way
    "false_positive",        # question about an object that is not there
    "relative_position",     # two objects: closer together / farther apart / same
    "speed_comparison",      # which of two objects is faster
    "object_distance",       # numeric: metres an object travelled
    "camera_distance",       # numeric: metres the camera travelled
    "object_pair_distance",  # numeric: metres between two objects at the end
)
NUMERIC_CATEGORIES = ("object_distance", "camera_distance", "object_pair_distance")

TEMPLATES: dict[str, list[str]] = {
    "object_direction": [
        "What direction is the {a} moving towards?",
        "Seen from where the camera starts, which way is the {a} moving?",
        "In which direction does the {a} move, relative to the camera's first view?",
    ],
    "object_direction_start": [
        "What direction is the {a} moving towards at the beginning of the video?",
        "At the beginning of the video, which way is the {a} moving, seen from where the camera starts?",
        "In the first half of the video, in which direction does the {a} move?",
    ],
    "object_direction_end": [
        "What direction is the {a} moving towards at the end of the video?",
        "At the end of the video, which way is the {a} moving, seen from where the camera starts?",
        "In the second half of the video, in which direction does the {a} move?",
    ],
    "object_approach": [
        "Is the {a} getting closer to the camera or farther from it?",
        "How does the distance between the camera and the {a} change over the video?",
        "Over the video, does the {a} approach the camera or recede from it?",
    ],
    "camera_direction": [
        "Which direction is the camera moving?",
        "In which direction does the camera travel, relative to where it first points?",
        "How is the camera moving through the scene?",
    ],
    "camera_rotation": [
        "Which way is the camera turning?",
        "How does the camera's viewing direction change over the video?",
        "Does the camera rotate during the video, and if so, which way?",
    ],
    "object_rotation": [
        "Seen from above, which way is the {a} rotating?",
        "Viewed from above, how is the {a} turning?",
        "How does the {a} rotate about its vertical axis, seen from above?",
    ],
    "counting": [
        "How many objects are {p}?",
        "Count the objects that are {p}. How many are there?",
        "How many of the objects in the video are {p}?",
    ],
    "relative_position": [
        "How does the distance between the {a} and the {b} change over the video?",
        "Do the {a} and the {b} get closer together or farther apart?",
        "Over the video, are the {a} and the {b} moving towards each other or apart?",
    ],
    "speed_comparison": [
        "Which moves faster, the {a} or the {b}?",
        "Between the {a} and the {b}, which one is moving faster?",
        "Compare the speeds of the {a} and the {b}. Which is faster?",
    ],
    "object_distance": [
        "How far does the {a} move between the first and the last frame it is seen in, in metres?",
        "What distance does the {a} travel from where it is first seen to where it is last seen, in metres?",
        "By how many metres is the {a} displaced between its first and last appearance in the video?",
    ],
    "camera_distance": [
        "How far does the camera move between the first and the last frame, in metres?",
        "What distance does the camera travel from start to end of the video, in metres?",
        "By how many metres is the camera displaced over the video?",
    ],
    "object_pair_distance": [
        "How far apart are the {a} and the {b} at the end of the video, in metres?",
        "At the last frame, what is the distance between the {a} and the {b} in metres?",
        "What is the distance in metres between the {a} and the {b} at the end?",
    ],
}

OBJECT_DIRECTION_TEXT = {"left": "left", "right": "right", "towards": "towards the camera",
                         "away": "away from the camera", "static": "not moving"}
CAMERA_DIRECTION_TEXT = {"left": "to the left", "right": "to the right", "towards": "backward",
                         "away": "forward", "static": "not moving"}
APPROACH_TEXT = {"decrease": "getting closer to the camera", "increase": "getting farther from the camera",
                 "same": "staying at about the same distance"}
CAMERA_TURN_TEXT = {"cw": "turning right", "ccw": "turning left", "none": "not turning",
                    "tilt_up": "tilting up", "tilt_down": "tilting down"}
ROTATION_TEXT = {"cw": "clockwise", "ccw": "counter-clockwise", "none": "not rotating"}
PAIR_TEXT = {"decrease": "they get closer together", "increase": "they move farther apart",
             "same": "their distance stays about the same"}
# The canonical option order of ``qa_option_order: fixed`` (duplicates keep their first place).
CANONICAL_OPTIONS = list(dict.fromkeys(
    v for d in (OBJECT_DIRECTION_TEXT, CAMERA_DIRECTION_TEXT, APPROACH_TEXT, CAMERA_TURN_TEXT, ROTATION_TEXT, PAIR_TEXT)
    for v in d.values()))
COUNT_PREDICATES = {  # predicate key (a translation label, or moving / static) -> phrase in the question
    "left": "moving to the left", "right": "moving to the right",
    "towards": "moving towards the camera", "away": "moving away from the camera",
    "moving": "moving", "static": "not moving",
}


def absent_text(label: str) -> str:
    """The VLM4D false-positive choice."""
    return f"no {label} there"


def phrasings(category: str, key: str) -> list[str]:
    """The phrasings of a question: false positives borrow the family of the question they mimic;
    direction-in-phase questions have one family per phase."""
    if category == "false_positive":
        return TEMPLATES[key]
    if category == "object_direction_phase":
        return TEMPLATES[f"object_direction_{key}"]
    return TEMPLATES[category]


def option_rank(text: str) -> tuple[int, str]:
    """Place of an option text in the canonical order of ``qa_option_order: fixed``: the answer
    vocabularies in the order they are defined above (left, right, towards, away, not moving, ...),
    then anything else (absent-object options, numbers) alphabetically."""
    return (CANONICAL_OPTIONS.index(text), "") if text in CANONICAL_OPTIONS else (len(CANONICAL_OPTIONS), text)
