"""The README, checked: it documents the code, so what it shows must run and what it links
must exist.

- The python usage block under "## Reading the code" is taken from README.md verbatim
  and executed (CPU, about a second); it must print the shapes the README promises.
- Every relative link from README.md into docs/ must point to an existing file.
- The study block (between the study-status markers) equals what study.study_status
  computes from the committed results/study/ files.
- The hand-written prose about the study (the headline, "What the seeds say") quotes only
  differences and intervals that the generated block shows.
"""
from __future__ import annotations

import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def read_readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(text: str, heading: str) -> str:
    """The body of a '## heading' section, up to the next '## ' heading."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def usage_block() -> str:
    body = section(read_readme(), "Reading the code")
    blocks = re.findall(r"^```python\n(.*?)^```", body, re.M | re.S)
    assert len(blocks) == 1, ("expected one python block under 'Reading the code', "
                              f"found {len(blocks)}")
    return blocks[0]


def test_usage_block_runs_and_prints_the_shapes():
    code = usage_block()
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # the README says: run from the repository root
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md (Reading the code)", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, out.getvalue()
    assert lines[0].startswith("12 px: cls (8, 10) dist (8, 10) rollout (8, 3, 3) kd "), lines[0]
    assert lines[1].startswith("32 px: cls (8, 10) dist (8, 10) rollout (8, 8, 8) kd "), lines[1]
    for line in lines:
        kd = float(line.rsplit("kd ", 1)[1])
        assert kd >= 0.0  # a KL divergence


def test_links_into_docs_exist():
    text = read_readme()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    docs = [t for t in targets if t.startswith(("docs/", "./docs/"))]
    assert docs, "README.md links to nothing under docs/"
    missing = [t for t in docs if not os.path.isfile(os.path.join(ROOT, t.split("#", 1)[0]))]
    assert not missing, f"README.md links to missing files: {missing}"


# The README's study block is the report of the committed runs, not numbers copied by hand:
# after a run lands in results/study, `python experiments.py report --readme` rewrites it.
def study_block(text: str) -> str:
    """What lies between the README's study-status markers."""
    import experiments
    start, end = (text.index(m) for m in study.MARKERS)
    return text[start + len(study.MARKERS[0]):end].strip()


def test_study_block_is_generated_from_the_committed_runs(monkeypatch):
    import experiments
    monkeypatch.chdir(ROOT)                   # the block names the folder as the README does
    assert study_block(read_readme()) == study.study_status("results/study").strip()


# The prose around the study (the headline at the top, "What the seeds say") is written by hand;
# its differences and intervals must still be the ones the generated block shows, so a landing
# that moves a number fails here until the prose is updated.
def signed_numbers(text: str) -> set[str]:
    return set(re.findall(r"[+-]\d+\.\d\d", text.replace("−", "-")))


def intervals(text: str) -> set[str]:
    flat = re.sub(r"\s+", " ", text.replace("−", "-"))  # an interval may wrap a line
    return set(re.findall(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", flat))


def test_study_prose_quotes_the_generated_block():
    text = read_readme()
    block = study_block(text)
    headline = re.search(r"^\*\*What holds up\*\*(.*?)^$", text, re.M | re.S)
    assert headline, "README.md lost its 'What holds up' headline paragraph"
    numbers = signed_numbers(headline.group(1))
    assert len(numbers) >= 4, numbers
    assert numbers <= signed_numbers(block), numbers - signed_numbers(block)
    seeds_say = re.search(r"^\*\*What the seeds say(.*?)^Figures from", text, re.M | re.S)
    assert seeds_say, "README.md lost 'What the seeds say'"
    quoted = intervals(seeds_say.group(1))
    assert len(quoted) >= 5, quoted
    assert quoted <= intervals(block), quoted - intervals(block)


def test_signed_numbers_and_intervals_are_parsed_as_written():
    assert signed_numbers("by +2.93 (−0.21, paper +9.85) ±1.5") == {"+2.93", "-0.21", "+9.85"}
    assert intervals("KD − CE: +2.93 [+1.48, +4.39], [−1.06,\n  +1.91]") == {
        "[+1.48, +4.39]", "[-1.06, +1.91]"}
