"""A flash's link and button lead only to paths on this site: the server refuses to store anything else."""

from __future__ import annotations

from typing import Any

import pytest

from core.flash import FlashSpec, add_flash, same_site_path
from tests.unit.test_safe_next import HOSTILE

SAME_SITE = ["/", "/courses", "/submissions/42", "/staff/assignments/3/edit?tab=extensions", "/a/./b#grade"]


@pytest.mark.parametrize("target", [target for target in HOSTILE if target is not None])
async def test_a_link_or_button_off_the_site_is_refused_before_anything_is_stored(target: str) -> None:
    assert not same_site_path(target)
    untouched: Any = object()  # any use of the transaction would fail: the refusal comes first
    for spec in (
        FlashSpec("Your grade is out", link_url=target),
        FlashSpec("Resubmit?", button_text="Go", button_action=target),
        FlashSpec("Resubmit?", button_text="Go", button_action=f"open:{target}"),
    ):
        with pytest.raises(ValueError, match=r"only .*path on this site"):
            await add_flash(untouched, 1, spec)


@pytest.mark.parametrize("target", SAME_SITE)
def test_paths_on_this_site_are_allowed(target: str) -> None:
    assert same_site_path(target)
