"""Loader for the shipped multi-domain corpus (``data/corpus.json.gz``).

The corpus is built once by ``python zoo/build_corpus.py`` and
shipped with the package, so loading it needs nothing but the standard
library.  Its format is a gzipped JSON object::

    {
      "code":  {"train": [str, ...], "heldout": [str, ...], "prompts": [str, ...]},
      "prose": {...},
      "math":  {...},
      "sql":   {...},
    }

* ``train``   -- documents for training (or fitting) small draft/target models.
* ``heldout`` -- documents never seen in ``train``, used for evaluation.
* ``prompts`` -- ``prompts[i]`` is a proper prefix of ``heldout[i]``: give it
  to a model and compare what it generates with the rest of ``heldout[i]``.

The four domains:

* ``code``  -- top-level functions and classes from the Python standard library.
* ``prose`` -- entries of Ambrose Bierce's "The Devil's Dictionary" (1911).
* ``math``  -- generated word problems, ``Question: ...\\nAnswer: ... The answer is N.\\n``.
* ``sql``   -- generated text-to-SQL, ``Schema: ...\\nQuestion: ...\\nSQL: ...;\\n``.

See ``data/PROVENANCE.md`` for sources, licences and sizes.
"""

import functools
import gzip
import json
from pathlib import Path

DOMAINS = ("code", "prose", "math", "sql")
CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.json.gz"


@functools.lru_cache(maxsize=None)
def load_corpus() -> dict:
    """Return ``{domain: {"train": [...], "heldout": [...], "prompts": [...]}}``.

    The result is cached: every call returns the same dict, so do not modify it.
    """
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        return json.load(f)
