"""proxy.decisions: extraction never raises, comparisons follow JSON (not Python) equality."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jmespath
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

import proxy.decisions as decisions
from proxy.config import Decision, Route
from proxy.decisions import (
    Extracted,
    Extractor,
    RouteDecisions,
    build_comparator,
    compile_expression,
    json_equal,
    parse_json,
)

FAST = settings(max_examples=200, deadline=None)
DOCS = settings(max_examples=100, deadline=None)  # whole generated documents cost ~3 ms each

# A few keys shared by documents and paths, so that generated paths often hit.
KEYS = st.sampled_from(["a", "b", "decision", "_x", "A1"])
IDENTIFIERS = KEYS | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True)
DOTTED = st.lists(IDENTIFIERS, min_size=1, max_size=4).map(".".join)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
NUMBERS = st.integers(min_value=-(2**70), max_value=2**70) | FLOATS  # beyond what a JSON parser gives
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | FLOATS | st.text(max_size=6)
OBJECT_KEYS = KEYS | st.text(max_size=3)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(OBJECT_KEYS, inner, max_size=4),
    max_leaves=10,
)
NON_NULL = JSON.filter(lambda value: value is not None)
TOLERANCES = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.integers(0, 10**6)


def comparator(compare: str = "exact", **kwargs: Any) -> decisions.Comparator:
    return build_comparator(Decision(primary="decision", model="decision", compare=compare, **kwargs))


EXACT = comparator()
MAP_SAMPLE = comparator("map", map={"APPROVE": "approve", 1: "one", "yes": True})
COMPARATORS = [EXACT, comparator("numeric", tolerance=0.5), MAP_SAMPLE]


def route(**overrides: Any) -> Route:
    config: dict[str, Any] = {
        "name": "loans",
        "primary": {"url": "http://primary"},
        "model": {"url": "http://model"},
        "decision": {"primary": "decision", "model": "result.label", "confidence": "result.p"},
    }
    return Route.model_validate(config | overrides)


# --- exact ---------------------------------------------------------------------------------------


@DOCS
@given(NON_NULL)
def test_exact_is_reflexive_on_an_equal_copy(value: Any) -> None:
    assert EXACT(value, orjson.loads(orjson.dumps(value))) is True


@DOCS
@given(NON_NULL, NON_NULL)
def test_exact_is_symmetric(a: Any, b: Any) -> None:
    assert EXACT(a, b) is EXACT(b, a)


@DOCS
@given(JSON)
def test_either_side_none_gives_none_for_every_compare_mode(value: Any) -> None:
    for compare in COMPARATORS:
        assert compare(None, value) is None
        assert compare(value, None) is None


def test_bool_decision_never_equals_number() -> None:
    assert EXACT(True, 1) is False
    assert EXACT(0, False) is False
    assert EXACT([True], [1]) is False
    assert EXACT({"a": 1.0}, {"a": True}) is False
    assert EXACT(True, True) is True


def test_int_and_float_with_the_same_value_agree() -> None:
    assert EXACT(1, 1.0) is True
    assert EXACT({"n": [2]}, {"n": [2.0]}) is True
    assert EXACT(1, 1.5) is False


def test_strings_compare_case_sensitively_and_never_equal_numbers() -> None:
    assert EXACT("Approve", "approve") is False
    assert EXACT("1", 1) is False


def test_containers_compare_deeply_lists_by_order_objects_by_key() -> None:
    assert EXACT({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}) is True
    assert EXACT([1, 2], [2, 1]) is False
    assert EXACT([None], [None]) is True
    assert EXACT([None], []) is False
    assert EXACT({"a": None}, {"b": None}) is False
    assert EXACT({}, []) is False


def test_deeply_nested_documents_compare_without_exhausting_the_stack() -> None:
    a: Any = "leaf"
    b: Any = "leaf"
    for _ in range(20_000):
        a, b = [a], [b]
    assert json_equal(a, b) is True


# --- numeric -------------------------------------------------------------------------------------


@FAST
@given(NUMBERS, NUMBERS, TOLERANCES)
def test_numeric_is_reflexive_and_symmetric(a: Any, b: Any, tolerance: float) -> None:
    compare = comparator("numeric", tolerance=tolerance)
    assert compare(a, a) is True
    assert compare(a, b) is compare(b, a)


@FAST
@given(NUMBERS, NUMBERS, TOLERANCES)
def test_numeric_agrees_iff_decimal_difference_is_within_tolerance(a: Any, b: Any, tolerance: float) -> None:
    exact_difference = abs(Fraction(repr(a)) - Fraction(repr(b)))
    expected = exact_difference <= Fraction(repr(tolerance))
    assert comparator("numeric", tolerance=tolerance)(a, b) is expected


@FAST
@given(NUMBERS, NUMBERS)
def test_numeric_with_zero_tolerance_is_exact_equality(a: Any, b: Any) -> None:
    assert comparator("numeric", tolerance=0)(a, b) is EXACT(a, b)


@pytest.mark.parametrize(
    ("primary", "model", "tolerance", "agree"),
    [
        (1.0, 1.01, 0.01, True),  # in binary floating point |1.0 - 1.01| > 0.01
        (1.01, 1.0, 0.01, True),
        (1.0, 1.0100000001, 0.01, False),
        (0.3, 0.1 + 0.2, 0.0, False),  # 0.30000000000000004 is another JSON number
        (0.3, 0.1 + 0.2, 1e-9, True),
        (100, 99, 1, True),
        (100, 98.99, 1, False),
        (10**30, 10**30 + 1, 0, False),  # integers beyond float precision stay exact
        (10**30, 10**30 + 1, 1, True),
    ],
)
def test_numeric_tolerance_boundary_is_exact_on_written_decimals(
    primary: float, model: float, tolerance: float, agree: bool
) -> None:
    assert comparator("numeric", tolerance=tolerance)(primary, model) is agree


@pytest.mark.parametrize("other", ["1", True, False, [1], {"n": 1}, math.nan, math.inf, -math.inf])
def test_numeric_with_a_non_number_side_is_not_comparable(other: Any) -> None:
    compare = comparator("numeric", tolerance=1.0)
    assert compare(1, other) is None
    assert compare(other, 1) is None


# --- map -----------------------------------------------------------------------------------------


def test_mapped_model_label_is_compared_with_the_primary_label() -> None:
    assert MAP_SAMPLE("approve", "APPROVE") is True
    assert MAP_SAMPLE("decline", "APPROVE") is False
    assert MAP_SAMPLE("APPROVE", "APPROVE") is False  # the mapped label, not the raw one, is compared


def test_unmapped_model_label_is_compared_unchanged() -> None:
    assert MAP_SAMPLE("decline", "decline") is True
    assert MAP_SAMPLE("decline", "Decline") is False


def test_bool_model_label_never_matches_an_int_key_and_vice_versa() -> None:
    ints = comparator("map", map={1: "approve"})
    assert ints("approve", 1) is True
    assert ints("approve", 1.0) is True  # JSON has one number type
    assert ints("approve", True) is False
    bools = comparator("map", map={True: "approve"})
    assert bools("approve", True) is True
    assert bools("approve", 1) is False


def test_map_targets_may_be_any_json_value_compared_exactly() -> None:
    compare = comparator("map", map={"yes": True, "no": False})
    assert compare(True, "yes") is True
    assert compare(1, "yes") is False


@DOCS
@given(st.lists(SCALARS, max_size=3) | st.dictionaries(KEYS, SCALARS, max_size=3), JSON)
def test_unhashable_model_labels_are_never_mapped(model: Any, primary: Any) -> None:
    if primary is not None:
        assert MAP_SAMPLE(primary, model) is EXACT(primary, model)


@DOCS
@given(NON_NULL)
def test_map_is_reflexive_on_labels_it_does_not_map(value: Any) -> None:
    compare = comparator("map", map={"__never_generated__": "x"})
    assert compare(value, value) is True


# --- expressions ---------------------------------------------------------------------------------


@DOCS
@given(DOTTED, JSON)
def test_fast_path_agrees_with_jmespath(path: str, doc: Any) -> None:
    assert compile_expression(path)(doc) == jmespath.search(path, doc)


@DOCS
@given(st.lists(KEYS, min_size=1, max_size=3), NON_NULL)
def test_fast_path_finds_values_stored_at_the_path(keys: list[str], value: Any) -> None:
    doc: Any = value
    for key in reversed(keys):
        doc = {key: doc, "other": 1}
    assert compile_expression(".".join(keys))(doc) is value


def test_plain_dotted_paths_do_not_use_jmespath(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(expr: str) -> None:
        raise AssertionError(f"jmespath.compile({expr!r}) called")

    monkeypatch.setattr(jmespath, "compile", refuse)
    assert compile_expression("usage.total_tokens")({"usage": {"total_tokens": 7}}) == 7


@DOCS
@given(st.sampled_from(["a[0]", "a.b[-1]", "*.a", "length(a)", "abs(a)", "a || b", "[a, b]", '"a-b"']), JSON)
def test_general_expressions_agree_with_jmespath_or_give_none_on_error(expr: str, doc: Any) -> None:
    try:
        expected = jmespath.search(expr, doc)
    except jmespath.exceptions.JMESPathError:
        expected = None
    assert compile_expression(expr)(doc) == expected


def test_invalid_expression_is_refused_when_compiled() -> None:
    with pytest.raises(jmespath.exceptions.JMESPathError):
        compile_expression("a[")


# --- parsing and extraction ----------------------------------------------------------------------


@FAST
@given(st.binary(max_size=64))
def test_parse_json_never_raises_on_arbitrary_bytes(body: bytes) -> None:
    parse_json(body)


@DOCS
@given(JSON)
def test_parse_json_reads_what_was_serialised(doc: Any) -> None:
    assert json_equal(parse_json(orjson.dumps(doc)), doc) or doc is None


@pytest.mark.parametrize("body", [None, b"", b"{", b"\xff", b'"\xff"', b"null", b"NaN", b"[" * 2000])
def test_parse_json_gives_none_for_empty_invalid_or_null_bodies(body: bytes | None) -> None:
    assert parse_json(body) is None


FULL = Extractor("decision", confidence="confidence", usage="usage.units", explanation="why")
JMES = Extractor("decision[0]", confidence="max(scores)", usage="sum(usage)", explanation="keys(@)")


@DOCS
@given(JSON | st.dictionaries(st.sampled_from(["decision", "confidence", "usage", "why"]), JSON))
def test_extractor_never_raises_and_returns_well_typed_fields(doc: Any) -> None:
    for extractor in (FULL, JMES):
        got = extractor.extract(doc)
        assert got.decision is extractor.decision_of(doc) or got.decision == extractor.decision_of(doc)
        assert got.confidence is None or (type(got.confidence) is float and math.isfinite(got.confidence))
        assert got.usage is None or (type(got.usage) is float and got.usage >= 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.9, 0.9), (1, 1.0), (1.5, 1.5), (-2, -2.0), (True, None), (False, None), ("0.9", None),
     ([0.9], None), ({}, None), (None, None), (10**400, None), (math.nan, None), (math.inf, None)],
)  # fmt: skip
def test_confidence_is_any_finite_number_but_never_a_bool(value: Any, expected: float | None) -> None:
    assert FULL.extract({"decision": "x", "confidence": value}).confidence == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0.0), (12, 12.0), (0.5, 0.5), (-0.0, 0.0), (-1, None), (True, None), ("12", None),
     ([12], None), (math.inf, None)],
)  # fmt: skip
def test_usage_is_a_finite_non_negative_number_but_never_a_bool(value: Any, expected: float | None) -> None:
    got = FULL.extract({"usage": {"units": value}}).usage
    assert got == expected
    assert got is None or math.copysign(1.0, got) == 1.0


def test_no_document_gives_no_decision_even_for_a_literal_expression() -> None:
    literal = Extractor('`"approve"`', confidence="`0.9`")
    assert literal.decision_of(None) is None
    assert literal.extract(None) == Extracted(None, None, None, None)
    assert literal.extract({}) == Extracted("approve", 0.9, None, None)


def test_json_null_or_missing_decision_is_no_decision() -> None:
    assert FULL.decision_of({"decision": None}) is None
    assert FULL.decision_of({"other": 1}) is None
    assert FULL.decision_of(["decision"]) is None


def test_fields_that_are_not_configured_are_none() -> None:
    doc = {"decision": "approve", "confidence": 0.9, "usage": {"units": 3}, "why": ["income"]}
    assert Extractor("decision").extract(doc) == Extracted("approve", None, None, None)
    assert FULL.extract(doc) == Extracted("approve", 0.9, 3.0, ["income"])


# --- routes and segments -------------------------------------------------------------------------


def test_route_decisions_read_both_sides_and_compare_with_the_route_rule() -> None:
    rd = RouteDecisions(route())
    model = rd.model.extract({"result": {"label": "approve", "p": 0.8}})
    assert model.confidence == 0.8
    assert rd.compare(rd.primary.decision_of({"decision": "approve"}), model.decision) is True
    rule = {"primary": "d", "model": "d", "compare": "map", "map": {"A": "a"}}
    mapped = RouteDecisions(route(decision=rule))
    assert mapped.compare("a", "A") is True


def segment_of(expr: str | None, body: Any = None, **view: Any) -> Any:
    rd = RouteDecisions(route(segment=expr))
    return rd.segment(
        view.get("method", "POST"), view.get("path", "/v1/decide"), view.get("query", {}),
        view.get("headers", {}), body,
    )  # fmt: skip


def test_segment_reads_method_path_query_headers_and_body() -> None:
    assert segment_of("method") == "POST"
    assert segment_of("path") == "/v1/decide"
    assert segment_of("query.region", query={"region": "eu"}) == "eu"
    assert segment_of('headers."x-tenant"', headers={"X-Tenant": "acme"}) == "acme"
    assert segment_of("body.applicant.country", {"applicant": {"country": "FR"}}) == "FR"
    assert segment_of("body.amount", {"amount": 1200}) == 1200


def test_repeated_headers_are_joined_and_repeated_query_keeps_the_first_value() -> None:
    headers = CIMultiDict([("X-Tag", "a"), ("x-tag", "b")])
    assert segment_of('headers."x-tag"', headers=headers) == "a, b"
    assert segment_of("query.k", query=MultiDict([("k", "1"), ("k", "2")])) == "1"


def test_non_scalar_segment_becomes_compact_json_text_with_sorted_keys() -> None:
    assert segment_of("body.tags", {"tags": ["a", "b"]}) == '["a","b"]'
    assert segment_of("body.geo", {"geo": {"z": 1, "a": None}}) == '{"a":null,"z":1}'


def test_segment_is_none_without_expression_missing_value_or_on_error() -> None:
    assert segment_of(None, {"a": 1}) is None
    assert segment_of("body.missing", {"a": 1}) is None
    assert segment_of("body.a", None) is None
    assert segment_of("abs(body)", "not a number") is None


@DOCS
@given(JSON)
def test_segment_never_raises_and_gives_a_grouping_key(body: Any) -> None:
    for expr in ("body", "body.a", "body[0]"):
        got = segment_of(expr, body)
        assert got is None or isinstance(got, str | int | float | bool)
