"""The WordNet 3.0 noun hierarchy: which ImageNet classes are kinds of a task's class.

ImageNet's classes are WordNet noun synsets (a wnid ``n01440764`` is the synset at offset
01440764 of WordNet 3.0's ``data.noun``), so the hierarchy says that a "dalmatian" or a "pickup"
is a kind of "dog" or "truck". The files are WordNet's own database (Debian's ``wordnet-base``
puts them in ``/usr/share/wordnet``): ``data.noun`` (synsets and their hypernym pointers),
``index.noun`` (lemma -> synsets, most frequent sense first) and ``noun.exc`` (irregular plurals).
Only the nouns are read; nothing else of WordNet is needed.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["WORDNET_DIRS", "NounHierarchy", "find_wordnet", "kinds_of"]

log = logging.getLogger(__name__)

# Where WordNet's database files usually are (Debian/Ubuntu wordnet-base, Homebrew, NLTK's corpus).
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet",
                "~/nltk_data/corpora/wordnet")
HYPERNYMS = ("@", "@i")  # hypernym and instance hypernym pointers


def find_wordnet(directory: str | Path | None = None) -> Path | None:
    """The first directory holding WordNet's noun files: ``directory``, ``$DHO_WORDNET``, then
    :data:`WORDNET_DIRS`; None when there is none."""
    candidates = [directory] if directory else [os.environ.get("DHO_WORDNET"), *WORDNET_DIRS]
    for candidate in candidates:
        if candidate and (Path(candidate).expanduser() / "data.noun").is_file():
            return Path(candidate).expanduser()
    return None


class NounHierarchy:
    """WordNet's nouns: each synset's hypernyms, and each lemma's synsets (most frequent first).
    Synsets are their ``data.noun`` offsets (ints)."""

    def __init__(self, hypernyms: dict[int, tuple[int, ...]], senses: dict[str, tuple[int, ...]],
                 exceptions: dict[str, str] | None = None) -> None:
        self.hypernyms, self.senses, self.exceptions = hypernyms, senses, exceptions or {}

    @classmethod
    def load(cls, directory: str | Path) -> NounHierarchy:
        """Read ``data.noun``, ``index.noun`` and (if present) ``noun.exc`` from ``directory``."""
        directory = Path(directory)
        hypernyms: dict[int, tuple[int, ...]] = {}
        with (directory / "data.noun").open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or not line.strip():
                    continue  # the licence header
                fields = line.split("|", 1)[0].split()
                words = int(fields[3], 16)
                at = 4 + 2 * words
                pointers = int(fields[at])
                found = []
                for p in range(pointers):
                    symbol, target, pos = fields[at + 1 + 4 * p: at + 4 + 4 * p]
                    if symbol in HYPERNYMS and pos == "n":
                        found.append(int(target))
                hypernyms[int(fields[0])] = tuple(found)
        senses: dict[str, tuple[int, ...]] = {}
        with (directory / "index.noun").open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or not line.strip():
                    continue
                fields = line.split()
                count = int(fields[2])
                senses[fields[0]] = tuple(int(o) for o in fields[-count:])
        exceptions = {}
        if (directory / "noun.exc").is_file():
            for line in (directory / "noun.exc").read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    exceptions[parts[0]] = parts[1]
        log.debug("WordNet nouns from %s: %d synsets, %d lemmas", directory, len(hypernyms), len(senses))
        return cls(hypernyms, senses, exceptions)

    def lemma_synsets(self, name: str) -> tuple[int, ...]:
        """The synsets of a class name, most frequent sense first: the name as a lemma ("ceiling
        fan" -> ceiling_fan), its singular, the words run together ("wild cat" -> wildcat), then
        its first word and its last ("car_side" -> car); () when none is a noun."""
        lemma = "_".join(name.lower().replace("-", "_").split()).strip("_")
        words = [w for w in lemma.split("_") if w]
        tries = [lemma, self._singular(lemma), "".join(words)]
        if len(words) > 1:
            tries += [words[0], self._singular(words[0]), words[-1], self._singular(words[-1])]
        for candidate in tries:
            if candidate in self.senses:
                return self.senses[candidate]
        return ()

    def _singular(self, word: str) -> str:
        if word in self.exceptions:
            return self.exceptions[word]
        for suffix, base in (("ies", "y"), ("ses", "s"), ("es", ""), ("s", "")):
            if word.endswith(suffix) and word[: -len(suffix)] + base in self.senses:
                return word[: -len(suffix)] + base
        return word

    @functools.cache  # noqa: B019 (one hierarchy per process; its synsets never change)
    def ancestors(self, synset: int) -> frozenset[int]:
        """``synset`` and every synset above it."""
        out = {synset}
        for parent in self.hypernyms.get(synset, ()):
            out |= self.ancestors(parent)
        return frozenset(out)


def kinds_of(hierarchy: NounHierarchy, wnids: Sequence[str], classnames: Sequence[str],
             senses: str = "first") -> Tensor:
    """[len(wnids), C] bool: whether ImageNet class k (its wnid) is a kind of task class c, i.e.
    one of c's synsets is k's synset or above it. ``senses``: the class name's most frequent noun
    sense only ("first"), or every sense ("all"; "bass" is then a voice and a fish)."""
    if senses not in ("first", "all"):
        raise ValueError(f"senses={senses!r}: use first or all")
    targets = []
    for name in classnames:
        found = hierarchy.lemma_synsets(name)
        targets.append(set(found[:1] if senses == "first" else found))
    out = torch.zeros(len(wnids), len(classnames), dtype=torch.bool)
    for k, wnid in enumerate(wnids):
        above = hierarchy.ancestors(int(wnid.lstrip("n")))
        for c, synsets in enumerate(targets):
            if synsets & above:
                out[k, c] = True
    return out
