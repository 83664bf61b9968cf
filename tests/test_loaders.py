import json
import re

import pytest

from workbench import Workspace
from workbench.data.schema import DataError

from .conftest import need_dataset

HD_MAP = {"product_id": "product_uid", "title": "product_title"}


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def csvs(tmp_path):
    p = write(tmp_path / "products.csv", "product_uid,product_title\n1,Angle Bracket\n2,Deck Stain\n3,Café Table\n")
    j = write(tmp_path / "judg.csv", "query,product_uid,relevance\nangle bracket,1,3.0\n l  bracket ,1,2.5\ndeck,2,2.0\n")
    return p, j


def test_csv_import_with_mapping(tmp_path, csvs):
    ws = Workspace(tmp_path / "w")
    counts = ws.import_csv({"products": csvs[0], "judgments": csvs[1]}, HD_MAP, relevance_threshold=2.5)
    assert counts == {"products": 3, "queries": 3, "judgments": 3}
    assert ws.table("queries")["query"].tolist() == ["angle bracket", "l bracket", "deck"]  # whitespace normalised
    assert ws.table("products")["title"].tolist()[2] == "Café Table"
    assert ws.meta["relevance_threshold"] == 2.5 and ws.meta["source"] == "csv"


def test_latin1_file_needs_its_encoding(tmp_path):
    p = write(tmp_path / "p.csv", "product_uid,product_title\n1,Mug\n2,Caf\u00e9 Table\n", "latin-1")
    with pytest.raises(DataError, match=r"p\.csv: line 3, byte 6 is not valid utf-8.*--encoding latin-1"):
        Workspace(tmp_path / "w").import_csv({"products": p}, HD_MAP)
    assert not (tmp_path / "w").exists()
    Workspace(tmp_path / "w").import_csv({"products": p}, HD_MAP, encoding="latin-1")
    assert Workspace(tmp_path / "w").table("products")["title"][1] == "Café Table"


def test_missing_column_names_file_and_column(tmp_path, csvs):
    with pytest.raises(DataError, match=r"products\.csv, column 'product_title ': missing column.*columns found: product_uid, product_title"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0]}, {"product_id": "product_uid", "title": "product_title "})
    with pytest.raises(DataError, match=r"judg\.csv, column 'relevance': missing column"):
        bad = write(tmp_path / "judg.csv", "query,product_uid\nx,1\n")
        Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": bad}, HD_MAP)


def test_duplicate_ids_name_row_line_and_file_column(tmp_path):
    p = write(tmp_path / "p.csv", "product_uid,product_title\n1,A\n2,B\n1,C\n")
    with pytest.raises(DataError, match=r"p\.csv, row 3 \(line 4\), column 'product_uid': duplicate id '1' \(first at row 1\)"):
        Workspace(tmp_path / "w").import_csv({"products": p}, HD_MAP)


def test_judgment_for_unknown_product(tmp_path, csvs):
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\nmug,1,3\nmug,99,2\n")
    with pytest.raises(DataError, match=r"j\.csv, row 2 \(line 3\), column 'product_uid': unknown product_id '99'"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": j}, HD_MAP)
    assert not Workspace(tmp_path / "w").has("products")  # nothing half-written


def test_duplicate_judgments_after_whitespace_normalisation(tmp_path, csvs):
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\nslide bolt,1,3\nslide  bolt,1,2\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'query,product_uid': duplicate judgment for query 'slide bolt'.*--on-duplicate"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": j}, HD_MAP)
    ws = Workspace(tmp_path / "w")
    ws.import_csv({"products": csvs[0], "judgments": j}, HD_MAP, on_duplicate="mean")
    assert ws.table("judgments")["relevance"].tolist() == [2.5]


def test_na_like_queries_are_queries_and_case_variants_one_query(tmp_path, csvs):
    """pandas reads NA, null, N/A, None and nan as missing by default; here they are queries. 'Slide Bolt' and
    'slide bolt' are one query, so their conflicting grades for one product are a duplicate, not two queries."""
    words = ["NA", "null", "N/A", "None", "nan", "#N/A", "-NaN", "<NA>"]
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\n" + "".join(f"{w},1,3\n" for w in words))
    ws = Workspace(tmp_path / "w")
    ws.import_csv({"products": csvs[0], "judgments": j}, HD_MAP)
    assert ws.table("queries")["query"].tolist() == words
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\nSlide Bolt,1,3\nslide  bolt,1,1\ndeck,2,2\n")
    with pytest.raises(DataError, match=r"j\.csv.*row 2 \(line 3\).*duplicate judgment for query 'Slide Bolt'.*without case"):
        Workspace(tmp_path / "w2").import_csv({"products": csvs[0], "judgments": j}, HD_MAP)
    ws = Workspace(tmp_path / "w3")
    ws.import_csv({"products": csvs[0], "judgments": j}, HD_MAP, on_duplicate="max")
    assert ws.table("queries")["query"].tolist() == ["Slide Bolt", "deck"] and ws.table("judgments")["relevance"].tolist() == [3, 2]


