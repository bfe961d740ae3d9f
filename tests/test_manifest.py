"""The manifest reader: every bad line reported with its line and field, good lines kept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixazo_batch.manifest import read_manifest
from pixazo_batch.manifestjob import KnownJob
from pixazo_batch.manifestline import ManifestIssue, safe_output
from pixazo_batch.manifestpool import judge_manifest
from pixazo_batch.models import GenerationRequest, JobSpec, JobState
from pixazo_batch.state import StateStore
from tests.conftest import job_line

ISSUE = re.compile(r"^.+:\d+: [^:]+: .+$")


def read(path: Path, lines: list[bytes]) -> list[JobSpec | ManifestIssue]:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return list(read_manifest(path))


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        (b"\xff\xfe not utf-8", "(line)", "not valid UTF-8"),
        (b'{"prompt": "abc", ', "(line)", "invalid JSON"),
        (b"[1, 2]", "(line)", "expected a JSON object"),
        (json.dumps(job_line(0, colour="red")).encode(), "colour", "unknown field"),
        (json.dumps(job_line(0, prompt=7)).encode(), "prompt", "string"),
        (json.dumps(job_line(0, prompt="hi")).encode(), "prompt", "at least 3"),
        (json.dumps(job_line(0, prompt="x" * 5001)).encode(), "prompt", "at most 5000"),
        (json.dumps(job_line(0, loop="true")).encode(), "loop", "boolean"),
        (json.dumps(job_line(0, aspect_ratio="1:1")).encode(), "aspect_ratio", "16:9"),
        (json.dumps(job_line(0, image_url="ftp://x/a.jpg")).encode(), "image_url", "http"),
        (json.dumps(job_line(0, output="/etc/x.mp4")).encode(), "output", "not absolute"),
        (json.dumps(job_line(0, output="a/../../x.mp4")).encode(), "output", "'..'"),
        (json.dumps(job_line(0, output="results.jsonl")).encode(), "output", "uses itself"),
        (json.dumps(job_line(0, id="../evil")).encode(), "id", "pattern"),
    ],
)
def test_each_kind_of_bad_line_names_line_and_field(
    tmp_path: Path, line: bytes, field: str, message: str
) -> None:
    items = read(tmp_path / "m.jsonl", [json.dumps(job_line(9)).encode(), line])
    assert isinstance(items[0], JobSpec)
    issue = items[1]
    assert isinstance(issue, ManifestIssue)
    assert (issue.line, issue.field) == (2, field)
    assert message in issue.message
    assert str(issue).startswith(f"{tmp_path / 'm.jsonl'}:2: {field}: ")


def test_duplicates_blank_lines_and_comments(tmp_path: Path) -> None:
    items = read(
        tmp_path / "m.jsonl",
        [
            b"# comment",
            json.dumps(job_line(0)).encode(),
            b"   ",
            json.dumps(job_line(0, prompt="Another prompt here")).encode(),
            json.dumps(job_line(1, output="job-000.mp4")).encode(),
            json.dumps({"prompt": "same", "image_url": "https://x.example/a.jpg"}).encode(),
            json.dumps({"prompt": "same", "image_url": "https://x.example/a.jpg"}).encode(),
        ],
    )
    issues = [i for i in items if isinstance(i, ManifestIssue)]
    jobs = [i for i in items if isinstance(i, JobSpec)]
    assert [str(i).split(": ", 1)[0].rsplit(":", 1)[1] for i in issues] == ["4", "5", "7"]
    assert "first on line 2" in issues[0].message
    assert "output of line 2" in issues[1].message
    assert "give each line its own id" in issues[2].message
    assert [j.line for j in jobs] == [2, 6]
    assert jobs[1].id.startswith("job-") and jobs[1].output == f"{jobs[1].id}.mp4"


def test_conflicts_far_apart_are_found_and_name_the_earlier_line(tmp_path: Path) -> None:
    """Lines are checked against the earlier ones a batch at a time (512 lines): each
    conflict below sits in a batch of its own, and is reported like any other."""
    outputs = {
        3: "a/b.mp4",
        300: "x.mp4/c.mp4",
        400: "deep/er.mp4",
        700: "a",  # a file where line 3 needs a folder
        1100: "own-1100.mp4",  # its id is line 5's (below)
        1600: "deep/er.mp4/e.mp4",  # a folder where line 400 has a file
        2050: "p/q.mp4",
        2051: "p",  # a file where the line before needs a folder
        2600: "r.mp4",
        2601: "r.mp4",
    }
    lines = []
    for number in range(1, 2701):
        line = job_line(5 if number == 1100 else number)  # 1100 takes line 5's id
        if number in outputs:
            line["output"] = outputs[number]
        lines.append(json.dumps(line).encode())
    items = read(tmp_path / "m.jsonl", lines)
    issues = {i.line: (i.field, i.message) for i in items if isinstance(i, ManifestIssue)}
    assert issues == {
        700: ("output", "'a' is a folder of the output of line 3"),
        1100: ("id", "duplicate id 'job-005' (first on line 5)"),
        1600: ("output", "'deep/er.mp4' is the output of line 400, so it cannot be a folder"),
        2051: ("output", "'p' is a folder of the output of line 2050"),
        2601: ("output", "'r.mp4' is already the output of line 2600"),
    }
    jobs = [i for i in items if isinstance(i, JobSpec)]
    assert [j.line for j in jobs] == [n for n in range(1, 2701) if n not in issues]


def test_default_id_is_stable_for_the_same_request(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "a stable one", "image_url": "https://x.example/a.jpg"}).encode()
    first = read(tmp_path / "a.jsonl", [line])[0]
    spelled = json.dumps(
        {"image_url": "https://x.example/a.jpg", "prompt": "a stable one", "resolution": "540p"}
    ).encode()
    second = read(tmp_path / "b.jsonl", [spelled])[0]
    assert isinstance(first, JobSpec) and isinstance(second, JobSpec)
    assert first.id == second.id


def test_safe_output_normalises() -> None:
    assert safe_output("spring//tree-01.mp4") == "spring/tree-01.mp4"
    assert safe_output("./a.mp4") == "a.mp4"
    with pytest.raises(ValueError, match="relative"):
        safe_output("C:/x.mp4")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
mutated_jobs = st.builds(
    lambda index, key, value: json.dumps({**job_line(index), key: value}).encode(),
    st.integers(0, 10_000),
    st.sampled_from(
        [
            "id",
            "prompt",
            "image_url",
            "end_image_url",
            "aspect_ratio",
            "loop",
            "resolution",
            "duration",
            "output",
            "extra",
        ]
    ),
    json_values,
)
any_line = st.one_of(st.binary(max_size=80), mutated_jobs, st.text(max_size=80).map(str.encode))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noise=st.lists(any_line, max_size=12))
def test_random_input_never_raises_and_good_lines_survive(
    tmp_path: Path, noise: list[bytes]
) -> None:
    good = [json.dumps(job_line(100_000 + i)).encode() for i in range(3)]
    lines = [line.replace(b"\n", b" ") for line in [*noise, *good]]
    items = read(tmp_path / "fuzz.jsonl", lines)
    for item in items:
        if isinstance(item, ManifestIssue):
            assert ISSUE.match(str(item).replace("\n", " ")), str(item)
    kept = {item.id for item in items if isinstance(item, JobSpec)}
    assert {f"job-{100_000 + i:03d}" for i in range(3)} <= kept


request_fields = st.fixed_dictionaries(
    {
        "prompt": st.text(min_size=3, max_size=40).filter(lambda text: len(text) >= 3),
        "image_url": st.text(max_size=20).map(lambda path: "https://x.example/" + path),
    },
    optional={
        "end_image_url": st.sampled_from(["", "https://x.example/end.jpg"]),
        "aspect_ratio": st.sampled_from(["16:9", "9:16", "4:3", "3:4", "21:9", "9:21"]),
        "loop": st.booleans(),
        "resolution": st.sampled_from(["540p", "720p", "1080p"]),
        "duration": st.sampled_from(["5s", "9s"]),
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=request_fields, named=st.booleans(), ascii_only=st.booleans())
def test_a_line_makes_the_request_a_request_model_would(
    tmp_path: Path, fields: dict[str, object], named: bool, ascii_only: bool
) -> None:
    # A line's request is written from its own fields without a request model: its JSON, hash,
    # price and derived id must be those the model makes of the same fields.
    line = {**fields, "id": "job-1"} if named else fields
    (item,) = read(tmp_path / "m.jsonl", [json.dumps(line, ensure_ascii=ascii_only).encode()])
    model = GenerationRequest.model_validate(fields)
    assert isinstance(item, JobSpec)
    assert item.request_json == model.canonical_json()
    assert item.request == model
    assert item.price_cents == model.price_cents
    assert item.id == ("job-1" if named else f"job-{model.request_hash()[:16]}")


def test_a_byte_order_mark_as_spreadsheets_write_it_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(job_line(0)).encode() + b"\n")
    (item,) = read_manifest(path)
    assert isinstance(item, JobSpec) and item.id == "job-000"


def one_reader(path: Path) -> list[str | tuple[str, str]]:
    """What ``read_manifest`` makes of each line: its issue, or the good line's kind."""
    return [
        str(item)
        if isinstance(item, ManifestIssue)
        else (item.request.resolution.value, item.request.duration.value)
        for item in read_manifest(path)
    ]


