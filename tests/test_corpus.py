"""Checks on the shipped multi-domain corpus (osd_lab/zoo/data/corpus.json.gz)."""

import importlib.util
import re
from pathlib import Path

import pytest

from osd_lab.zoo.corpus import DOMAINS, load_corpus

# the maintainer's build script, outside the package
_spec = importlib.util.spec_from_file_location(
    "build_corpus", Path(__file__).resolve().parents[1] / "zoo" / "build_corpus.py")
build_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_corpus)
check_math, evaluate = build_corpus.check_math, build_corpus.evaluate
schema_db = build_corpus.schema_db


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_four_domains(corpus):
    assert tuple(sorted(corpus)) == tuple(sorted(DOMAINS))
    for domain in DOMAINS:
        assert set(corpus[domain]) == {"train", "heldout", "prompts"}
        assert corpus[domain]["train"], domain


def test_load_corpus_is_cached():
    assert load_corpus() is load_corpus()


@pytest.mark.parametrize("domain", DOMAINS)
def test_prompts_are_proper_prefixes_of_heldout(corpus, domain):
    prompts, heldout = corpus[domain]["prompts"], corpus[domain]["heldout"]
    assert len(prompts) >= 50
    assert len(heldout) == len(prompts)
    for prompt, doc in zip(prompts, heldout):
        assert prompt and doc.startswith(prompt) and len(doc) > len(prompt)


@pytest.mark.parametrize("domain", DOMAINS)
def test_heldout_not_in_train(corpus, domain):
    train = set(corpus[domain]["train"])
    for prompt, doc in zip(corpus[domain]["prompts"], corpus[domain]["heldout"]):
        assert doc not in train
        assert prompt not in train
    assert len(set(corpus[domain]["heldout"])) == len(corpus[domain]["heldout"])


@pytest.mark.parametrize("domain", ["math", "sql"])
def test_heldout_questions_not_in_train(corpus, domain):
    def questions(docs):
        return {re.search(r"^Question: .*$", d, re.MULTILINE).group() for d in docs}

    assert not questions(corpus[domain]["heldout"]) & questions(corpus[domain]["train"])


def test_code_prompts_end_inside_a_line(corpus):
    """A prompt ending in a newline reads as the end of a document (issue 10)."""
    for prompt, doc in zip(corpus["code"]["prompts"], corpus["code"]["heldout"]):
        assert not prompt.endswith("\n") and prompt.count("\n") <= 2
        assert re.match(r"(@|def |async def |class )", prompt)
        assert len(doc) - len(prompt) >= 60


def test_prose_prompts_have_head_and_words(corpus):
    for prompt in corpus["prose"]["prompts"]:
        head, _, words = prompt.partition("  ")
        assert head and len(words.split()) >= 2


def test_formats(corpus):
    math_format = re.compile(r"Question: [^\n]+\nAnswer: [^\n]+ The answer is \d+\.\n\Z")
    sql_format = re.compile(r"Schema: [^\n]+\nQuestion: [^\n]+\nSQL: [^\n]+;\n\Z")
    for doc in corpus["math"]["train"] + corpus["math"]["heldout"]:
        assert math_format.match(doc), doc
    for doc in corpus["sql"]["train"] + corpus["sql"]["heldout"]:
        assert sql_format.match(doc), doc
    assert all(p.endswith("\nAnswer:") for p in corpus["math"]["prompts"])
    assert all(p.endswith("\nSQL:") for p in corpus["sql"]["prompts"])


def test_every_sql_query_executes(corpus):
    databases = {}
    for doc in corpus["sql"]["train"] + corpus["sql"]["heldout"]:
        schema, _, sql = doc.split("\n")[:3]
        if schema not in databases:
            databases[schema] = schema_db(schema)
        databases[schema].execute(sql[len("SQL: "):]).fetchall()
    assert len(databases) >= 4


def test_schema_db_rejects_unknown_columns():
    db = schema_db("Schema: pets(id, name, age); owners(id, name, pet_id)")
    db.execute("SELECT o.name FROM owners AS o JOIN pets AS p ON o.pet_id = p.id").fetchall()
    with pytest.raises(Exception):
        db.execute("SELECT colour FROM pets").fetchall()


def test_math_answers_are_correct(corpus):
    for doc in corpus["math"]["train"] + corpus["math"]["heldout"]:
        assert check_math(doc), doc


def test_check_math_catches_mistakes():
    good = "Question: ...\nAnswer: Each costs 3 * 4 = 12 dollars. Then 12 + 5 = 17. The answer is 17.\n"
    assert check_math(good)
    assert not check_math(good.replace("= 17. The", "= 18. The"))  # wrong step
    assert not check_math(good.replace("is 17.", "is 12."))  # wrong final answer
    assert evaluate("2 * (3 + 4) / 7") == 2