def test_empty_and_undecodable_judgment_files_are_named(tmp_path, csvs):
    for text, msg in ((b"", "empty file"), (b"query,product_uid,relevance\nm\xe9lange,1,3\n", "not valid utf-8")):
        (tmp_path / "bad.csv").write_bytes(text)
        with pytest.raises(DataError, match=rf"bad\.csv.*{msg}"):
            Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": tmp_path / "bad.csv"}, HD_MAP)


@pytest.mark.parametrize("text,msg", [
    ("", "empty file"),
    ("   \n", "empty file"),
    ("product_uid,product_title\n", "no data rows"),
    ('product_uid,product_title\n1,"unclosed\n', "malformed CSV"),
    ("product_uid,product_title\n1,A,extra\n2,B\n", "malformed CSV: line 2 has 3 fields, the header has 2"),
    ("product_uid,product_title\n1,\n", r"row 1 \(line 2\), column 'product_title': empty value"),
])
def test_bad_csv_files(tmp_path, text, msg):
    p = write(tmp_path / "p.csv", text)
    with pytest.raises(DataError, match=msg):
        Workspace(tmp_path / "w").import_csv({"products": p}, HD_MAP)


def test_missing_file_and_bad_relevance(tmp_path, csvs):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        Workspace(tmp_path / "w").import_csv({"products": tmp_path / "nope.csv"}, HD_MAP)
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\nmug,1,high\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'relevance': not a valid float"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": j}, HD_MAP)
    j = write(tmp_path / "j.csv", "query,product_uid,relevance\n   ,1,3\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'query': empty query"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0], "judgments": j}, HD_MAP)


def test_separator_and_threshold_are_checked(tmp_path, csvs):
    for sep in ("", ";;", '"', "\n"):
        with pytest.raises(ValueError, match=r"the field separator \(--sep\) must be one character.*got " + re.escape(repr(sep))):
            Workspace(tmp_path / "w").import_csv({"products": csvs[0]}, HD_MAP, sep=sep)
    with pytest.raises(ValueError, match="relevance threshold must be a finite number, got nan"):
        Workspace(tmp_path / "w").import_csv({"products": csvs[0]}, HD_MAP, relevance_threshold=float("nan"))
    assert not (tmp_path / "w").exists()
    tsv = write(tmp_path / "p.tsv", "product_uid\tproduct_title\n1\tAngle Bracket\n")
    assert Workspace(tmp_path / "w").import_csv({"products": tsv}, HD_MAP, sep="\\t") == {"products": 1}  # '\t' typed in a shell


def test_nul_byte_in_a_title_is_named(tmp_path):
    p = write(tmp_path / "p.csv", "product_uid,product_title\n1,Angle Bracket\n2,Deck\x00Stain\n")
    with pytest.raises(DataError, match=r"p\.csv, row 2 \(line 3\), column 'product_title': NUL byte .* table 'products'"):
        Workspace(tmp_path / "w").import_csv({"products": p}, HD_MAP)


def test_search_log_csv_creates_users_and_checks_funnel(tmp_path, csvs):
    log = ("session,user,query,product_uid,position,impressed,clicked,purchased,time\n"
           "1,u1,deck stain,2,1,true,true,true,2026-01-01T10:00:00Z\n"
           "1,u1,deck stain,1,2,true,false,false,2026-01-01T10:00:00Z\n")
    ws = Workspace(tmp_path / "w")
    maps = {**HD_MAP, "session_id": "session", "user_id": "user"}
    counts = ws.import_csv({"products": csvs[0], "search_log": write(tmp_path / "log.csv", log)}, maps)
    assert counts["users"] == 1 and counts["search_log"] == 2
    bad = log.replace("true,false,false", "false,true,false")
    with pytest.raises(DataError, match=r"log\.csv, row 2 \(line 3\), column 'clicked': clicked but not impressed"):
        Workspace(tmp_path / "w2").import_csv({"products": csvs[0], "search_log": write(tmp_path / "log.csv", bad)}, maps)