def local_image(index: int, image_file: str) -> dict[str, object]:
    line: dict[str, object] = job_line(index, image_file=image_file)
    del line["image_url"]
    return line


def awkward_manifest(folder: Path, count: int, *, long_lines: int = 0) -> Path:
    """A manifest of ``count`` good lines with every kind of odd line first (and a line of over
    1 MiB), then a line conflicting with an earlier one every 60 lines (5): 14 issues; and
    ``long_lines`` lines of 700 KB (a prompt too long) among the good ones."""
    (folder / "img").mkdir()
    (folder / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    odd_lines = [
        b"\xef\xbb\xbf" + json.dumps(job_line(0)).encode(),  # a byte order mark, line 1 only
        b"# a comment",
        b"",
        b"\xff\xfe not utf-8",
        b'{"prompt": "abc", ',
        b'{"id": "twice", "id": "twice", "prompt": "abc", "image_url": "https://x.example/a"}',
        b'{"id": "sur", "prompt": "\\ud800 lone", "image_url": "https://x.example/a.jpg"}',
        json.dumps(job_line(1, resolution="1080p", duration="9s")).encode() + b"\r",
        json.dumps(local_image(2, "img/a.png")).encode(),
        json.dumps(local_image(3, "img/missing.png")).encode(),
        json.dumps({"prompt": "no id given", "image_url": "https://x.example/b.jpg"}).encode(),
        json.dumps(job_line(4, output="a/b.mp4")).encode(),
        b"x" * (3 << 19),  # longer than any line is read (by half as much again)
        b"\xef\xbb\xbf" + json.dumps(job_line(5)).encode(),  # not line 1: refused
        json.dumps(job_line(6, colour="red", prompt="hi")).encode(),
    ]
    conflicts = [
        json.dumps(job_line(0, prompt="the same id again")).encode(),
        json.dumps({"prompt": "no id given", "image_url": "https://x.example/b.jpg"}).encode(),
        json.dumps(job_line(7, output="a")).encode(),  # a file where line 12 needs a folder
        json.dumps(job_line(8, output="job-001.mp4")).encode(),
        json.dumps(job_line(9, output="a/b.mp4/c.mp4")).encode(),
    ]
    lines = [*odd_lines]
    for number in range(10, 10 + count):
        lines.append(json.dumps(job_line(number, duration="9s" if number % 3 else "5s")).encode())
        if number % 60 == 0 and number // 60 <= len(conflicts):
            lines.append(conflicts[number // 60 - 1])
        if number % 700 == 0 and number // 700 <= long_lines:
            lines.append(json.dumps(job_line(number + 1_000_000, prompt="x" * 700_000)).encode())
    path = folder / "m.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    return path


def test_workers_judge_a_manifest_line_for_line_as_one_reader_does(tmp_path: Path) -> None:
    """Spans of 2 KiB cut near every kind of line (and through a line of over 1 MiB): the
    workers' verdicts, numbered and checked in order here, are the single reader's."""
    path = awkward_manifest(tmp_path, 330)
    expected = one_reader(path)
    assert sum(isinstance(item, str) for item in expected) == 14  # every odd line was judged

    for workers in (2, 0):  # 0: the spans are judged in this process
        judged = judge_manifest(path, workers, span_bytes=2048)
        assert [str(i) if isinstance(i, ManifestIssue) else i for i in judged] == expected


def test_a_run_s_reading_by_workers_makes_the_jobs_and_issues_one_reader_makes(
    tmp_path: Path,
) -> None:
    """Over several pieces a worker is sent, with lines an earlier run recorded in each: the
    same jobs (request, digest, image inputs), known jobs and issues, in the same order."""
    path = awkward_manifest(tmp_path, 6000, long_lines=4)  # batches cut by bytes, too
    with StateStore.open(tmp_path / "state.db") as store:
        first = read_manifest(path, store.recorded_lines)
        recorded = [item for item in first if isinstance(item, JobSpec) and item.line % 7]
        # every line but one in seven, in every piece, recorded as a run would
        for _ in store.register_many(recorded):
            pass
        alone = list(read_manifest(path, store.recorded_lines))
        assert sum(isinstance(item, KnownJob) for item in alone) > 5000
        assert sum(isinstance(item, ManifestIssue) for item in alone) == 14 + 4
        assert any(isinstance(item, JobSpec) and item.inputs for item in alone)
        assert list(read_manifest(path, store.recorded_lines, workers=2)) == alone
    assert list(read_manifest(path, workers=2)) == list(read_manifest(path))


def test_a_later_read_knows_the_lines_an_earlier_run_recorded_byte_for_byte(
    tmp_path: Path,
) -> None:
    """Lines naming their id and no image file are known again (trailing blanks aside); a line
    without an id, with an image file, or changed is read again."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    named = json.dumps(job_line(0))
    unnamed = json.dumps({"prompt": "no id", "image_url": "https://x.example/a"})
    imaged = json.dumps({"id": "pic", "prompt": "from a file", "image_file": "a.png"})
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([named, unnamed, imaged, json.dumps(job_line(1))]) + "\n")
    with StateStore.open(tmp_path / "state.db") as store:
        first = list(read_manifest(path, store.recorded_lines))
        assert all(isinstance(item, JobSpec) for item in first)
        for _ in store.register_many([item for item in first if isinstance(item, JobSpec)]):
            pass
        edited = [named + " \r", unnamed, imaged, json.dumps(job_line(1, prompt="take one"))]
        path.write_text("\n".join(edited) + "\n")
        again = list(read_manifest(path, store.recorded_lines))
    assert [type(item).__name__ for item in again] == ["KnownJob", "JobSpec", "JobSpec", "JobSpec"]
    known = again[0]
    assert isinstance(known, KnownJob)
    assert (known.id, known.state, known.line) == ("job-000", JobState.PENDING, 1)
    assert [item.digest is None for item in first if isinstance(item, JobSpec)] == [
        False, True, True, False,
    ]  # fmt: skip


def test_a_known_line_still_counts_against_the_other_lines(tmp_path: Path) -> None:
    """A known line repeated, or its job's id on a line spelled otherwise, is a duplicate."""
    path = tmp_path / "m.jsonl"
    line = json.dumps(job_line(0))
    path.write_text(line + "\n")
    with StateStore.open(tmp_path / "state.db") as store:
        specs = [
            item for item in read_manifest(path, store.recorded_lines) if isinstance(item, JobSpec)
        ]
        for _ in store.register_many(specs):
            pass
        respelled = json.dumps(job_line(0), indent=None, separators=(",", ":"))
        path.write_text("\n".join([line, line, respelled]) + "\n")
        items = list(read_manifest(path, store.recorded_lines))
    assert isinstance(items[0], KnownJob)
    assert [str(item).split(": ", 1)[1] for item in items[1:]] == [
        "id: duplicate id 'job-000' (first on line 1)",
        "id: duplicate id 'job-000' (first on line 1)",
    ]
