"""Where the login sends people next: only a path on this site, whatever the query string says."""

from __future__ import annotations

import pytest

from api.routes.auth import safe_next

HOSTILE = [
    "//evil.example",
    "//evil.example/path",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",  # the URL parser drops the TAB, leaving //evil.example
    "/\n/evil.example",
    "/%09/evil.example",
    "/%5Cevil.example",
    "/%2F/evil.example",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "evil.example",
    "/\x00/evil.example",
    "/\x7f/evil.example",
    "",
    None,
]


@pytest.mark.parametrize("target", HOSTILE)
def test_anything_that_could_leave_the_site_goes_home(target: str | None) -> None:
    assert safe_next(target) == "/"
    assert safe_next(target, "/courses") == "/courses"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/courses", "/courses"),
        ("/submissions/42", "/submissions/42"),
        ("/staff/assignments/3/edit?tab=extensions", "/staff/assignments/3/edit?tab=extensions"),
        ("/submissions/42/", "/submissions/42/"),
        ("/courses/../staff", "/staff"),
        ("/..//evil.example", "/evil.example"),  # normalised into a path on this site
        ("/a/./b", "/a/b"),
    ],
)
def test_paths_on_this_site_are_kept_normalised(target: str, expected: str) -> None:
    assert safe_next(target) == expected
