"""Entity tag schemes (finetune/tag_schemes.py): the same entities written in BIO, IOBES, BMES or
BILOU score the same and decode to the same spans; the scheme is found from the tags, and a tag set
of no one scheme is refused in one line."""

import pytest

from finetune import InputError
from finetune.metrics import entity_report
from finetune.tag_schemes import detect_scheme, entity_spans

# (type, start, end exclusive) per sentence
Spans = list[tuple[str, int, int]]


def write_tags(length: int, spans: Spans, scheme: str) -> list[str]:
    """One sentence's tags in ``scheme`` for the given entities."""
    inside, last, unit = {"bio": "IIB", "iobes": "IES", "bmes": "MES", "bilou": "ILU"}[scheme]
    tags = ["O"] * length
    for kind, start, end in spans:
        if end - start == 1:
            tags[start] = f"{unit}-{kind}"
            continue
        tags[start] = f"B-{kind}"
        for position in range(start + 1, end - 1):
            tags[position] = f"{inside}-{kind}"
        tags[end - 1] = f"{last}-{kind}"
    return tags


LENGTHS = [9, 7, 5, 6]
GOLD: list[Spans] = [
    [("ORG", 0, 3), ("PER", 4, 5), ("LOC", 6, 8)],
    [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 7)],  # two entities touching
    [("LOC", 1, 2)],
    [],
]
PREDICTED: list[Spans] = [
    [("ORG", 0, 2), ("PER", 4, 5), ("LOC", 6, 8)],  # ORG one word short: wrong; PER, LOC right
    [("PER", 0, 2), ("ORG", 3, 4), ("ORG", 4, 7)],  # PER right; LOC typed ORG; ORG right
    [],  # LOC missed
    [("PER", 2, 4)],  # spurious
]
# gold 7 entities, predicted 7, correct 4: precision = recall = F1 = 4/7


@pytest.mark.parametrize("scheme", ["bio", "iobes", "bmes", "bilou"])
def test_the_same_entities_score_the_same_in_every_scheme(scheme):
    gold = [write_tags(n, spans, scheme) for n, spans in zip(LENGTHS, GOLD)]
    predicted = [write_tags(n, spans, scheme) for n, spans in zip(LENGTHS, PREDICTED)]
    assert detect_scheme({tag for row in gold for tag in row}, "train") == scheme
    report = entity_report(gold, predicted, scheme)
    assert report["entities"] == 7
    assert report["precision"] == pytest.approx(4 / 7)
    assert report["recall"] == pytest.approx(4 / 7)
    assert report["f1"] == pytest.approx(4 / 7)
    assert report["per_type"]["PER"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert report["per_type"]["LOC"]["recall"] == pytest.approx(1 / 3)
    assert [entity_spans(row, scheme) for row in gold] == GOLD


@pytest.mark.filterwarnings("ignore:.*seems not to be NE tag")
def test_bio_rules_misread_the_other_schemes():
    """Why the scheme matters: conlleval's rules on BILOU or BMES tags find other spans."""
    two_people = ["U-PER", "U-PER", "O"]  # two one-word persons side by side
    assert entity_spans(two_people, "bilou") == [("PER", 0, 1), ("PER", 1, 2)]
    assert entity_spans(two_people, "bio") == [("PER", 0, 2)]
    predicted = ["S-PER", "M-PER", "E-PER", "O"]  # a tagger's slip: S- then M-/E-
    assert entity_spans(predicted, "bmes") == [("PER", 0, 1)]
    assert entity_spans(predicted, "bio") == [("PER", 0, 1), ("PER", 0, 3)]  # overlapping spans


def test_spans_that_break_the_scheme_do_not_count_in_strict_schemes():
    """An E- without its B- is no entity in iobes/bmes (strict), while bio reads a stray I- as one."""
    assert entity_spans(["O", "M-ORG", "E-ORG", "S-PER"], "bmes") == [("PER", 3, 4)]
    assert entity_spans(["O", "I-ORG", "I-ORG"], "bio") == [("ORG", 1, 3)]
    assert entity_spans(["B-LOC", "O", "U-PER"], "bilou") == [("PER", 2, 3)]


@pytest.mark.parametrize(
    "tags, scheme",
    [
        ({"O", "B-PER"}, "bio"),
        ({"O", "I-PER", "I-LOC"}, "bio"),  # IOB1-style: conlleval reads it
        ({"O", "B-PER", "E-PER", "S-LOC"}, "iobes"),  # no I-/M-: iobes and bmes read it alike
        ({"O", "B-PER", "M-PER", "E-PER"}, "bmes"),
        ({"O", "U-PER", "L-PER", "B-PER"}, "bilou"),
    ],
)
def test_the_scheme_is_the_first_that_holds_every_prefix(tags, scheme):
    assert detect_scheme(tags, "train") == scheme


@pytest.mark.parametrize(
    "tags, given, message",
    [
        (
            {"O", "B-PER", "M-PER", "I-LOC"},
            "auto",
            "train mixes the tag prefixes of different schemes (B, I, M): none of bio (B/I),",
        ),
        (
            {"O", "B-PER", "L-PER", "E-PER"},
            "auto",
            "train mixes the tag prefixes of different schemes (B, E, L)",
        ),
        (
            {"O", "PER", "B-LOC"},
            "auto",
            "train has tags that are neither O nor PREFIX-TYPE: 'PER'; entity tags look like B-PER",
        ),
        (
            {"O", "B-PER", "S-PER"},
            "bio",
            "train has tags outside tokens.tag_scheme=bio (B/I-TYPE and O): 'S-PER'; fix the tags",
        ),
    ],
)
def test_a_tag_set_of_no_one_scheme_is_refused_in_one_line(tags, given, message):
    with pytest.raises(InputError) as err:
        detect_scheme(tags, "train", given)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_a_given_scheme_that_fits_the_tags_is_kept():
    """B-/I- tags that a user says are bilou: a B- not closed by L- is then no entity."""
    assert detect_scheme({"O", "B-PER", "I-PER"}, "train", "bilou") == "bilou"
    assert entity_spans(["B-PER", "I-PER", "O"], "bilou") == []
