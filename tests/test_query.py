import pytest

from cascade.errors import QueryError
from cascade.query import Query, RangeFilter, TermFilter, parse_filters, to_epoch_seconds, validate_query

TYPES = {"title": "text", "journal": "keyword", "year": "integer", "cites": "float", "published": "date"}


def v(q: Query, max_size=100, max_chars=50):
    return validate_query(q, TYPES, max_size, max_chars)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_query_names_text(text):
    with pytest.raises(QueryError) as e:
        v(Query(text))
    assert e.value.field == "text" and "empty" in e.value.message


def test_query_too_long():
    with pytest.raises(QueryError, match="limit is 50") as e:
        v(Query("x" * 51))
    assert e.value.field == "text"


@pytest.mark.parametrize("size", [0, -1, 101])
def test_size_bounds(size):
    with pytest.raises(QueryError, match="between 1 and 100") as e:
        v(Query("ok", size=size))
    assert e.value.field == "size"


def test_from_plus_size_bound():
    with pytest.raises(QueryError) as e:
        v(Query("ok", size=10, offset=95))
    assert e.value.field == "from"


def test_text_is_stripped_and_filters_typed():
    q = v(Query("  solar  ", filters={"journal": "Energy", "year": {"gte": 2019, "lt": 2022},
                                      "published": {"gte": "2020-01-01"}, "cites": [1, 2.5]}))
    assert q.text == "solar"
    assert q.parsed_filters == (
        TermFilter("journal", "keyword", ("Energy",)),
        RangeFilter("year", "integer", gte=2019, lt=2022),
        RangeFilter("published", "date", gte=to_epoch_seconds("2020-01-01", "x")),
        TermFilter("cites", "float", (1.0, 2.5)),
    )


@pytest.mark.parametrize(
    "filters, field, text",
    [
        ({"colour": "red"}, "filters.colour", "unknown field"),
        ({"title": "x"}, "filters.title", "text fields cannot be filtered"),
        ({"year": "recent"}, "filters.year", "expected a number"),
        ({"year": 2019.5}, "filters.year", "expected an integer"),
        ({"year": {"after": 3}}, "filters.year", "range filters take"),
        ({"journal": {"gte": "a"}}, "filters.journal", "numeric or date"),
        ({"published": {"gte": "last tuesday"}}, "filters.published.gte", "expected a date"),
        ({"journal": []}, "filters.journal", "empty list"),
        ({"journal": 3.5}, "filters.journal", "expected a string"),
        ({"year": True}, "filters.year", "expected a number"),
        # Numbers are JSON numbers: a quoted one is refused, not parsed (the same rule as indexing).
        ({"year": "2005"}, "filters.year", "send the number without quotes"),
        ({"cites": {"lt": "2.5"}}, "filters.cites.lt", "send the number without quotes"),
        ({"cites": float("nan")}, "filters.cites", "finite"),
        ({"year": {"gte": float("-inf")}}, "filters.year.gte", "finite"),
        ({"year": 2**70}, "filters.year", "64-bit"),
        ({"published": "2300-01-01"}, "filters.published", "1677-09-22 to 2262-04-11"),
        ({"cites": 10 ** 400}, "filters.cites", "64-bit float"),
        ({"published": 10 ** 400}, "filters.published", "1677-09-22"),
    ],
)
def test_bad_filters_name_the_field(filters, field, text):
    with pytest.raises(QueryError) as e:
        parse_filters(filters, TYPES)
    assert e.value.field == field and text in e.value.message, str(e.value)


def test_keyword_filters_take_integers_as_indexing_stores_them():
    """Indexing stores an integer keyword value as its decimal text; a filter integer matches that text."""
    assert parse_filters({"journal": 7}, TYPES) == (TermFilter("journal", "keyword", ("7",)),)
    assert parse_filters({"journal": [7, "Energy"]}, TYPES) == (TermFilter("journal", "keyword", ("7", "Energy")),)


def test_fractional_bounds_on_an_integer_field_keep_the_same_documents():
    (f,) = parse_filters({"year": {"gte": 2019.5, "lte": 2021.5}}, TYPES)
    assert (f.gte, f.lte) == (2020, 2021)
    (f,) = parse_filters({"year": {"gt": 2019.5, "lt": 2021.5}}, TYPES)
    assert (f.gt, f.lt) == (2019, 2022)
    assert parse_filters({"year": 2019.0}, TYPES)[0].values == (2019,)  # an integral float is the integer


def test_range_bounds_beyond_a_field_match_like_its_edge():
    (f,) = parse_filters({"year": {"gte": 1e300}}, TYPES)
    assert f.gte == 2**63 - 1
    (f,) = parse_filters({"published": {"lt": "3000-01-01"}}, TYPES)
    assert f.lt == 9223372036.0


def test_filters_must_be_an_object():
    with pytest.raises(QueryError) as e:
        parse_filters(["year"], TYPES)  # type: ignore[arg-type]
    assert e.value.field == "filters"


def test_dates_are_utc_epoch_seconds():
    assert to_epoch_seconds("1970-01-02", "d") == 86400.0
    assert to_epoch_seconds("1970-01-01T01:00:00Z", "d") == 3600.0
    assert to_epoch_seconds("1971", "d") == 365 * 86400.0
