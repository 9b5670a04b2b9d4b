"""Query expressions: both syntaxes, expected matching sets, carets on errors."""

from __future__ import annotations

import pytest

from lsstlite.repo import Butler, ExpressionError

from .conftest import GRID, grid_band, grid_day_obs

GOOD = [
    ("", lambda e, d: True),
    ("band = 'r'", lambda e, d: grid_band(e) == "r"),
    ('band = "g"', lambda e, d: grid_band(e) == "g"),
    ("band='r' AND visit IN (1, 3) AND detector > 2", lambda e, d: e in (1, 3) and d > 2),
    ("exposure.day_obs = 20220526", lambda e, d: e > 5),
    ("visit.day_obs = 20220525 AND detector = 0", lambda e, d: e <= 5 and d == 0),
    ("day_obs = 20220526 AND band = 'g'", lambda e, d: e > 5 and e % 2 == 0),
    ("NOT band = 'r'", lambda e, d: grid_band(e) != "r"),
    ("band != 'r' OR detector = 1", lambda e, d: grid_band(e) != "r" or d == 1),
    ("(visit < 3 OR visit >= 9) AND detector <= 1", lambda e, d: (e < 3 or e >= 9) and d <= 1),
    ("visit IN (1..5)", lambda e, d: 1 <= e <= 5),
    ("visit IN (1..9:2, 10)", lambda e, d: e in (1, 3, 5, 7, 9, 10)),
    ("visit NOT IN (2..10)", lambda e, d: e == 1),
    ("exposure.mjd > 59708.5", lambda e, d: e >= 9),
    ("physical_filter = 'g_01' and detector = 3", lambda e, d: e % 2 == 0 and d == 3),
    ("2 < detector", lambda e, d: d > 2),
    ("exposure.obs_type = 'science' AND instrument = 'SimCam'", lambda e, d: True),
    ("NOT (visit > 1 AND visit < 10)", lambda e, d: e in (1, 10)),
    ("visit = -1", lambda e, d: False),
    ("exposure.exptime = 30.0 AND visit = 4", lambda e, d: e == 4),
    # data-ID syntax
    ("visit=1..9:2^10 detector=0^3", lambda e, d: e in (1, 3, 5, 7, 9, 10) and d in (0, 3)),
    ("band=r", lambda e, d: grid_band(e) == "r"),
    ("visit=4", lambda e, d: e == 4),
    ("exposure=2..4 detector=1", lambda e, d: 2 <= e <= 4 and d == 1),
    ("day_obs=20220525 band=g", lambda e, d: grid_day_obs(e) == 20220525 and e % 2 == 0),
]


@pytest.mark.parametrize(("where", "expected"), GOOD, ids=[w or "<empty>" for w, _ in GOOD])
def test_good_expressions(grid_butler: Butler, where, expected) -> None:
    refs = grid_butler.query_datasets("psf", where, collections="grid")
    got = {(r.data_id["exposure"], r.data_id["detector"]) for r in refs}
    assert got == {(e, d) for e, d in GRID if expected(e, d)}


def test_bind_variables(grid_butler: Butler) -> None:
    refs = grid_butler.query_datasets(
        "psf",
        "visit IN (visits) AND band = b AND detector = det",
        collections="grid",
        bind={"visits": [1, 2, 3], "b": "r", "det": 2},
    )
    assert {(r.data_id["exposure"], r.data_id["detector"]) for r in refs} == {(1, 2), (3, 2)}


BAD = [
    ("visit IN (1, 2", 14),
    ("band = ", 7),
    ("foo ~ 3", 4),
    ("foo = 3", 0),
    ("band = 'r", 7),
    ("visit = 1 AND", 13),
    ("visit = 1 detector = 2", 10),
    ("(visit = 1", 10),
    ("band > 3", 7),
    ("visit = 'x'", 8),
    ("visit IN (1..x)", 13),
    ("visit IN (1..5:0)", 15),
    ("exposure.nope = 1", 0),
    ("visit=1..3 detector=a", 20),
    ("visit = 1 AND bogus IN (1)", 14),
    ("visit IN ()", 10),
    ("AND visit = 1", 0),
]


@pytest.mark.parametrize(("where", "position"), BAD, ids=[w for w, _ in BAD])
def test_bad_expressions_point_at_the_problem(grid_butler: Butler, where, position) -> None:
    with pytest.raises(ExpressionError) as info:
        grid_butler.query_datasets("psf", where, collections="grid")
    err = info.value
    assert err.position == position, str(err)
    lines = str(err).splitlines()
    assert lines[1].strip() == where.strip()
    assert lines[2].index("^") - lines[1].index(where[:1] or " ") == position


def test_unknown_names_are_named(grid_butler: Butler) -> None:
    with pytest.raises(ExpressionError, match="unknown name 'colour'"):
        grid_butler.query_datasets("psf", "colour = 'red'", collections="grid")
    with pytest.raises(ExpressionError, match="unknown name 'colour'"):
        grid_butler.query_datasets("psf", "colour=red", collections="grid")


def test_expression_error_is_value_error() -> None:
    assert issubclass(ExpressionError, ValueError)
