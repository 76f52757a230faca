"""few.py, the one-entry maps of the detectors' tracks, answer as a dict would whatever the operations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.detect import few
from gateway.detect.few import Few
from gateway.detect.marks import Written, due

_KEYS = st.sampled_from("abc")
_OPS = st.lists(st.one_of(st.tuples(st.just("set"), _KEYS, st.integers()), st.tuples(st.just("pop"), _KEYS),
                          st.tuples(st.just("del_first")), st.tuples(st.just("clear")),
                          st.tuples(st.just("keep"), st.integers())), max_size=30)


@given(_OPS)
def test_few_behaves_as_a_dict(ops):
    held: Few[str, int] = None
    model: dict[str, int] = {}
    for op in ops:
        if op[0] == "set":
            held = few.put(held, op[1], op[2])
            model[op[1]] = op[2]
        elif op[0] == "pop":
            held, value = few.pop(held, op[1])
            assert value == model.pop(op[1], None)
        elif op[0] == "del_first" and model:
            held, _ = few.pop(held, few.first(held))
            del model[next(iter(model))]
        elif op[0] == "clear":
            held = None
            model.clear()
        elif op[0] == "keep":
            held = few.keep(held, lambda value, above=op[1]: value > above)
            model = {key: value for key, value in model.items() if value > op[1]}
        assert few.size(held) == len(model)
        assert list(few.items(held)) == list(model.items())
        for key in "abc":
            assert few.has(held, key) == (key in model) and few.get(held, key) == model.get(key)


def test_one_entry_is_a_tuple_and_two_a_dict():
    held = few.put(None, "s1", 1.0)
    assert held == ("s1", 1.0)
    held = few.put(held, "s2", 2.0)
    assert held == {"s1": 1.0, "s2": 2.0}
    assert few.keep(held, lambda at: at > 1.5) == ("s2", 2.0)  # back to the tuple once one is left


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 2)), max_size=60), st.sampled_from([0.5, 1.0, 6.0]))
def test_a_tracks_marks_say_due_as_a_table_of_last_writes_would(steps, every):
    """marks.py against the table of marks it replaced: due unless written within `every`."""
    written: Written = ()
    last: dict[int, float] = {}
    at = 1_800_000_000.0
    for mark, gap in steps:
        at += gap
        expected = mark not in last or at - last[mark] >= every
        result = due(written, mark + 10**12, at, every, 0)  # marks are hashes: never a small number
        assert (result is not None) == expected
        if result is not None:
            written, last[mark] = result, at
