"""docs/reliability.md's table is generated from the tests' ``hostile`` marks and kept up to date
(scripts/reliability_table.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
try:
    import reliability_table as rt
finally:
    sys.path.pop(0)

DOC = REPO / "docs" / "reliability.md"

MARKED = '''
import pytest

@pytest.mark.hostile(stage="eval", case="a bench | with a pipe", gets="one error line")
@pytest.mark.parametrize("x", [1, 2, 3])
@pytest.mark.parametrize("y", ("a", "b"))
def test_two(x, y):
    pass

@pytest.mark.hostile(stage="synth", case="--frames 1000000",
                     gets="refused before any work")
@pytest.mark.hostile(stage="synth", case="--num-clips .inf", gets="one error line")
def test_one():
    pass

def test_plain():
    pass
'''


def test_reliability_doc_is_up_to_date_with_the_tests():
    rows, unmarked = rt.collect(REPO / "tests")
    doc = DOC.read_text(encoding="utf-8")
    assert rt.update(doc, rt.render(rows, unmarked)) == doc, \
        "docs/reliability.md is out of date: run .venv/bin/python scripts/reliability_table.py"
    assert len(rows) >= 40 and {r.stage for r in rows} >= {"synth", "curate", "sft", "grpo", "eval", "all"}


def test_table_rows_come_from_the_marks_in_stage_order(tmp_path):
    (tmp_path / "test_reliability_x.py").write_text(MARKED)
    rows, unmarked = rt.collect(tmp_path)
    assert [(r.stage, r.case, r.test, r.cases) for r in rows] == [
        ("synth", "--frames 1000000", "test_reliability_x.py::test_one", None),
        ("synth", "--num-clips .inf", "test_reliability_x.py::test_one", None),
        ("eval", "a bench | with a pipe", "test_reliability_x.py::test_two", 6),
    ]
    assert unmarked == ["test_reliability_x.py::test_plain"]
    block = rt.render(rows, unmarked)
    assert "| eval | a bench \\| with a pipe | one error line | `test_reliability_x.py::test_two` (6 cases) |" in block
    assert "3 bad inputs and faults, tried by 2 tests: synth 2, eval 1." in block
    assert "- `test_reliability_x.py::test_plain`" in block


def test_check_fails_on_a_stale_table_and_passes_after_regenerating(tmp_path, capsys):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_reliability_x.py").write_text(MARKED)
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# title\n\n{rt.START}\nold table\n{rt.END}\n\nafter\n")
    argv = ["--tests", str(tests), "--doc", str(doc)]
    assert rt.main(argv + ["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert rt.main(argv) == 0
    text = doc.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    assert rt.main(argv + ["--check"]) == 0


@pytest.mark.parametrize("mark, message", [
    ('stage="qa", case="x"', "lacks ['gets']"),
    ('stage="training", case="x", gets="y"', "stage 'training' is not one of"),
    ('stage="qa", case=CASE, gets="y"', "field 'case' must be one of"),
    ('"qa", "x", "y"', "as keywords"),
    ('stage="qa", case="", gets="y"', "non-empty string"),
])
def test_malformed_mark_is_one_error_line_naming_file_and_line(tmp_path, capsys, mark, message):
    (tmp_path / "tests").mkdir()
    source = f"import pytest\n\n\n@pytest.mark.hostile({mark})\ndef test_a():\n    pass\n"
    (tmp_path / "tests" / "test_a.py").write_text(source)
    doc = tmp_path / "r.md"
    doc.write_text(f"{rt.START}\n{rt.END}\n")
    assert rt.main(["--tests", str(tmp_path / "tests"), "--doc", str(doc)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test_a.py:4" in err and message in err, err


def test_document_without_the_markers_is_an_error(tmp_path, capsys):
    (tmp_path / "tests").mkdir()
    doc = tmp_path / "r.md"
    doc.write_text("no markers here\n")
    assert rt.main(["--tests", str(tmp_path / "tests"), "--doc", str(doc)]) == 2
    assert "needs the two marker lines" in capsys.readouterr().err
    assert doc.read_text() == "no markers here\n"
