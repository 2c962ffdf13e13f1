"""Build the shipped multi-domain corpus: ``python zoo/build_corpus.py``.

A maintainer's script, not part of the installed package (it reads the
interpreter's standard library and Debian's ``dict-devil``).

Writes ``osd_lab/zoo/data/corpus.json.gz`` (see ``osd_lab/zoo/corpus.py`` for
the format) and prints the size of every split.  The output is deterministic:
everything random comes from ``random.Random(seed)`` with ``seed = 0``, and
the gzip header carries no timestamp.

Where each domain comes from:

* **code**  -- real Python source: the top-level ``*.py`` files of the running
  interpreter's standard library (PSF License), cut into one document per
  top-level ``def``/``class``.  Every 8th file (in sorted order) is held out,
  so held-out functions come from files the training text never saw.  The
  result depends on the Python version (recorded in ``PROVENANCE.md``).
* **prose** -- "The Devil's Dictionary" by Ambrose Bierce (1911, public
  domain), read from the Debian package ``dict-devil``
  (``/usr/share/dictd/devil.dict.dz`` and its index ``devil.index``).  One
  document per dictionary entry; about 10% of the entries are held out.
* **math**  -- GSM8K-style word problems generated here from templates, with
  worked answers whose arithmetic ``check_math`` can verify.
* **sql**   -- Spider-style text-to-SQL examples generated here over six
  small schemas; ``schema_db`` turns a ``Schema:`` line into an in-memory
  sqlite3 database on which every query runs.

Only a rebuild needs ``dict-devil`` (``apt-get install dict-devil``); the
built corpus is shipped with the package.
"""

import ast
import gzip
import json
import operator
import random
import re
import sqlite3
import sys
import sysconfig
import tokenize
from fractions import Fraction
from pathlib import Path

from osd_lab.zoo.corpus import CORPUS_PATH, DOMAINS

SEED = 0
N_HELDOUT = 128  # held-out documents for code, math and sql (prose: ~10%)


# ---------------------------------------------------------------------------
# code: the Python standard library
# ---------------------------------------------------------------------------

CODE_TRAIN_CHARS = 700_000
CODE_MIN_CHARS, CODE_MAX_CHARS = 200, 3000


