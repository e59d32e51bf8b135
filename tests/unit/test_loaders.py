"""Every loader on small fixtures written here, plus each kind of bad input (file, line, field)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.data.loaders import LOADERS, LoadOptions, get_loader, load_dataset
from llmrec.data.loaders.base import split_year
from llmrec.data.validate import DataError

GENRES = "0|" * 18 + "0"


def write_ml100k_raw(root: Path, data_lines: list[str] | None = None, item_lines: list[bytes] | None = None) -> Path:
    """A GroupLens-style ML-100K directory; u.item is latin-1 like the real one."""
    root.mkdir(parents=True, exist_ok=True)
    flags_heat = "0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0"  # Action, Crime, Thriller
    items = item_lines or [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|{'0|' * 12}0".encode("latin-1"),
        f"2|Misérables, Les (1995)|01-Jan-1995||http://x|{GENRES}".encode("latin-1"),
        f"3|Heat (1995)|15-Dec-1995||http://x|{flags_heat}".encode("latin-1"),
        f"4|unknown|||http://x|1|{'0|' * 17}0".encode("latin-1"),
    ]
    (root / "u.item").write_bytes(b"\n".join(items) + b"\n")
    data = data_lines or ["10\t1\t5\t100", "10\t3\t4\t50", "20\t2\t3\t70", "10\t2\t2\t100"]
    (root / "u.data").write_text("\n".join(data) + "\n", encoding="latin-1")
    return root


def write_recbole(root: Path, name: str = "ml-100k", inter: list[str] | None = None, item: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    inter = inter or ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t10\t4\t300", "1\t11\t5\t200", "2\t10\t3\t100"]
    item = item or [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        "10\tToy Story\t1995\tAnimation Children's Comedy",
        "11\tMisérables, Les\t1995\tDrama Musical",
        "12\tunkonwn\tunkonwn\tunknown",
    ]
    (root / f"{name}.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    (root / f"{name}.item").write_text("\n".join(item) + "\n", encoding="utf-8")
    (root / f"{name}.user").write_text("user_id:token\tage:token\n1\t24\n2\t53\n", encoding="utf-8")
    return root


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- MovieLens


def test_ml100k_raw_titles_years_genres_latin1(tmp_path: Path) -> None:
    frame, catalog = load_dataset("ml-100k", write_ml100k_raw(tmp_path / "raw"))
    assert [i.item_id for i in catalog] == ["1", "2", "3", "4"]
    toy, mis, heat, unknown = catalog.items
    assert (toy.title, toy.year, toy.categories) == ("Toy Story", "1995", ("Animation", "Children's", "Comedy"))
    assert mis.title == "Misérables, Les"  # decoded from latin-1
    assert heat.categories == ("Action", "Crime", "Thriller") and heat.year == "1995"
    assert unknown.title == "unknown" and unknown.year is None and unknown.categories == ("unknown",)
    assert frame.columns.tolist() == ["user_id", "item_id", "timestamp", "action", "rating", "line"]
    assert frame["user_id"].tolist() == ["10", "10", "20", "10"]  # source order kept
    assert frame["timestamp"].dtype == np.int64 and frame["rating"].tolist() == [5.0, 4.0, 3.0, 2.0]
    assert set(frame["action"]) == {"rate"} and frame["line"].tolist() == [1, 2, 3, 4]


def test_ml100k_detects_recbole_form(tmp_path: Path) -> None:
    loaded = load_dataset("ml-100k", write_recbole(tmp_path / "rb"))
    frame, catalog = loaded
    assert loaded.details["format"] == "recbole-atomic" and set(loaded.files) == {"interactions", "catalog", "users"}
    assert catalog.get("10").categories == ("Animation", "Children's", "Comedy") and catalog.get("10").year == "1995"
    assert catalog.get("11").title == "Misérables, Les"
    assert catalog.get("12").year is None  # "unkonwn" is not a year
    assert frame["timestamp"].tolist() == [300, 200, 100] and frame["line"].tolist() == [2, 3, 4]


def test_ml100k_rejects_other_directories(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an ML-100K directory"):
        load_dataset("ml-100k", tmp_path)


def test_recbole_generic_fields_become_attributes(tmp_path: Path) -> None:
    item = ["item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq", "a\tA Lamp\tAcme\tHome Lighting"]
    inter = ["user_id:token\titem_id:token\ttimestamp:float", "u\ta\t5"]
    _, catalog = load_dataset("recbole", write_recbole(tmp_path / "shop", "shop", inter, item))
    assert catalog[0].attributes == {"brand": "Acme"} and catalog[0].categories == ("Home", "Lighting")


def test_ml1m_double_colon_latin1(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    movies = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi"]
    (root / "movies.dat").write_bytes("\n".join(movies).encode("latin-1") + b"\n")
    (root / "ratings.dat").write_text("1::2::5::978300760\n1::1::3::978302109\n", encoding="latin-1")
    frame, catalog = load_dataset("ml-1m", root)
    assert catalog.get("2").title == "Cité des enfants perdus, La" and catalog.get("2").categories == ("Adventure", "Sci-Fi")
    assert frame["item_id"].tolist() == ["2", "1"] and frame["timestamp"].tolist() == [978300760, 978302109]


def test_split_year_keeps_inner_parentheses() -> None:
    assert split_year("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "City of Lost Children, The (Cité des enfants perdus, La)",
        "1995",
    )
    assert split_year("Untitled") == ("Untitled", None)


# ---------------------------------------------------------------- Amazon


def test_amazon2018_gz_layout(tmp_path: Path) -> None:
    root = tmp_path / "amz18"
    root.mkdir()
    _jsonl(root / "Beauty_5.json.gz", [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "nice"},
        {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000000},
    ])  # fmt: skip
    _jsonl(root / "meta_Beauty.json.gz", [
        {"asin": "B01", "title": "Soap", "category": ["Beauty", "Bath"], "brand": "Acme"},
        {"asin": "B02", "title": "Comb", "category": ["Beauty"], "brand": ""},
        {"asin": "B01", "title": "Soap", "category": ["Beauty", "Bath"], "brand": "Acme"},  # exact repeat: kept once
    ])  # fmt: skip
    frame, catalog = load_dataset("amazon2018", root)
    assert catalog.item_ids == ["B01", "B02"]
    assert catalog.get("B01").categories == ("Beauty", "Bath") and catalog.get("B01").attributes == {"brand": "Acme"}
    assert frame["timestamp"].tolist() == [1400000000, 1300000000] and set(frame["action"]) == {"review"}
    assert frame["rating"].tolist() == [5.0, 3.0]


def test_amazon2023_millisecond_timestamps(tmp_path: Path) -> None:
    reviews = _jsonl(tmp_path / "All_Beauty.jsonl", [
        {"user_id": "U1", "asin": "X9", "parent_asin": "P1", "rating": 4.0, "timestamp": 1588687728923},
    ])  # fmt: skip
    _jsonl(tmp_path / "meta_All_Beauty.jsonl", [
        {"parent_asin": "P1", "title": "Serum", "categories": [], "store": "Glow", "main_category": "All Beauty"},
    ])  # fmt: skip
    frame, catalog = load_dataset("amazon2023", reviews)
    assert frame["item_id"].tolist() == ["P1"] and frame["timestamp"].tolist() == [1588687728]
    assert catalog[0].attributes == {"brand": "Glow", "main_category": "All Beauty"}


def test_amazon_bad_json_and_missing_title(tmp_path: Path) -> None:
    root = tmp_path / "amz"
    root.mkdir()
    (root / "Toys.jsonl").write_text('{"user_id": "U", "parent_asin": "P1", "rating": 5, "timestamp": 1000}\n{not json\n')
    _jsonl(root / "meta_Toys.jsonl", [{"parent_asin": "P1", "title": "Ball"}])
    with pytest.raises(DataError, match=r"Toys.jsonl:2: not valid JSON"):
        load_dataset("amazon2023", root)
    _jsonl(root / "meta_Toys.jsonl", [{"parent_asin": "P1", "title": "Ball"}, {"parent_asin": "P2", "title": " "}])
    with pytest.raises(DataError, match=r"meta_Toys.jsonl:2: field 'title': missing title for item 'P2'"):
        load_dataset("amazon2023", root)
    loaded = load_dataset("amazon2023", root, LoadOptions(on_bad_row="skip"))
    assert loaded.bad_rows.total == 2 and len(loaded.interactions) == 1 and len(loaded.catalog) == 1


# ---------------------------------------------------------------- tabular


def test_tabular_multi_behavior_csv(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text(
        "uid,sku,ts,event\n"
        "u1,a,2024-01-01T10:00:00Z,view\n"
        "u1,a,2024-01-01T10:00:00Z,cart\n"
        'u1,a,2024-01-01T10:05:00Z,purchase\n'
        "u2,b,2024-01-02T00:00:00Z,view\n",
        encoding="utf-8",
    )
    items = tmp_path / "items.csv"
    items.write_text('sku,name,tags,color\na,"Red, Lamp",home|light,red\nb,Mug,kitchen,\n', encoding="utf-8")
    options = LoadOptions(
        columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts", "action": "event", "title": "name", "categories": "tags"},
        catalog_path=str(items),
    )
    frame, catalog = load_dataset("tabular", log, options)
    assert frame["action"].tolist() == ["view", "cart", "purchase", "view"]
    assert frame["timestamp"].tolist()[:3] == [1704103200, 1704103200, 1704103500]
    assert np.isnan(frame["rating"]).all() and frame["line"].tolist() == [2, 3, 4, 5]
    assert catalog.get("a").title == "Red, Lamp" and catalog.get("a").categories == ("home", "light")
    assert catalog.get("a").attributes == {"color": "red"} and catalog.get("b").attributes == {}


def test_tabular_jsonl_parquet_tsv_agree(tmp_path: Path) -> None:
    rows = [
        {"user_id": "u1", "item_id": "a", "timestamp": 1700000000000, "rating": 4, "title": "Alpha"},
        {"user_id": "u1", "item_id": "b", "timestamp": 1700000001000, "rating": 5, "title": "Beta"},
    ]
    _jsonl(tmp_path / "log.jsonl", rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "log.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "log.tsv", sep="\t", index=False)
    results = [load_dataset("tabular", tmp_path / name, LoadOptions(timestamp_unit="ms")) for name in ("log.jsonl", "log.parquet", "log.tsv")]
    for frame, catalog in results:
        assert frame["timestamp"].tolist() == [1700000000, 1700000001]
        assert frame["action"].tolist() == ["rate", "rate"] and frame["rating"].tolist() == [4.0, 5.0]
        assert [i.title for i in catalog] == ["Alpha", "Beta"]


def test_tabular_needs_a_catalog(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id\nu,a\n")
    with pytest.raises(DataError, match="no catalog"):
        load_dataset("tabular", tmp_path / "log.csv")
    with pytest.raises(DataError, match="unknown data.columns key"):
        load_dataset("tabular", tmp_path / "log.csv", LoadOptions(columns={"usr": "u"}))


def test_tabular_wrong_column_count_names_line(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id,title\nu,a,A\n\nu,b,B,extra\nu,c,C\n")
    with pytest.raises(DataError, match=r"log.csv:4: expected 3 columns, found 4"):
        load_dataset("tabular", tmp_path / "log.csv")
    frame, catalog = loaded = load_dataset("tabular", tmp_path / "log.csv", LoadOptions(on_bad_row="skip"))
    assert frame["line"].tolist() == [2, 5] and loaded.bad_rows.total == 1 and catalog.item_ids == ["a", "c"]


def test_tabular_bad_timestamp_names_field(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id,title,timestamp\nu,a,A,2024-01-01\nu,b,B,yesterday\n")
    with pytest.raises(DataError, match=r"log.csv:3: field 'timestamp': not a date or number: 'yesterday'"):
        load_dataset("tabular", tmp_path / "log.csv")


# ---------------------------------------------------------------- bad input in the fixed formats


@pytest.mark.parametrize(
    ("data_lines", "pattern"),
    [
        (["10\t1\t5\t100", "10\t3\t4"], r"u.data:2: expected 4 columns separated by '\\t', found 3"),
        (["10\t1\t5\t100", "10\t3\tfive\t100"], r"u.data:2: field 'rating': not a number: 'five'"),
        (["10\t1\t5\t100", "10\t3\t4\t"], r"u.data:2: field 'timestamp': missing value"),
        (["10\t1\t5\t100", "\t3\t4\t100"], r"u.data:2: field 'user_id': missing value"),
    ],
)
def test_malformed_rating_rows(tmp_path: Path, data_lines: list[str], pattern: str) -> None:
    root = write_ml100k_raw(tmp_path / "raw", data_lines=data_lines)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset("ml-100k", root)
    assert info.value.line == 2 and info.value.file == str(root / "u.data")
    loaded = load_dataset("ml-100k", root, LoadOptions(on_bad_row="skip"))
    assert len(loaded.interactions) == 1 and loaded.bad_rows.total == 1
    assert loaded.bad_rows.summary()["examples"][0].startswith(str(root / "u.data") + ":2:")


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "rb")
    good = (root / "ml-100k.item").read_bytes()
    (root / "ml-100k.item").write_bytes(good + b"13\tBad \xff\xfe title\t1999\tDrama\n")
    with pytest.raises(DataError, match=r"ml-100k.item:5: bytes not decodable as utf-8"):
        load_dataset("ml-100k", root)
    loaded = load_dataset("ml-100k", root, LoadOptions(on_bad_row="skip"))
    assert len(loaded.catalog) == 3 and loaded.bad_rows.total == 1


def test_duplicate_item_id_with_different_title(tmp_path: Path) -> None:
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||x|{GENRES}".encode(),
        f"2|Heat (1995)|01-Jan-1995||x|{GENRES}".encode(),
        f"3|Fargo (1996)|01-Jan-1996||x|{GENRES}".encode(),
        f"2|Heat 2 (1995)|01-Jan-1995||x|{GENRES}".encode(),
    ]
    root = write_ml100k_raw(tmp_path / "raw", item_lines=items)
    with pytest.raises(DataError, match=r"u.item:4: field 'item_id': duplicate item id '2' with a different title"):
        load_dataset("ml-100k", root)


def test_missing_title_and_bad_header(tmp_path: Path) -> None:
    root = write_recbole(tmp_path / "rb", item=["item_id:token\tmovie_title:token_seq", "10\tToy Story", "11\t", "12\tX"])
    with pytest.raises(DataError, match=r"ml-100k.item:3: field 'title': missing title for item '11'"):
        load_dataset("recbole", root)
    root = write_recbole(tmp_path / "rb2", inter=["user_id\titem_id", "1\t10"])
    with pytest.raises(DataError, match=r"ml-100k.inter:1: header column 1 'user_id' is not NAME:TYPE"):
        load_dataset("recbole", root)


def test_registry_names() -> None:
    assert sorted(LOADERS) == ["amazon2018", "amazon2023", "ml-100k", "ml-1m", "recbole", "tabular"]
    with pytest.raises(KeyError, match="unknown dataset loader 'ml-20m'"):
        get_loader("ml-20m")
