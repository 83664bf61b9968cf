import json

import numpy as np
import pandas as pd
import pytest

from workbench.data.schema import TABLES, DataError, describe, validate


def products(**over):
    d = {"product_id": ["a", "b", "c"], "title": ["Red Mug", "Blue Mug", "Tea Pot"],
         "category": ["Home > Kitchen > Mugs", "Home > Kitchen > Mugs", None], "price": [3.5, 4.0, None],
         "attributes": [json.dumps({"colour": "red"}), None, "{}"]}
    d.update(over)
    return pd.DataFrame(d)


def test_valid_products_get_canonical_columns_and_types():
    out = validate(products(), "products")
    assert list(out.columns) == TABLES["products"].names
    assert out["description"].isna().all()  # optional column filled with nulls
    assert out["price"].dtype == np.float64


def test_missing_required_column_is_named():
    with pytest.raises(DataError, match=r"p\.csv, column 'title': missing column") as e:
        validate(products().drop(columns="title"), "products", file="p.csv")
    assert e.value.problems[0][2] == "title"


def test_duplicate_id_names_both_rows():
    with pytest.raises(DataError, match=r"row 3, column 'product_id': duplicate id 'a' \(first at row 1\)"):
        validate(products(product_id=["a", "b", "a"]), "products")


def test_line_numbers_for_text_files():
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'title': blank text"):
        validate(products(title=["x", "  ", "z"]), "products", file="p.csv", line_offset=1)


@pytest.mark.parametrize("col,val,msg", [
    ("price", ["1", "-2", "3"], "negative price"),
    ("price", ["1", "abc", "3"], "not a valid float"),
    ("price", [1.0, float("inf"), 3.0], "infinite number"),
    ("attributes", ["[1, 2]", None, None], "not a JSON object"),
    ("attributes", ["{bad", None, None], "not a JSON object"),
    ("product_id", ["a", None, "c"], "empty value in a required column"),
    ("title", ["Red\x00Mug", "b", "c"], r"NUL byte \(\\x00\) in the text of table 'products'"),
    ("description", [None, "long\x00text", None], r"NUL byte \(\\x00\) in the text of table 'products'"),
])
def test_bad_values_are_reported_with_row_and_column(col, val, msg):
    with pytest.raises(DataError, match=msg) as e:
        validate(products(**{col: val}), "products")
    assert e.value.problems[0][2] == col and e.value.problems[0][1] in (1, 2)


@pytest.mark.parametrize("grade,msg", [("inf", "infinite number"), (float("-inf"), "infinite number"),
                                       ("nan", "not a valid float"), (float("nan"), "empty value in a required column")])
def test_relevance_grades_must_be_finite_numbers(grade, msg):
    j = pd.DataFrame({"query_id": [1, 2], "product_id": ["a", "b"], "relevance": [2.0, grade]})
    with pytest.raises(DataError, match=rf"row 2, column 'relevance': {msg}"):
        validate(j, "judgments")


def test_empty_table_is_an_error():
    with pytest.raises(DataError, match="has no rows"):
        validate(products().iloc[:0], "products")


def log(**over):
    d = {"session_id": [1, 1], "user_id": ["u1", None], "query_id": [1, 1], "product_id": ["a", "b"],
         "position": [1, 2], "impressed": [True, True], "clicked": [True, False], "purchased": [False, False],
         "time": ["2026-01-01T00:00:00Z"] * 2}
    d.update(over)
    return pd.DataFrame(d)


def test_search_log_rules_and_references():
    others = {"products": validate(products(), "products"),
              "queries": validate(pd.DataFrame({"query_id": [1], "query": ["mug"]}), "queries"),
              "users": validate(pd.DataFrame({"user_id": ["u1"]}), "users")}
    out = validate(log(), "search_log", others=others)
    assert out["time"].dt.tz is not None and out["clicked"].tolist() == [True, False]
    with pytest.raises(DataError, match="clicked but not impressed"):
        validate(log(impressed=[False, True]), "search_log")
    with pytest.raises(DataError, match="purchased but not clicked"):
        validate(log(purchased=[False, True]), "search_log")
    with pytest.raises(DataError, match="position must be >= 1"):
        validate(log(position=[0, 1]), "search_log")
    with pytest.raises(DataError, match=r"row 2, column 'product_id': unknown product_id 'zz': not in table 'products'"):
        validate(log(product_id=["a", "zz"]), "search_log", others=others)
    with pytest.raises(DataError, match=r"column 'session_id,position': duplicate id \(1, 1\)"):
        validate(log(position=[1, 1]), "search_log")
    with pytest.raises(DataError, match="not a valid bool"):
        validate(log(clicked=["yes", "no"]), "search_log")


def test_many_problems_are_summarised():
    bad = products(product_id=[None] * 3, title=[""] * 3, price=[-1.0] * 3).pipe(lambda d: pd.concat([d] * 10))
    with pytest.raises(DataError, match=r"empty value in a required column \(30 rows in all\)") as e:
        validate(bad, "products")
    assert len(e.value.problems) == 15  # five rows shown per rule and column
    many = DataError([("f", i, "c", "bad") for i in range(1, 40)])
    assert "... and 19 more problems" in str(many)


def test_describe_lists_every_table():
    text = describe()
    for name in TABLES:
        assert f"### `{name}`" in text