def stdlib_files():
    """Top-level ``*.py`` files of the standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("test"))


def top_level_blocks(path):
    """Yield ``(text, node)`` for each top-level function or class in a file."""
    with tokenize.open(path) as f:  # honours ``# -*- coding: ... -*-``
        source = f.read()
    lines = source.split("\n")
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield "\n".join(lines[start - 1 : node.end_lineno]) + "\n", node


def code_prompt(text, node):
    """The ``def``/``class`` line(s) plus the first docstring line, cut inside
    its words (inside the document), or None.

    Returns None when that would be more than 3 lines, or would leave fewer
    than 60 characters to predict.
    """
    first = node.body[0]
    if first.lineno == node.lineno:  # one-liner such as ``def f(): pass``
        return None
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    end = first.lineno - 1  # last line of the header
    if ast.get_docstring(node) is not None:
        end += 1  # also the first line of the docstring
    lines = text.split("\n")[: end - start + 1]
    while not lines[-1].strip():  # drop blank lines before the body
        lines.pop()
    if len(lines) > 3 or len(text) - len("\n".join(lines) + "\n") < 60:
        return None
    # Cut the last line after the first half of its words (at least 2): to a
    # model trained on whole documents, a prompt that ends with a newline
    # after the header reads like the end of one (the zoo target then writes
    # end-of-text at once, and the next document is as likely SQL as code).
    word_ends = [m.end() for m in re.finditer(r"\w+", lines[-1])]
    if word_ends:
        keep = min(len(word_ends), max(2, (len(word_ends) + 1) // 2))
        lines[-1] = lines[-1][: word_ends[keep - 1]]
    return "\n".join(lines)


def build_code(seed=SEED):
    rng = random.Random(seed)
    train, heldout = [], []
    for i, path in enumerate(stdlib_files()):
        blocks = [
            (text, node)
            for text, node in top_level_blocks(path)
            if CODE_MIN_CHARS <= len(text) <= CODE_MAX_CHARS
        ]
        if i % 8 == 0:  # every 8th file is held out
            heldout += [(text, code_prompt(text, node)) for text, node in blocks]
        else:
            train += [text for text, _ in blocks]

    train = sorted(set(train))
    rng.shuffle(train)
    capped, total = [], 0
    for text in train:
        if total >= CODE_TRAIN_CHARS:
            break
        capped.append(text)
        total += len(text)

    seen = set(capped)
    pairs = [(doc, prompt) for doc, prompt in heldout if prompt and doc not in seen]
    pairs = sorted(set(pairs))
    rng.shuffle(pairs)
    pairs = pairs[:N_HELDOUT]
    return split(capped, pairs)


def split(train, pairs):
    """The corpus entry of one domain, from train docs and (doc, prompt) pairs."""
    return {
        "train": list(train),
        "heldout": [doc for doc, _ in pairs],
        "prompts": [prompt for _, prompt in pairs],
    }


# ---------------------------------------------------------------------------
# prose: The Devil's Dictionary
# ---------------------------------------------------------------------------

DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")
DEVIL_INDEX = Path("/usr/share/dictd/devil.index")
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(code):
    """Decode a dictd index number (base 64, most significant digit first)."""
    n = 0
    for char in code:
        n = n * 64 + BASE64.index(char)
    return n


def devil_entries():
    """All dictionary entries, in alphabetical order, each ending in one newline.

    A dictd index line is ``headword<TAB>offset<TAB>length``: the entry is
    that slice of the uncompressed ``.dict.dz`` file.  Index lines starting
    with ``00database`` describe the database itself and are skipped; two
    headwords may share one entry (``babe``/``baby``), so spans are deduplicated.
    """
    if not (DEVIL_DICT.exists() and DEVIL_INDEX.exists()):
        sys.exit(
            f"{DEVIL_DICT} not found: the prose domain needs The Devil's "
            "Dictionary from the Debian package dict-devil.\n"
            "Install it with:  apt-get install dict-devil"
        )
    data = gzip.open(DEVIL_DICT).read()  # .dict.dz is gzip with extra headers
    spans = set()
    for line in DEVIL_INDEX.read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        if not word.startswith("00database"):
            spans.add((dictd_number(offset), dictd_number(length)))
    entries = [data[o : o + n].decode("utf-8").rstrip() + "\n" for o, n in sorted(spans)]
    return [e for e in entries if len(e) >= 80]


def prose_prompt(entry):
    """``HEADWORD, pos.  `` plus the first ~35% of the first sentence, or None.

    E.g. ``ABSTAINER, n.  A weak person``.  Entries whose first line has no
    two-space gap after the head (such as verse-only entries) get None.
    """
    first_line = entry.split("\n", 1)[0]
    if "  " not in first_line:
        return None
    head = first_line[: first_line.index("  ")] + "  "
    body = entry[len(head) :]
    sentence = re.split(r"[.!?](?=\s)", body, maxsplit=1)[0]
    word_ends = [m.end() for m in re.finditer(r"\S+", body)]
    n_words = len(re.findall(r"\S+", sentence))
    keep = max(2, round(0.35 * n_words))
    if keep >= len(word_ends):
        return None
    prompt = head + body[: word_ends[keep - 1]]
    return prompt if len(entry) - len(prompt) >= 20 else None


def build_prose(seed=SEED):
    rng = random.Random(seed)
    entries = devil_entries()
    candidates = [i for i, entry in enumerate(entries) if prose_prompt(entry)]
    rng.shuffle(candidates)
    held = sorted(candidates[: max(64, len(entries) // 10)])
    train = [e for i, e in enumerate(entries) if i not in held]
    pairs = [(entries[i], prose_prompt(entries[i])) for i in held]
    return split(train, pairs)


# ---------------------------------------------------------------------------
# math: generated word problems
# ---------------------------------------------------------------------------

MATH_TRAIN = 2500

NAMES = [
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla",
    "Jamal", "Kira", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa",
    "Sam", "Tara", "Umar", "Vera", "Wei", "Yusuf", "Zoe", "Lena", "Marco",
    "Nia", "Omar", "Pablo",
]
# (plural item, lowest price, highest price) in dollars
ITEMS = [
    ("apples", 1, 3), ("notebooks", 2, 6), ("pencils", 1, 2), ("books", 8, 20),
    ("T-shirts", 10, 25), ("cupcakes", 2, 5), ("toy cars", 3, 9),
    ("bottles of juice", 2, 4), ("packs of stickers", 1, 4), ("plants", 5, 15),
    ("mugs", 4, 12), ("bags of rice", 6, 18), ("scarves", 7, 16), ("candles", 2, 8),
]
THINGS = ["marbles", "stickers", "cookies", "candies", "trading cards", "stamps", "shells", "beads"]
GOODS = ["bicycle", "jacket", "lamp", "backpack", "guitar", "chair", "watch", "tent", "camera", "desk"]
PRODUCTS = ["toys", "bolts", "bottles", "chairs", "bricks", "shirts", "phone cases", "cups"]
VEHICLES = ["train", "bus", "ferry", "truck", "coach"]
HABITS = ["walk to school", "play soccer", "have a pet", "wear glasses", "play an instrument", "ride a bike"]


def t_shopping(rng):
    name = rng.choice(NAMES)
    (item1, lo1, hi1), (item2, lo2, hi2) = rng.sample(ITEMS, 2)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    p1, p2 = rng.randint(lo1, hi1), rng.randint(lo2, hi2)
    question = (f"{name} buys {a} {item1} for ${p1} each and {b} {item2} for ${p2} each. "
                f"How many dollars does {name} spend in total?")
    steps = [f"The {item1} cost {a} * {p1} = {a * p1} dollars.",
             f"The {item2} cost {b} * {p2} = {b * p2} dollars.",
             f"Altogether {name} spends {a * p1} + {b * p2} = {a * p1 + b * p2} dollars."]
    return question, steps


def t_change(rng):
    name, (item, lo, hi) = rng.choice(NAMES), rng.choice(ITEMS)
    n, price, bill = rng.randint(2, 9), rng.randint(lo, hi), rng.choice([20, 50, 100])
    if n * price >= bill:
        bill = 100 * (n * price // 100 + 1)
    cost = n * price
    question = (f"{name} buys {n} {item} at ${price} each and pays with ${bill}. "
                f"How much change does {name} get back?")
    steps = [f"The {item} cost {n} * {price} = {cost} dollars.",
             f"The change is {bill} - {cost} = {bill - cost} dollars."]
    return question, steps


def t_distance(rng):
    name = rng.choice(NAMES)
    s1, s2 = rng.randrange(30, 95, 5), rng.randrange(30, 95, 5)
    t1, t2 = rng.randint(2, 6), rng.randint(2, 5)
    question = (f"{name} drives at {s1} km per hour for {t1} hours, then at {s2} km per hour "
                f"for {t2} hours. How many kilometers does {name} drive in total?")
    steps = [f"The first part is {s1} * {t1} = {s1 * t1} km.",
             f"The second part is {s2} * {t2} = {s2 * t2} km.",
             f"The total distance is {s1 * t1} + {s2 * t2} = {s1 * t1 + s2 * t2} km."]
    return question, steps


def t_travel_time(rng):
    vehicle = rng.choice(VEHICLES)
    speed, hours, stop = rng.randrange(40, 130, 10), rng.randint(2, 9), rng.randint(2, 4)
    distance = speed * hours
    question = (f"A {vehicle} travels {distance} km at a steady {speed} km per hour and also "
                f"stops for {stop} hours on the way. How many hours does the whole trip take?")
    steps = [f"Moving takes {distance} / {speed} = {hours} hours.",
             f"With the stops the trip takes {hours} + {stop} = {hours + stop} hours."]
    return question, steps


def t_sharing(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    friends, each, kept = rng.randint(2, 8), rng.randint(2, 15), rng.randint(1, 12)
    total = friends * each + kept
    question = (f"{name} has {total} {thing}. {name} keeps {kept} and shares the rest equally "
                f"among {friends} friends. How many {thing} does each friend get?")
    steps = [f"After keeping some, {name} has {total} - {kept} = {total - kept} {thing} to share.",
             f"Each friend gets {total - kept} / {friends} = {each} {thing}."]
    return question, steps


def t_discount(rng):
    good, price, rate = rng.choice(GOODS), 20 * rng.randint(2, 30), rng.choice([10, 20, 25, 50])
    off = price * rate // 100
    question = (f"A {good} costs ${price}. During a sale its price is reduced by {rate}%. "
                f"What is the sale price in dollars?")
    steps = [f"The discount is {price} * {rate} / 100 = {off} dollars.",
             f"The sale price is {price} - {off} = {price - off} dollars."]
    return question, steps


def t_percent_class(rng):
    habit, rate = rng.choice(HABITS), rng.choice([10, 20, 25, 40, 50, 60, 75, 80])
    size = rng.choice([n for n in range(20, 61) if n * rate % 100 == 0])
    yes = size * rate // 100
    question = (f"There are {size} students in a class and {rate}% of them {habit}. "
                f"How many students do not {habit}?")
    steps = [f"The students who {habit} number {size} * {rate} / 100 = {yes}.",
             f"So {size} - {yes} = {size - yes} students do not {habit}."]
    return question, steps


def t_ages(rng):
    a, b, c = rng.sample(NAMES, 3)
    age, times = rng.randint(3, 15), rng.randint(2, 4)
    age_b = age * times
    younger = rng.randint(2, min(10, age_b - 1))
    age_c = age_b - younger
    question = (f"{a} is {age} years old. {b} is {times} times as old as {a}, and {c} is "
                f"{younger} years younger than {b}. What is the sum of their ages?")
    steps = [f"{b} is {age} * {times} = {age_b} years old.",
             f"{c} is {age_b} - {younger} = {age_c} years old.",
             f"The sum of their ages is {age} + {age_b} + {age_c} = {age + age_b + age_c}."]
    return question, steps


def t_fence(rng):
    length, width, cost = rng.randint(5, 40), rng.randint(3, 30), rng.randint(2, 15)
    perimeter = 2 * (length + width)
    question = (f"A rectangular garden is {length} meters long and {width} meters wide. "
                f"Fencing costs ${cost} per meter. How many dollars does it cost to fence the garden?")
    steps = [f"The perimeter is 2 * ({length} + {width}) = {perimeter} meters.",
             f"The fence costs {perimeter} * {cost} = {perimeter * cost} dollars."]
    return question, steps


def t_tiles(rng):
    length, width = rng.randint(3, 14), rng.randint(3, 12)
    area = length * width
    per_box = rng.choice([d for d in range(2, 13) if area % d == 0])
    question = (f"A room is {length} meters long and {width} meters wide. One box of tiles "
                f"covers {per_box} square meters. How many boxes are needed for the floor?")
    steps = [f"The floor area is {length} * {width} = {area} square meters.",
             f"The number of boxes is {area} / {per_box} = {area // per_box}."]
    return question, steps


def t_work_together(rng):
    a, b = rng.sample(NAMES, 2)
    rate_a, rate_b, days = rng.randint(2, 6), rng.randint(2, 6), rng.randint(2, 9)
    rooms = (rate_a + rate_b) * days
    question = (f"{a} can paint {rate_a} rooms per day and {b} can paint {rate_b} rooms per day. "
                f"Working together, how many days do they need to paint {rooms} rooms?")
    steps = [f"Together they paint {rate_a} + {rate_b} = {rate_a + rate_b} rooms per day.",
             f"They need {rooms} / {rate_a + rate_b} = {days} days."]
    return question, steps


def t_factory(rng):
    product = rng.choice(PRODUCTS)
    rate, hours, days = rng.randrange(10, 65, 5), rng.randint(4, 12), rng.randint(2, 7)
    daily = rate * hours
    question = (f"A machine makes {rate} {product} per hour and runs {hours} hours a day. "
                f"How many {product} does it make in {days} days?")
    steps = [f"Each day it makes {rate} * {hours} = {daily} {product}.",
             f"Over the whole period it makes {daily} * {days} = {daily * days} {product}."]
    return question, steps


def t_savings(rng):
    name, good = rng.choice(NAMES), rng.choice(GOODS)
    have, weekly, weeks = rng.randrange(5, 105, 5), rng.randrange(5, 45, 5), rng.randint(3, 20)
    price = have + weekly * weeks
    question = (f"{name} wants to buy a {good} that costs ${price}. {name} already has ${have} "
                f"and saves ${weekly} every week. How many weeks will it take to have enough?")
    steps = [f"{name} still needs {price} - {have} = {price - have} dollars.",
             f"Saving takes {price - have} / {weekly} = {weeks} weeks."]
    return question, steps


def t_profit(rng):
    name, (item, lo, hi) = rng.choice(NAMES), rng.choice(ITEMS)
    n, cost = rng.randint(10, 50), rng.randint(lo, hi)
    k = rng.randint(n // 3, n - 2)
    high, low = cost + rng.randint(3, 10), cost + rng.randint(1, 2)
    rest = n - k
    income = k * high + rest * low
    question = (f"{name} buys {n} {item} for ${cost} each, sells {k} of them for ${high} each "
                f"and the rest for ${low} each. How much profit does {name} make in dollars?")
    steps = [f"Buying costs {n} * {cost} = {n * cost} dollars.",
             f"The first sales bring {k} * {high} = {k * high} dollars.",
             f"There are {n} - {k} = {rest} left, which bring {rest} * {low} = {rest * low} dollars.",
             f"The income is {k * high} + {rest * low} = {income} dollars.",
             f"The profit is {income} - {n * cost} = {income - n * cost} dollars."]
    return question, steps


def t_reading(rng):
    name = rng.choice(NAMES)
    per_day, days, extra = rng.randrange(10, 55, 5), rng.randint(2, 9), rng.randint(5, 40)
    pages = per_day * days + extra + rng.randint(10, 200)
    read = per_day * days
    question = (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days "
                f"and then {extra} more pages. How many pages are left to read?")
    steps = [f"First {name} reads {per_day} * {days} = {read} pages.",
             f"Altogether {name} has read {read} + {extra} = {read + extra} pages.",
             f"There are {pages} - {read + extra} = {pages - read - extra} pages left."]
    return question, steps


def t_baking(rng):
    name = rng.choice(NAMES)
    cups, batch, batches = rng.randint(2, 5), rng.choice([12, 18, 24, 30, 36]), rng.randint(2, 8)
    cookies = batch * batches
    question = (f"A cookie recipe uses {cups} cups of flour for a batch of {batch} cookies. "
                f"{name} wants to bake {cookies} cookies. How many cups of flour are needed?")
    steps = [f"{name} needs {cookies} / {batch} = {batches} batches.",
             f"That uses {batches} * {cups} = {batches * cups} cups of flour."]
    return question, steps


MATH_TEMPLATES = [
    t_shopping, t_change, t_distance, t_travel_time, t_sharing, t_discount,
    t_percent_class, t_ages, t_fence, t_tiles, t_work_together, t_factory,
    t_savings, t_profit, t_reading, t_baking,
]

EQUATION = re.compile(r"([\d(][\d ()+*/-]*[\d)]) = (\d+)")
FINAL_ANSWER = re.compile(r"The answer is (\d+)\.\n$")
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub,
              ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression):
    """Exactly evaluate ``+ - * /`` arithmetic on integers, e.g. ``2 * (3 + 4)``."""
    def value(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            return ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        raise ValueError(f"not plain arithmetic: {expression!r}")
    return value(ast.parse(expression.strip(), mode="eval").body)


def check_math(doc):
    """True if every ``a op b = c`` step is right and the last one is the answer."""
    answer = doc.split("\nAnswer: ", 1)[1]
    final = FINAL_ANSWER.search(answer)
    equations = EQUATION.findall(answer)
    if not final or not equations:
        return False
    for lhs, rhs in equations:
        try:
            if not re.search(r"[-+*/]", lhs) or evaluate(lhs) != int(rhs):
                return False
        except (ValueError, SyntaxError, ZeroDivisionError):
            return False
    return equations[-1][1] == final.group(1)


def math_doc(rng):
    question, steps = rng.choice(MATH_TEMPLATES)(rng)
    answer = EQUATION.findall(steps[-1])[-1][1]
    return f"Question: {question}\nAnswer: {' '.join(steps)} The answer is {answer}.\n"


def build_math(seed=SEED):
    rng = random.Random(seed)
    return generate(rng, math_doc, MATH_TRAIN, marker="Answer:", check=check_math)


def generate(rng, make_doc, n_train, marker, check):
    """``n_train`` training docs and ``N_HELDOUT`` held-out ones.

    Every document has a different ``Question:`` line, so no held-out
    question occurs in the training set.  The prompt of a held-out document
    is its text up to and including ``marker`` (e.g. ``"Answer:"``).
    """
    docs, questions = [], set()
    while len(docs) < n_train + N_HELDOUT:
        doc = make_doc(rng)
        question = re.search(r"^Question: .*$", doc, re.MULTILINE).group()
        if question not in questions:
            if not check(doc):
                raise ValueError(f"generated a wrong document:\n{doc}")
            questions.add(question)
            docs.append(doc)
    train, heldout = docs[:n_train], docs[n_train:]
    pairs = [(doc, doc[: doc.index(marker) + len(marker)]) for doc in heldout]
    return split(train, pairs)


# ---------------------------------------------------------------------------
# sql: generated text-to-SQL
# ---------------------------------------------------------------------------

SQL_TRAIN = 2800

FIRST = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal"]
LAST = ["Lopez", "Chen", "Smith", "Okafor", "Novak", "Tanaka", "Silva", "Khan", "Meyer", "Rossi"]
PEOPLE = [f"{f} {l}" for f in FIRST for l in LAST]
CITIES = ["Boston", "Chicago", "Denver", "Seattle", "Austin", "Miami", "Portland", "Atlanta"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "India", "Germany", "Mexico"]
SUBJECTS = ["Physics", "Biology", "History", "Mathematics", "Economics", "Chemistry", "Literature"]


def table(name, one, label=None, text=None, number=None, links=None, has_id=True):
    """Describe a table: its English nouns, and for each column an English name
    plus the values that questions may mention.

    label  -- (column, "name", "names", values): what "which X?" selects
    text   -- {column: (english, values)} categorical columns
    number -- {column: (english, values)} numeric columns
    links  -- {column: (parent table, english role)} foreign keys to parent.id
    """
    return {"name": name, "one": one, "many": name, "label": label,
            "text": text or {}, "number": number or {}, "links": links or {},
            "has_id": has_id}


def columns(t):
    """Column names in schema order: id, label, text, numbers, foreign keys
    (a bridge table without an id lists its foreign keys first)."""
    own = ([t["label"][0]] if t["label"] else []) + list(t["text"]) + list(t["number"])
    if t["has_id"]:
        return ["id"] + own + list(t["links"])
    return list(t["links"]) + own


SCHEMAS = [
    {"tables": [
        table("departments", "department",
              label=("name", "name", "names", ["Sales", "Marketing", "Research", "Finance",
                                               "Support", "Legal", "Operations", "Design"]),
              text={"city": ("city", CITIES)},
              number={"budget": ("budget", range(100000, 2000001, 100000))}),
        table("employees", "employee",
              label=("name", "name", "names", PEOPLE),
              text={"title": ("job title", ["Engineer", "Manager", "Analyst", "Designer",
                                            "Accountant", "Technician", "Recruiter"])},
              number={"salary": ("salary", range(30000, 150001, 5000)),
                      "hire_year": ("hire year", range(1995, 2024))},
              links={"department_id": ("departments", "department")}),
    ], "bridges": []},
    {"tables": [
        table("students", "student",
              label=("name", "name", "names", PEOPLE),
              text={"major": ("major", SUBJECTS), "hometown": ("hometown", CITIES)},
              number={"age": ("age", range(17, 31)), "gpa": ("GPA", [2.0, 2.5, 3.0, 3.2, 3.5, 3.7, 3.9])}),
        table("courses", "course",
              label=("title", "title", "titles", ["Linear Algebra", "Organic Chemistry",
                                                  "World History", "Microeconomics", "Genetics",
                                                  "Poetry Workshop", "Quantum Mechanics", "Statistics"]),
              text={"department": ("department", SUBJECTS)},
              number={"credits": ("number of credits", range(1, 7)),
                      "capacity": ("capacity", range(20, 201, 10))}),
        table("enrollments", "enrollment", has_id=False,
              number={"grade": ("grade", range(50, 101))},
              links={"student_id": ("students", "student"), "course_id": ("courses", "course")}),
    ], "bridges": [
        ("enrollments", "student_id", "course_id", "enrolled in a course"),
        ("enrollments", "course_id", "student_id", "taken by a student"),
    ]},
    {"tables": [
        table("customers", "customer",
              label=("name", "name", "names", PEOPLE),
              text={"city": ("city", CITIES)},
              number={"signup_year": ("signup year", range(2010, 2025))}),
        table("products", "product",
              label=("name", "name", "names", ["Desk Lamp", "Yoga Mat", "Chess Set", "Kettle",
                                               "Headphones", "Backpack", "Tent", "Puzzle"]),
              text={"category": ("category", ["Toys", "Books", "Electronics", "Garden",
                                              "Kitchen", "Sports", "Clothing"])},
              number={"price": ("price", range(5, 501, 5)), "stock": ("stock", range(50, 1001, 50))}),
        table("orders", "order",
              number={"quantity": ("quantity", range(1, 21)),
                      "order_year": ("order year", range(2015, 2025))},
              links={"customer_id": ("customers", "customer"), "product_id": ("products", "product")}),
    ], "bridges": [
        ("orders", "customer_id", "product_id", "who ordered a product"),
        ("orders", "product_id", "customer_id", "ordered by a customer"),
    ]},
    {"tables": [
        table("authors", "author",
              label=("name", "name", "names", PEOPLE),
              text={"country": ("country", COUNTRIES)},
              number={"birth_year": ("birth year", range(1900, 1991))}),
        table("books", "book",
              label=("title", "title", "titles", ["Silent Harbor", "The Glass Key", "Red Orchard",
                                                  "Winter Tides", "Paper Moons", "The Last Atlas",
                                                  "Night Garden", "Iron Sparrow"]),
              text={"genre": ("genre", ["Mystery", "Romance", "Fantasy", "Science Fiction",
                                        "History", "Poetry", "Biography"])},
              number={"pages": ("page count", range(100, 901, 20)),
                      "publication_year": ("publication year", range(1950, 2024))},
              links={"author_id": ("authors", "author")}),
    ], "bridges": []},
    {"tables": [
        table("airports", "airport",
              label=("code", "code", "codes", ["JFK", "LAX", "ORD", "CDG", "NRT", "GRU",
                                               "YYZ", "NBO", "DEL", "FRA"]),
              text={"city": ("city", CITIES), "country": ("country", COUNTRIES)},
              number={"elevation": ("elevation", range(0, 2501, 100))}),
        table("flights", "flight",
              label=("flight_number", "flight number", "flight numbers",
                     ["AB101", "CD202", "EF303", "GH404", "IJ505", "KL606", "MN707", "OP808"]),
              text={"airline": ("airline", ["SkyWays", "AeroNorth", "BlueJet", "SunAir", "Polar Air"])},
              number={"distance": ("distance", range(200, 9001, 100)),
                      "duration": ("duration in minutes", range(30, 721, 15))},
              links={"origin_id": ("airports", "origin airport"),
                     "destination_id": ("airports", "destination airport")}),
    ], "bridges": []},
    {"tables": [
        table("movies", "movie",
              label=("title", "title", "titles", ["Blue Horizon", "The Long Night", "Paper Tigers",
                                                  "Quiet Storm", "Lost Signal", "Golden Hour",
                                                  "Cold Harbor", "Second Wind"]),
              text={"genre": ("genre", ["Drama", "Comedy", "Action", "Horror", "Documentary",
                                        "Animation", "Thriller"])},
              number={"release_year": ("release year", range(1970, 2024)),
                      "running_time": ("running time", range(80, 201, 5))}),
        table("reviewers", "reviewer",
              label=("name", "name", "names", PEOPLE),
              text={"country": ("country", COUNTRIES)},
              number={"age": ("age", range(18, 81))}),
        table("ratings", "rating", has_id=False,
              number={"stars": ("number of stars", range(1, 6))},
              links={"movie_id": ("movies", "movie"), "reviewer_id": ("reviewers", "reviewer")}),
    ], "bridges": [
        ("ratings", "reviewer_id", "movie_id", "who rated a movie"),
        ("ratings", "movie_id", "reviewer_id", "rated by a reviewer"),
    ]},
]

REAL_COLUMNS = {"price", "gpa"}
TEXT_COLUMNS = {"name", "title", "code", "flight_number", "city", "country", "major",
                "hometown", "department", "category", "genre", "airline"}


def column_type(column):
    if column in REAL_COLUMNS:
        return "REAL"
    return "TEXT" if column in TEXT_COLUMNS else "INTEGER"


def schema_line(schema):
    tables = "; ".join(f"{t['name']}({', '.join(columns(t))})" for t in schema["tables"])
    return f"Schema: {tables}"


def schema_db(line):
    """An empty in-memory sqlite3 database with the tables of a ``Schema:`` line."""
    db = sqlite3.connect(":memory:")
    for name, cols in re.findall(r"(\w+)\(([^)]*)\)", line):
        defs = ", ".join(f"{c} {column_type(c)}" for c in cols.split(", "))
        db.execute(f"CREATE TABLE {name} ({defs})")
    return db


def sql_value(value):
    return f"'{value}'" if isinstance(value, str) else str(value)


def an(word):
    return f"an {word}" if word[0].lower() in "aeiou" else f"a {word}"


def pick(rng, t, kind):
    """A random (column, english, value) from t[kind] ("text" or "number")."""
    column = rng.choice(list(t[kind]))
    english, values = t[kind][column]
    return column, english, rng.choice(values)


COMPARISONS = [(">", "greater than"), ("<", "less than"), (">=", "at least"), ("<=", "at most")]
AGGREGATES = [("AVG", "average"), ("MAX", "maximum"), ("MIN", "minimum"), ("SUM", "total")]


def aggregate(rng, column):
    """A random (SQL function, english); no "total" of years, ages, GPAs, ..."""
    summable = not (column.endswith("year") or column in ("age", "gpa", "elevation"))
    return rng.choice(AGGREGATES if summable else AGGREGATES[:3])


# Each question template takes (rng, schema, t) and returns (question, sql),
# or None when table t lacks the columns the template needs.

def q_filter_number(rng, schema, t):
    if not (t["label"] and t["number"]):
        return None
    col, en, v = pick(rng, t, "number")
    op, words = rng.choice(COMPARISONS)
    label, _, labels, _ = t["label"]
    have = f"of {words}" if words.startswith("at") else words  # "a salary of at least"
    question = rng.choice([f"Which {t['many']} have {an(en)} {have} {v}?",
                           f"List the {labels} of {t['many']} whose {en} is {words} {v}."])
    return question, f"SELECT {label} FROM {t['name']} WHERE {col} {op} {v}"


def q_filter_text(rng, schema, t):
    if not (t["label"] and t["text"]):
        return None
    col, en, v = pick(rng, t, "text")
    label, _, labels, _ = t["label"]
    question = rng.choice([f"List the {labels} of all {t['many']} whose {en} is {v}.",
                           f"Which {t['many']} have {v} as their {en}?"])
    return question, f"SELECT {label} FROM {t['name']} WHERE {col} = {sql_value(v)}"


def q_count(rng, schema, t):
    kind = rng.choice(["text", "number"])
    if not t[kind]:
        return None
    col, en, v = pick(rng, t, kind)
    if kind == "text":
        question = f"How many {t['many']} have the {en} {v}?"
        return question, f"SELECT COUNT(*) FROM {t['name']} WHERE {col} = {sql_value(v)}"
    op, words = rng.choice(COMPARISONS)
    question = f"Count the {t['many']} whose {en} is {words} {v}."
    return question, f"SELECT COUNT(*) FROM {t['name']} WHERE {col} {op} {v}"


def q_aggregate(rng, schema, t):
    if not (t["text"] and t["number"]):
        return None
    tcol, ten, tv = pick(rng, t, "text")
    ncol, nen, _ = pick(rng, t, "number")
    fn, words = aggregate(rng, ncol)
    question = f"What is the {words} {nen} of {t['many']} whose {ten} is {tv}?"
    return question, f"SELECT {fn}({ncol}) FROM {t['name']} WHERE {tcol} = {sql_value(tv)}"


def q_group(rng, schema, t):
    if not t["text"]:
        return None
    tcol, ten, _ = pick(rng, t, "text")
    if not t["number"] or rng.random() < 0.4:
        question = f"How many {t['many']} are there for each {ten}?"
        return question, f"SELECT {tcol}, COUNT(*) FROM {t['name']} GROUP BY {tcol}"
    ncol, nen, _ = pick(rng, t, "number")
    fn, words = aggregate(rng, ncol)
    question = f"For each {ten}, what is the {words} {nen} of the {t['many']}?"
    return question, f"SELECT {tcol}, {fn}({ncol}) FROM {t['name']} GROUP BY {tcol}"


def q_top(rng, schema, t):
    if not (t["label"] and t["number"]):
        return None
    col, en, _ = pick(rng, t, "number")
    order, words = rng.choice([("DESC", "highest"), ("ASC", "lowest")])
    label, one, labels, _ = t["label"]
    k = rng.randint(1, 5)
    if k == 1:
        question = f"What is the {one} of the {t['one']} with the {words} {en}?"
    else:
        question = f"Show the {labels} of the {k} {t['many']} with the {words} {en}."
    return question, f"SELECT {label} FROM {t['name']} ORDER BY {col} {order} LIMIT {k}"


def q_distinct(rng, schema, t):
    if not (t["text"] and t["number"]):
        return None
    tcol, ten, _ = pick(rng, t, "text")
    ncol, nen, v = pick(rng, t, "number")
    op, words = rng.choice(COMPARISONS)
    question = f"What are the different values of {ten} among {t['many']} whose {nen} is {words} {v}?"
    return question, f"SELECT DISTINCT {tcol} FROM {t['name']} WHERE {ncol} {op} {v}"


def q_having(rng, schema, t):
    if not t["text"]:
        return None
    tcol, ten, _ = pick(rng, t, "text")
    if not t["number"] or rng.random() < 0.5:
        k = rng.randint(1, 10)
        question = f"Which values of {ten} are shared by more than {k} {t['many']}?"
        return question, f"SELECT {tcol} FROM {t['name']} GROUP BY {tcol} HAVING COUNT(*) > {k}"
    ncol, nen, v = pick(rng, t, "number")
    question = f"Which values of {ten} have an average {nen} above {v}?"
    return question, f"SELECT {tcol} FROM {t['name']} GROUP BY {tcol} HAVING AVG({ncol}) > {v}"


def q_between(rng, schema, t):
    if not (t["label"] and t["number"]):
        return None
    col, en, _ = pick(rng, t, "number")
    low, high = sorted(rng.sample(list(t["number"][col][1]), 2))
    label, _, labels, _ = t["label"]
    question = f"Give the {labels} of {t['many']} with {an(en)} between {low} and {high}."
    return question, f"SELECT {label} FROM {t['name']} WHERE {col} BETWEEN {low} AND {high}"


def q_two_filters(rng, schema, t):
    if not (t["label"] and t["text"] and t["number"]):
        return None
    tcol, ten, tv = pick(rng, t, "text")
    ncol, nen, nv = pick(rng, t, "number")
    op, words = rng.choice(COMPARISONS)
    label, _, labels, _ = t["label"]
    question = f"List the {labels} of {t['many']} whose {ten} is {tv} and whose {nen} is {words} {nv}."
    sql = f"SELECT {label} FROM {t['name']} WHERE {tcol} = {sql_value(tv)} AND {ncol} {op} {nv}"
    return question, sql


def q_lookup(rng, schema, t):
    if not (t["label"] and (t["number"] or t["text"])):
        return None
    kind = rng.choice([k for k in ("text", "number") if t[k]])
    col, en, _ = pick(rng, t, kind)
    label, one, _, values = t["label"]
    v = rng.choice(values)
    question = f"What is the {en} of the {t['one']} with the {one} {v}?"
    return question, f"SELECT {col} FROM {t['name']} WHERE {label} = {sql_value(v)}"


def parent_of(schema, t, rng):
    """A random foreign key of t: (column, parent table, english role)."""
    if not t["links"]:
        return None
    col = rng.choice(list(t["links"]))
    name, role = t["links"][col]
    parent = next(p for p in schema["tables"] if p["name"] == name)
    return col, parent, role


def join_clause(t, fk, parent):
    return f"FROM {t['name']} AS c JOIN {parent['name']} AS p ON c.{fk} = p.id"


def q_join_filter(rng, schema, t):
    link = parent_of(schema, t, rng)
    if not link or not link[1]["text"]:
        return None
    fk, parent, role = link
    pcol, pen, pv = pick(rng, parent, "text")
    if t["label"] and rng.random() < 0.6:
        label, _, labels, _ = t["label"]
        question = f"List the {labels} of {t['many']} whose {role}'s {pen} is {pv}."
        select = f"SELECT c.{label}"
    else:
        question = f"How many {t['many']} have {an(role)} whose {pen} is {pv}?"
        select = "SELECT COUNT(*)"
    return question, f"{select} {join_clause(t, fk, parent)} WHERE p.{pcol} = {sql_value(pv)}"


def q_join_group(rng, schema, t):
    link = parent_of(schema, t, rng)
    if not link or not link[1]["label"]:
        return None
    fk, parent, role = link
    plabel, pone, _, _ = parent["label"]
    group = f"{join_clause(t, fk, parent)} GROUP BY p.{plabel}"
    if not t["number"] or rng.random() < 0.4:
        question = f"How many {t['many']} does each {role} have? Show the {role} {pone} and the count."
        return question, f"SELECT p.{plabel}, COUNT(*) {group}"
    ncol, nen, _ = pick(rng, t, "number")
    fn, words = aggregate(rng, ncol)
    question = f"For each {role} {pone}, what is the {words} {nen} of its {t['many']}?"
    return question, f"SELECT p.{plabel}, {fn}(c.{ncol}) {group}"


def q_bridge(rng, schema, t):
    """Many-to-many: rows of one table linked through a bridge table to another."""
    if not schema["bridges"]:
        return None
    bridge, a_fk, b_fk, phrase = rng.choice(schema["bridges"])
    tables = {x["name"]: x for x in schema["tables"]}
    b = tables[bridge]
    a, other = tables[b["links"][a_fk][0]], tables[b["links"][b_fk][0]]
    label, _, labels, _ = a["label"]
    joins = f"FROM {a['name']} AS a JOIN {bridge} AS b ON b.{a_fk} = a.id"
    if rng.random() < 0.3:  # condition on the bridge table itself
        ncol, nen, nv = pick(rng, b, "number")
        question = f"Give the {labels} of {a['many']} that appear in {bridge} with {an(nen)} of at least {nv}."
        return question, f"SELECT DISTINCT a.{label} {joins} WHERE b.{ncol} >= {nv}"
    ocol, oen, ov = pick(rng, other, "text")
    joins += f" JOIN {other['name']} AS o ON b.{b_fk} = o.id"
    question = f"List the distinct {labels} of {a['many']} {phrase} whose {oen} is {ov}."
    return question, f"SELECT DISTINCT a.{label} {joins} WHERE o.{ocol} = {sql_value(ov)}"


SQL_TEMPLATES = [
    q_filter_number, q_filter_text, q_count, q_aggregate, q_group, q_top, q_distinct,
    q_having, q_between, q_two_filters, q_lookup, q_join_filter, q_join_group, q_bridge,
]


def sql_doc(rng):
    while True:
        schema = rng.choice(SCHEMAS)
        made = rng.choice(SQL_TEMPLATES)(rng, schema, rng.choice(schema["tables"]))
        if made:
            question, sql = made
            return f"{schema_line(schema)}\nQuestion: {question}\nSQL: {sql};\n"


def check_sql(doc):
    """True if the document's query runs on an empty database of its schema."""
    schema, _, sql = doc.split("\n")[:3]
    schema_db(schema).execute(sql[len("SQL: "):])
    return True


def build_sql(seed=SEED):
    rng = random.Random(seed)
    return generate(rng, sql_doc, SQL_TRAIN, marker="SQL:", check=check_sql)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

BUILDERS = {"code": build_code, "prose": build_prose, "math": build_math, "sql": build_sql}


def build_corpus(seed=SEED):
    return {domain: BUILDERS[domain](seed) for domain in DOMAINS}


def report(corpus):
    print(f"Python {sys.version.split()[0]}")
    print(f"{'domain':8}{'train docs':>12}{'train chars':>13}{'heldout docs':>14}"
          f"{'heldout chars':>15}{'prompts':>9}")
    for domain, parts in corpus.items():
        print(f"{domain:8}{len(parts['train']):12}{sum(map(len, parts['train'])):13,}"
              f"{len(parts['heldout']):14}{sum(map(len, parts['heldout'])):15,}"
              f"{len(parts['prompts']):9}")


def main(seed=SEED, path=CORPUS_PATH):
    corpus = build_corpus(seed)
    report(corpus)
    payload = json.dumps(corpus, sort_keys=True, ensure_ascii=False).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(payload)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
