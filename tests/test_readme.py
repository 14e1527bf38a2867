"""The README and the study page, checked: they document the code and the committed runs, so
what they show must run, what they link must exist and what they quote must be what the
results files give.

- The python usage block under README.md's "## Reading the code" is taken verbatim and
  executed (CPU, about a second); it must print the shapes the README promises.
- Every relative link from README.md into docs/, and from docs/study.md, points to an
  existing file (and, with a #fragment, to a heading of that file).
- docs/study.md's generated block (between study.MARKERS) equals what study.study_status
  computes from the committed results/study/ files.
- The hand-written prose about the study ("What the seeds say" in docs/study.md) quotes only
  intervals that the generated block shows, and every number in README.md's "## Results"
  section is one the generated block shows.
"""
from __future__ import annotations

import contextlib
import io
import os
import re

import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
STUDY_PAGE = os.path.join(ROOT, study.STUDY_PAGE)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(text: str, heading: str) -> str:
    """The body of a '## heading' section, up to the next '## ' heading."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def usage_block() -> str:
    body = section(read(README), "Reading the code")
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


# ----------------------------------------------------------------------------- links

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.M | re.S)   # no '#' in code blocks
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: str) -> tuple[list[str], list[str]]:
    """(every relative link of `page` that is not a URL, those that are broken)."""
    text = read(page)
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text)
                if not re.match(r"[a-z]+:", t)]
    broken = []
    for t in targets:
        path, _, fragment = t.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.isfile(full):
            broken.append(t)
        elif fragment and full.endswith(".md") and fragment not in anchors(full):
            broken.append(t)
    return targets, broken


def test_slug_is_githubs():
    assert slug("What holds up (the controlled study)") == "what-holds-up-the-controlled-study"
    assert slug("Every quick variant, timed") == "every-quick-variant-timed"
    assert slug("The custom column: patch 2 (the paper), patch 4 (the seed README)") == \
        "the-custom-column-patch-2-the-paper-patch-4-the-seed-readme"


def test_readme_links_into_docs_exist():
    targets, broken = broken_links(README)
    assert [t for t in targets if t.startswith(("docs/", "./docs/"))], \
        "README.md links to nothing under docs/"
    assert not broken, f"README.md links to missing files or headings: {broken}"


def test_study_page_links_exist():
    targets, broken = broken_links(STUDY_PAGE)
    assert targets, f"{study.STUDY_PAGE} links to nothing"
    assert not broken, f"{study.STUDY_PAGE} links to missing files or headings: {broken}"


# ----------------------------------------------------------------------------- the study
# The study page's block is the report of the committed runs, not numbers copied by hand:
# after a run lands in results/study, `make report` (python study.py --readme) rewrites it.

def study_block(text: str) -> str:
    """What lies between the study page's markers."""
    start, end = (text.index(m) for m in study.MARKERS)
    return text[start + len(study.MARKERS[0]):end].strip()


def test_study_block_is_generated_from_the_committed_runs(monkeypatch):
    monkeypatch.chdir(ROOT)                   # the block names the folder as the page does
    assert study_block(read(STUDY_PAGE)) == study.study_status("results/study").strip()


# The prose around the block, and the README's Results section, are written by hand; their
# numbers must still be the ones the generated block shows, so a landing that moves a number
# fails here until the prose is updated.
def numbers(text: str) -> set[str]:
    """Every decimal number, with its sign when it has one ('−' read as '-')."""
    return set(re.findall(r"[+-]?\d+\.\d+", text.replace("−", "-")))


def intervals(text: str) -> set[str]:
    flat = re.sub(r"\s+", " ", text.replace("−", "-"))  # an interval may wrap a line
    return set(re.findall(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", flat))


def test_study_prose_quotes_the_generated_block():
    page = read(STUDY_PAGE)
    block = study_block(page)
    seeds_say = section(page, "What the seeds say, and what they cannot")
    quoted = intervals(seeds_say)
    assert len(quoted) >= 5, quoted
    assert quoted <= intervals(block), quoted - intervals(block)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of every row of the Markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:                       # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def claim_figures(text: str, header: str) -> set[tuple[str, str, str]]:
    """(paper, here, interval) of every row of a claims table."""
    return {(r[1], r[2], r[3]) for r in table_rows(text, header)}


def arm_accuracies(block: str) -> dict[str, str]:
    """{setup: primary number} from the block's arm table: 'study_ce (CE)' -> {'CE': '64.91'}."""
    return {r[0].split(" ", 1)[1][1:-1]: r[2].split(" ")[0]
            for r in table_rows(block, "| arm | seeds |")}


# an arm named in prose with its accuracy: "CE 64.91 %" ("CL" not inside "KD+CL")
ARM_QUOTE = re.compile(r"(?<![\w+])(KD\+CL\+Sal|KD\+CL|teacher|CE|CL|KD) (\d+\.\d\d) %")


def test_readme_results_quote_the_generated_block():
    results = section(read(README), "Results")
    block = study_block(read(STUDY_PAGE))
    # every decimal number of the section is one the block shows
    quoted = numbers(results)
    assert len(quoted) >= 10, quoted
    assert quoted <= numbers(block), quoted - numbers(block)
    # each claim row is a claim row of the block: paper, here and interval together
    rows = claim_figures(results, "| claim | paper | here |")
    assert len(rows) == len(study.CLAIMS), rows                # one row per claim
    assert rows <= claim_figures(block, "| claim | size claimed"), \
        rows - claim_figures(block, "| claim | size claimed")
    # each arm quoted with its accuracy has that accuracy in the block
    arms = ARM_QUOTE.findall(re.sub(r"\s+", " ", results))
    assert len(arms) >= 3, arms
    accuracies = arm_accuracies(block)
    assert [(a, accuracies.get(a)) for a, _ in arms] == arms, (arms, accuracies)


# a fixed excerpt in the generated block's format (the live block's numbers move with the runs)
BLOCK_EXCERPT = """| arm | seeds | cls 32 px (primary) | avg 32 px |
|---|---|---:|---:|
| study_kd (KD) | 0,1,2 | 67.84 ± 0.35 | 67.75 ± 0.48 |
| study_ce_noaug (CE, no augmentation (the original's baseline)) | 0,1,2 | 64.81 ± 0.05 | – |

| claim | paper (custom column) | here, mean over seeds | 95 % interval | seeds | verdict |
|---|---:|---:|---|---|---|
| distillation beats plain training (KD > CE) | +9.85 | +2.93 | [+1.48, +4.39] | 0,1,2 | holds |
"""


def test_tables_and_arms_are_parsed_as_written():
    block = BLOCK_EXCERPT
    assert arm_accuracies(block)["KD"] == "67.84"
    assert arm_accuracies(block)["CE, no augmentation (the original's baseline)"] == "64.81"
    assert ("+9.85", "+2.93", "[+1.48, +4.39]") in claim_figures(block, "| claim | paper")
    assert ARM_QUOTE.findall("teacher 71.12 %, KD+CL 68.26 %, CE 64.91 % and KD 67.84 %") == [
        ("teacher", "71.12"), ("KD+CL", "68.26"), ("CE", "64.91"), ("KD", "67.84")]


def test_numbers_and_intervals_are_parsed_as_written():
    assert numbers("by +2.93 (−0.21, paper +9.85) ±1.5, 71.12 %, 12 epochs") == {
        "+2.93", "-0.21", "+9.85", "1.5", "71.12"}
    assert intervals("KD − CE: +2.93 [+1.48, +4.39], [−1.06,\n  +1.91]") == {
        "[+1.48, +4.39]", "[-1.06, +1.91]"}
