"""Entity tag schemes: which one a tag set is written in, and the entity spans its rules give.

NER sets come tagged in one of four schemes, each tag ``O`` or ``PREFIX-TYPE``:

    bio    B- opens an entity, I- continues it (IOB2, CoNLL-2003)
    iobes  as bio, plus E- for an entity's last word and S- for a one-word entity
    bmes   iobes as Chinese sets spell it: M- (middle) for I- (MSRA, Resume, People's Daily)
    bilou  B- begin, I- inside, L- last, U- unit (a one-word entity)

Scored with the wrong scheme's rules the number means nothing (BMES read as BIO cuts every span at
its M- and E- tags), so the scheme is found from the training tags (or given as
``tokens.tag_scheme``) and every span is read with its rules: bio by seqeval's default mode, which
is conlleval's (an I- after O or another type opens an entity, so published CoNLL-2003 numbers
compare); the others by seqeval's strict mode, in which a span counts only when it opens and closes
as the scheme says (bmes with M- read as I-, so it is iobes letter for letter).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from finetune import InputError

# The prefixes of each scheme, in the order detection tries them: the first that holds every
# prefix of a tag set wins, so a set using only B- and I- is bio, one with B-/E-/S- only is iobes.
SCHEMES: dict[str, frozenset[str]] = {
    "bio": frozenset("BI"),
    "iobes": frozenset("BIES"),
    "bmes": frozenset("BMES"),
    "bilou": frozenset("BILU"),
}
OUTSIDE = "O"


def _prefix(tag: str) -> str | None:
    """The prefix of a PREFIX-TYPE tag (None for O or a tag of another shape)."""
    prefix, dash, kind = tag.partition("-")
    return prefix if dash and len(prefix) == 1 and kind else None


def scheme_of(tags: Collection[str]) -> str | None:
    """The first of SCHEMES whose prefixes hold every entity tag, or None when none does (a tag
    that is not PREFIX-TYPE, or prefixes of different schemes)."""
    if any(tag != OUTSIDE and _prefix(tag) is None for tag in tags):
        return None
    prefixes = {_prefix(tag) for tag in tags if tag != OUTSIDE}
    return next((name for name, allowed in SCHEMES.items() if prefixes <= allowed), None)


def detect_scheme(tags: Collection[str], source: str, given: str = "auto") -> str:
    """The scheme of a training tag set: ``given`` when it is not "auto" (after checking that the
    tags fit it), else the first of SCHEMES holding every prefix. Anything else is refused in one
    line naming the tags that do not fit."""
    shapeless = sorted(tag for tag in tags if tag != OUTSIDE and _prefix(tag) is None)
    if shapeless:
        raise InputError(
            f"{source} has tags that are neither O nor PREFIX-TYPE: {', '.join(map(repr, shapeless[:5]))}; "
            f"entity tags look like B-PER, I-PER (bio), B/M/E/S-PER (bmes), B/I/E/S-PER (iobes) or "
            f"B/I/L/U-PER (bilou)"
        )
    if given != "auto":
        stray = sorted(tag for tag in tags if tag != OUTSIDE and _prefix(tag) not in SCHEMES[given])
        if stray:
            raise InputError(
                f"{source} has tags outside tokens.tag_scheme={given} "
                f"({'/'.join(sorted(SCHEMES[given]))}-TYPE and O): {', '.join(map(repr, stray[:5]))}; "
                f"fix the tags or set tokens.tag_scheme=auto"
            )
        return given
    found = scheme_of(tags)
    if found:
        return found
    prefixes = {_prefix(tag) for tag in tags if tag != OUTSIDE}
    raise InputError(
        f"{source} mixes the tag prefixes of different schemes ({', '.join(sorted(prefixes))}): "
        f"none of bio (B/I), iobes (B/I/E/S), bmes (B/M/E/S), bilou (B/I/L/U) holds them all; "
        f"rewrite the tags in one scheme"
    )


def _strict(scheme: str):
    """seqeval's strict-mode scheme class and the tag spelling it reads (bmes: M- as I-)."""
    from seqeval.scheme import BILOU, IOBES

    if scheme == "bilou":
        return BILOU, lambda tag: tag
    return IOBES, lambda tag: "I" + tag[1:] if tag.startswith("M-") else tag


def seqeval_inputs(
    gold: list[list[str]], predicted: list[list[str]], scheme: str
) -> tuple[list[list[str]], list[list[str]], dict]:
    """The tag sequences and keyword arguments seqeval's metrics take to score ``scheme``'s spans."""
    if scheme == "bio":
        return gold, predicted, {}
    strict, spelling = _strict(scheme)

    def respell(rows: list[list[str]]) -> list[list[str]]:
        return [[spelling(tag) for tag in row] for row in rows]

    return respell(gold), respell(predicted), {"mode": "strict", "scheme": strict}


def entity_spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, start, end) of each entity in one sentence's tags, ``end`` exclusive."""
    if scheme == "bio":
        from seqeval.metrics.sequence_labeling import get_entities

        return [(kind, start, end + 1) for kind, start, end in get_entities(list(tags))]
    from seqeval.scheme import Tokens

    strict, spelling = _strict(scheme)
    return [
        (entity.tag, entity.start, entity.end)
        for entity in Tokens([spelling(tag) for tag in tags], strict).entities
    ]
