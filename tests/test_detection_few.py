"""Few, the one-entry map of the detectors' tracks, answers as a dict would whatever the operations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.detect.few import Few

_KEYS = st.sampled_from("abc")
_OPS = st.lists(st.one_of(st.tuples(st.just("set"), _KEYS, st.integers()), st.tuples(st.just("pop"), _KEYS),
                          st.tuples(st.just("del_first")), st.tuples(st.just("clear"))), max_size=30)


@given(_OPS)
def test_few_behaves_as_a_dict(ops):
    few: Few[str, int] = Few()
    model: dict[str, int] = {}
    for op in ops:
        if op[0] == "set":
            few[op[1]] = model[op[1]] = op[2]
        elif op[0] == "pop":
            assert few.pop(op[1]) == model.pop(op[1], None)
        elif op[0] == "del_first" and model:
            del few[next(iter(few))]
            del model[next(iter(model))]
        elif op[0] == "clear":
            few.clear()
            model.clear()
        assert len(few) == len(model)
        assert list(few) == list(model) and list(few.items()) == list(model.items())
        for key in "abc":
            assert (key in few) == (key in model) and few.get(key) == model.get(key)
