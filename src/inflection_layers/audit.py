"""Overlap audit: which evaluation sentences the source models (or SST-2 at all) have already seen.

SST was built from the same rottentomatoes.com snippets as Rotten Tomatoes, so most RT evaluation
sentences stand in SST-2 train, labels included. Three flags per evaluation sentence:

- ``in_source``: its exact-match key (:func:`normalise`) equals that of a sentence of
  ``sst2_source``, the sample the source models trained on;
- ``in_sst2``: equals that of any sentence of SST-2 train or dev;
- ``phrase_covered``: ``phrase_cover_share >= 0.5``, where the share is the largest fraction of
  the sentence's words (:func:`words`) covered by one SST-2 train item found in it as a contiguous
  run of words. SST-2 train is made of phrases of the treebank as well as whole sentences, so an
  exact sentence match undercounts what a model trained on it has seen.

Clean subsets: ``clean_source`` = not in_source, ``clean_sst2`` = not in_sst2, ``clean_phrase`` =
not in_sst2 and not phrase_covered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pandas as pd

COVER_THRESHOLD = 0.5
FLAGS = ("in_source", "in_sst2", "phrase_covered")
COLUMNS = ["id", "target", "split", "in_source", "in_sst2", "phrase_covered", "phrase_cover_share"]
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_WORD = re.compile(r"[a-z0-9]+")
_NT = re.compile(r"(?<=[a-z])n't\b")


def normalise(text: str) -> str:
    """The exact-match key: lower case with only ASCII letters and digits kept, concatenated."""
    return _NOT_ALNUM.sub("", text.lower())


def words(text: str) -> list[str]:
    """The phrase test's words: maximal runs of ASCII letters and digits of the lower-cased text, with
    "n't" split off as SST-2's treebank tokenisation does ("isn't" -> is, n, t, as SST-2's "is n't")."""
    return _WORD.findall(_NT.sub(" n't", text.lower()))


def phrase_set(texts: Iterable[str]) -> set[str]:
    """Every reference item as its words joined by single spaces (empty items left out)."""
    return {p for p in (" ".join(words(t)) for t in texts) if p}


def cover_share(ws: list[str], phrases: set[str]) -> float:
    """The largest share of `ws` covered by one phrase of `phrases` as a contiguous run; 0 if none.

    Spans are tried longest first, so the first hit is the answer (a sentence that is itself an item
    costs one lookup).
    """
    n = len(ws)
    for length in range(n, 0, -1):
        for start in range(n - length + 1):
            if " ".join(ws[start : start + length]) in phrases:
                return length / n
    return 0.0


def audit_frame(
    evals: Mapping[str, pd.DataFrame], source: pd.DataFrame, sst2_train: pd.DataFrame, sst2_dev: pd.DataFrame
) -> pd.DataFrame:
    """One row per evaluation sentence of `evals` (keyed ``<target>_<split>``), in key then row order."""
    source_keys = {normalise(t) for t in source["text"]}
    sst2_keys = {normalise(t) for t in sst2_train["text"]} | {normalise(t) for t in sst2_dev["text"]}
    phrases = phrase_set(sst2_train["text"])
    parts = []
    for name, df in evals.items():
        target, split = name.split("_", 1)
        texts = df["text"].tolist()
        keys = [normalise(t) for t in texts]
        share = [cover_share(words(t), phrases) for t in texts]
        parts.append(
            pd.DataFrame(
                {
                    "id": df["id"].to_numpy(),
                    "target": target,
                    "split": split,
                    "in_source": [k in source_keys for k in keys],
                    "in_sst2": [k in sst2_keys for k in keys],
                    "phrase_covered": [s >= COVER_THRESHOLD for s in share],
                    "phrase_cover_share": share,
                }
            )
        )
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    return out[COLUMNS].astype(dict.fromkeys(FLAGS, bool) | {"phrase_cover_share": float})


def clean_masks(audit: pd.DataFrame) -> dict[str, pd.Series]:
    """The clean subsets of an audit frame as boolean masks."""
    return {
        "clean_source": ~audit["in_source"],
        "clean_sst2": ~audit["in_sst2"],
        "clean_phrase": ~(audit["in_sst2"] | audit["phrase_covered"]),
    }


def summarise(audit: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and split: n, count and share of each flag, the clean subsets' sizes, the mean cover share."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    masks = clean_masks(audit)
    for (target, split), rows in audit.groupby(["target", "split"], sort=False).groups.items():
        part, n = audit.loc[rows], len(rows)
        entry: dict[str, float] = {"n": n}
        for flag in FLAGS:
            count = int(part[flag].sum())
            entry[flag] = count
            entry[f"{flag}_share"] = round(count / n, 6) if n else 0.0
        for name, mask in masks.items():
            entry[name] = int(mask.loc[rows].sum())
        entry["phrase_covered_in_clean_sst2"] = int((masks["clean_sst2"] & part["phrase_covered"]).loc[rows].sum())
        entry["mean_phrase_cover_share"] = round(float(part["phrase_cover_share"].mean()), 6) if n else 0.0
        out.setdefault(str(target), {})[str(split)] = entry
    return out