def lcrec(tmp_path, items=None, inter=None):
    items = items if items is not None else {
        "0": {"title": "Relay Kit &amp; Capacitor", "brand": "Supco", "categories": "Industrial,Electrical,Relays"},
        "1": {"title": "Staples", "description": "Heavy duty", "categories": "Industrial,Fasteners"}}
    inter = inter if inter is not None else {"u0": [0, 1], "u1": [1]}
    i, s = tmp_path / "x.item.json", tmp_path / "x.inter.json"
    i.write_text(json.dumps(items) if not isinstance(items, str) else items)
    s.write_text(json.dumps(inter) if not isinstance(inter, str) else inter)
    return i, s


def test_lcrec_import(tmp_path):
    ws = Workspace(tmp_path / "w")
    assert ws.import_lcrec(*lcrec(tmp_path)) == {"products": 2, "users": 2, "interactions": 3}
    p = ws.table("products")
    assert p["title"][0] == "Relay Kit & Capacitor" and p["category"][0] == "Industrial > Electrical > Relays"
    inter = ws.table("interactions")
    assert inter["seq"].tolist() == [0, 1, 0] and set(inter["event"]) == {"review"}


def test_lcrec_null_or_nan_fields_are_missing_not_nan(tmp_path):
    items = '{"0": {"title": "Relay", "brand": NaN, "categories": null}, "1": {"title": NaN}, "2": {"brand": "x"}}'
    with pytest.raises(DataError, match=r"row 2, column 'title': item '1' has no title") as e:
        Workspace(tmp_path / "w").import_lcrec(*lcrec(tmp_path, items, {"u": [0]}))
    assert [p[3] for p in e.value.problems] == ["item '1' has no title", "item '2' has no title"]
    ws = Workspace(tmp_path / "w")
    ws.import_lcrec(*lcrec(tmp_path, '{"0": {"title": "Relay", "brand": NaN, "categories": NaN, "description": null}}', {"u": [0]}))
    p = ws.table("products").iloc[0]
    assert p["title"] == "Relay" and p[["brand", "category", "description"]].isna().all()  # not the text 'nan'


@pytest.mark.parametrize("items,inter,msg", [
    ("{not json", None, r"x\.item\.json: invalid JSON at line 1, column 2"),
    ("[1, 2]", None, "expected a non-empty JSON object"),
    ({"0": {"title": ""}}, {"u": [0]}, r"x\.item\.json, row 1, column 'title': item '0' has no title"),
    (None, {"u0": [0, 7]}, r"x\.inter\.json, row 1: user 'u0', item 1 of the sequence: unknown item 7"),
    (None, {"u0": []}, "expected a non-empty list"),
])
def test_lcrec_bad_input(tmp_path, items, inter, msg):
    with pytest.raises(DataError, match=msg):
        Workspace(tmp_path / "w").import_lcrec(*lcrec(tmp_path, items, inter))
    assert not (tmp_path / "w").exists()


def test_homedepot_real_data(tmp_path):
    d = need_dataset("homedepot")
    ws = Workspace(tmp_path / "hd")
    with pytest.raises(DataError, match="duplicate judgment for query 'slide bolt'"):
        ws.import_csv({"products": d / "products.csv", "judgments": d / "judgments_dev.csv"}, HD_MAP)
    counts = ws.import_csv({"products": d / "products.csv", "judgments": d / "judgments_dev.csv"}, HD_MAP,
                        relevance_threshold=2.5, on_duplicate="mean")
    assert counts["products"] == 54_667 and counts["judgments"] == 59_165 and counts["queries"] > 9_000
    j = ws.table("judgments")
    assert j["relevance"].between(1, 3).all() and (j["relevance"] >= 2.5).mean() > 0.3


def test_amazon_scientific_real_data(tmp_path):
    d = need_dataset("amazon_scientific")
    ws = Workspace(tmp_path / "sci")
    counts = ws.import_lcrec(d / "Scientific.item.json", d / "Scientific.inter.json")
    assert counts["products"] == 4_344 and counts["users"] == 8_317 and counts["interactions"] > 50_000
    p = ws.table("products")
    assert p["category"].str.startswith("Industrial & Scientific").mean() > 0.95 and p["brand"].notna().mean() > 0.8
