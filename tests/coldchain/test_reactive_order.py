"""The order in which the reactive evaluation takes its work (coldchain/reactive.py): compartments
named by the ingester (readings out of range) before those a periodic look found, the look's in
smaller chunks so an urgent one never waits behind a whole province, and a compartment judged as
urgent not judged again from the look's queue. Pure queue logic: nothing is started."""

from __future__ import annotations

import time
from typing import Any, cast

from coldchain.core.settings import load_settings
from coldchain.reactive import LOOK_CHUNK, ReactiveEvaluation


def _idle() -> ReactiveEvaluation:
    reactive = ReactiveEvaluation(
        cast(Any, None), load_settings({}), "postgresql:///unused", (1.0, 10.0), lambda c, s: s
    )
    reactive._look = False  # the start-up look is done
    reactive._look_at = time.monotonic() + 3600
    return reactive


def test_named_compartments_come_before_what_a_look_found() -> None:
    reactive = _idle()
    reactive._found.update(dict.fromkeys(range(1, 301)))
    reactive._heard('{"compartments":[7,500]}')
    assert reactive._next() == ("urgent", [7, 500])
    kind, chunk = reactive._next() or ("", [])
    assert kind == "found" and len(chunk) == LOOK_CHUNK and 7 not in chunk  # 7 was judged as urgent
    reactive._heard('{"compartments":[900]}')
    assert reactive._next() == ("urgent", [900])  # a new name overtakes the rest of the look's queue
    assert reactive._next() == ("found", list(range(LOOK_CHUNK + 2, 2 * LOOK_CHUNK + 2)))


def test_look_at_everything_is_taken_when_asked_and_not_more_often_than_the_gap() -> None:
    reactive = _idle()
    reactive._heard('{"all":true}')
    assert reactive._next() == ("look", [])
    reactive._heard("nonsense")  # unreadable: look everywhere, but not again at once while work waits
    reactive._heard('{"compartments":[3]}')
    assert reactive._next() == ("urgent", [3])
