"""Agreement of the offline answer extractor with VLM4D's LLM judge.

Reads VLM4D's judged output files (23 models x {CoT, direct} x {real, synthetic}; each
reply carries the judge's extracted option and verdict) and prints:
- overall agreement: how often ``extract_choice`` picks the judge's option (a letter, or
  "no answer" when the judge found no valid answer);
- per-file accuracy: ours (``score_response``) vs the judge's verdicts, and how many files
  are within 1 point;
- the remaining disagreements grouped by kind, with examples.

    .venv/bin/python scripts/bench_extraction.py [--data ../shared/data/vlm4d] [--examples 3]

Targets: agreement >= 98 % of all replies; |accuracy delta| <= 1 point on >= 95 %
of the files.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from mllm4d_lite.eval.answers import answer_letters, entry_answer, explain_choice

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vlm4d"


def judge_letter(extracted: str) -> str | None:
    """The judge's option: the letter of "B: text", None for "No Valid Answer" etc."""
    m = re.match(r"\s*([A-Z])\s*:", str(extracted))
    return m.group(1) if m else None


def usual_regex_letter(response: str) -> str | None:
    """The usual quick extractor, for comparison: <answer> tag, "answer: X", a reply that is
    one letter, a trailing letter."""
    for pattern in (r"<answer>\s*\(?([A-D])\)?", r"answer\s*(?:is)?\s*:?\s*\(?([A-D])\b",
                    r"^\s*\(?([A-D])\)?\s*\.?\s*$", r"\b([A-D])\s*\.?\s*$"):
        m = re.search(pattern, response, flags=re.I if "answer" in pattern else 0)
        if m:
            return m.group(1).upper()
    return None


def disagreement_kind(ours: str | None, rule: str, judge: str | None) -> str:
    """Who found what, and which of our rules decided."""
    if judge is None:
        return f"judge: no valid answer; ours: a letter by rule {rule}"
    if ours is None:
        return f"judge: a letter; ours: no answer ({rule})"
    return f"different letters; ours by rule {rule}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--examples", type=int, default=3, help="examples printed per disagreement kind")
    ap.add_argument("--dump", type=Path, default=None, help="write all disagreements to this JSONL file")
    args = ap.parse_args(argv)
    files = sorted(p for p in args.data.glob("*_mc_*/*.json"))
    if not files:
        print(f"no judged files under {args.data} (expected <split>_mc_<prompt>/<model>.json)", file=sys.stderr)
        return 2
    total = agree = regex_agree = judge_inconsistent = 0
    kinds: collections.Counter[str] = collections.Counter()
    examples: dict[str, list] = collections.defaultdict(list)
    per_file = []
    regex_per_file: list[tuple[float, str]] = []
    dump = args.dump.open("w") if args.dump else None
    for path in files:
        entries = json.loads(path.read_text())
        n = ok = judged = f_agree = f_regex = 0
        for e in entries:
            ours, rule = explain_choice(e["response"], e["choices"])
            judge = judge_letter(e["extracted_answer"])
            f_regex += usual_regex_letter(e["response"]) == judge
            judge_inconsistent += (judge in answer_letters(entry_answer(e), e["choices"])) != bool(e["correct"])
            # the score `mllm4d eval score` gives (answers.score_response), without extracting twice
            score = float(ours in answer_letters(entry_answer(e), e["choices"]))
            n += 1
            ok += score
            judged += bool(e["correct"])
            if ours == judge:
                f_agree += 1
                continue
            kind = disagreement_kind(ours, rule, judge)
            kinds[kind] += 1
            rec = {"file": f"{path.parent.name}/{path.name}", "id": e["id"], "ours": ours,
                   "rule": rule, "judge": e["extracted_answer"], "response": e["response"][-300:]}
            if len(examples[kind]) < args.examples:
                examples[kind].append(rec)
            if dump:
                dump.write(json.dumps(rec) + "\n")
        total += n
        agree += f_agree
        regex_agree += f_regex
        regex_per_file.append((100 * f_regex / n, f"{path.parent.name}/{path.name}"))
        per_file.append((f"{path.parent.name}/{path.name}", n, 100 * f_agree / n, 100 * ok / n, 100 * judged / n))
    if dump:
        dump.close()

    print(f"{'file':<75} {'n':>5} {'agree%':>7} {'ours%':>7} {'judge%':>7} {'delta':>6}")
    within = 0
    for name, n, ag, ours_acc, judge_acc in per_file:
        delta = ours_acc - judge_acc
        within += abs(delta) <= 1.0
        flag = "" if abs(delta) <= 1.0 else "  <-- over 1 point"
        print(f"{name:<75} {n:>5} {ag:>7.2f} {ours_acc:>7.2f} {judge_acc:>7.2f} {delta:>+6.2f}{flag}")
    print()
    print("disagreement kinds:")
    for kind, count in kinds.most_common():
        print(f"  {count:>6}  {kind}")
        for rec in examples[kind]:
            print(f"          {rec['file']} {rec['id']}: ours={rec['ours']} judge={rec['judge'][:40]!r} "
                  f"reply=...{rec['response'][-120:]!r}")
    print()
    print(f"the judge's verdict contradicts its own extracted letter on {judge_inconsistent} replies "
          "(a floor on per-file accuracy differences)")
    print(f"usual regex extractor (answer tag, 'answer: X', lone/trailing letter) agrees on "
          f"{100 * regex_agree / total:.2f} %; worst file {min(regex_per_file)[0]:.2f} % ({min(regex_per_file)[1]})")
    print(f"replies: {total}, extractor agrees with the judge's option on {agree} = {100 * agree / total:.2f} %"
          f" (target >= 98 %)")
    print(f"files: {len(per_file)}, accuracy within 1 point of the judged accuracy on {within}"
          f" = {100 * within / len(per_file):.1f} % (target >= 95 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
