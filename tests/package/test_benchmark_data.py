"""The fact records that ship with the repository are what benchmarks/data/README.md says they are."""

import os
import re
from collections import Counter

import pytest
from helpers import REPO

from uio_ds.eval.facts import load_fact_records, records_digest
from uio_ds.formats import fact_templates

DATA = os.path.join(REPO, "benchmarks", "data")


@pytest.mark.parametrize("name, lengths, per_length, depths", [
    ("facts_held_out_2k.jsonl.gz", (2048,), 150, (0.0, 1.0)),
    ("facts_held_out_long.jsonl.gz", (4096, 8192, 16384, 32768), 16, (0.0, 0.5)),
    ("facts_held_out_near.jsonl.gz", (480,), 100, (0.0, 0.45)),
    ("facts_held_out_mid.jsonl.gz", (736, 992), 50, (0.0, 0.45)),
])
def test_committed_fact_records_match_their_readme(name, lengths, per_length, depths):
    records = load_fact_records(os.path.join(DATA, name))
    readme = open(os.path.join(DATA, "README.md"), encoding="utf-8").read()
    section = readme[readme.index(f"`{name}`"):]
    # the digest every facts report carries, as the README gives it for this file
    assert records_digest(records) == re.search(r"`([0-9a-f]{16})`", section).group(1)
    near = Counter(min(lengths, key=lambda n: abs(n - r["tokens"])) for r in records)
    assert near == {n: per_length for n in lengths}
    assert all(abs(r["tokens"] - min(lengths, key=lambda n: abs(n - r["tokens"]))) <= 16 for r in records)
    held_out = set(fact_templates("held_out"))
    for r in records:  # one fact, asked about, in a wording no training data holds, at its depth
        (fact,) = r["facts"]
        assert fact["template"] in held_out and r["answers"] == [fact["key"]] and fact["key"] in r["prompt"]
        assert depths[0] <= fact["depth"] <= depths[1]
