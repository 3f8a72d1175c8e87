"""docs/fusion.md's fusion "Speed" table is what the committed bench run bench/reference/cpu-fusion.json
(`python -m bench --only fusion --repeats 7`) measured (issue #26): each row's medians, target and
three slowest layer groups come from that file, so a changed timing or a changed cell fails."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = "bench/reference/cpu-fusion.json"
NETWORKS = {"fusion vgg11 width 1": "VGG11, width 1", "fusion resnet18 width 1": "ResNet18, width 1"}


def rows(reference: dict) -> list[str]:
    """The page's rows, built from the bench's JSON as the page writes them."""
    lines = []
    for result in reference["results"]:
        target = result["target"].replace("ours <= ", "≤ ").replace(".0 s", " s")
        slowest = sorted(result["notes"]["seconds_per_group"].items(), key=lambda kv: -kv[1])[:3]
        cells = [NETWORKS[result["name"]], f"{result['ours_median_s']:.3f} s", f"{result['baseline_median_s']:.3f} s",
                 f"{target}: {'met' if result['passed'] else 'missed'}",
                 ", ".join(f"{group} {seconds * 1000:.0f} ms" for group, seconds in slowest)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def drift(page: str, reference: dict) -> list[str]:
    lines = page.splitlines()
    expected = rows(reference)
    problems = [f"docs/fusion.md lacks the row {row!r}" for row in expected if row not in lines]
    load = f"load average {reference['results'][0]['notes']['load_average_1min']:g};"
    if load not in " ".join(page.split()):
        problems.append(f"docs/fusion.md lacks {load!r}")
    return problems


def _committed() -> tuple[str, dict]:
    page = (REPO / "docs/fusion.md").read_text(encoding="utf-8")
    return page, json.loads((REPO / REFERENCE).read_text(encoding="utf-8"))


def test_the_speed_table_is_the_committed_bench_run():
    page, reference = _committed()
    assert reference["repeats"] == 7 and reference["threads"] == 1
    assert [r["name"] for r in reference["results"]] == list(NETWORKS)
    assert drift(page, reference) == []


@pytest.mark.parametrize("change", ["median", "group", "target"])
def test_a_changed_timing_makes_the_check_fail(change):
    page, reference = _committed()
    result = reference["results"][1]
    if change == "median":
        result["ours_median_s"] += 0.01
    elif change == "group":
        result["notes"]["seconds_per_group"]["layers.3.0.conv2"] = 0.05
    else:
        result["passed"] = False
    problems = drift(page, reference)
    assert len(problems) == 1 and "ResNet18, width 1" in problems[0], problems
