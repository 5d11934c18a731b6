"""The data layer: tokenizers, the embedded TFDS corpus, packing and exact resume."""

import ast
import json
import operator
import re
from fractions import Fraction

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_rl.data import (
    arithmetic,
    corpus,
    countdown_docs,
    draws,
    facts,
    labelled,
    lookup,
    packing,
    skills,
)
from moe_rl.data.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer, train_bpe
from moe_rl.train import configs, lm

BYTE = ByteTokenizer()


# --- tokenizers -------------------------------------------------------------------------------


@given(st.text())
def test_byte_round_trip(text):
    ids = BYTE.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == BYTE.bos_id and ids[-1] == BYTE.eos_id
    assert all(0 <= i < BYTE.vocab_size for i in ids)
    assert BYTE.decode(ids) == text


@pytest.fixture(scope="module")
def learned_bpe(tmp_path_factory):
    docs = list(arithmetic.documents(500, seed=0, mix="r1"))
    return train_bpe(docs, 300, str(tmp_path_factory.mktemp("bpe"))), docs


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_learned_bpe_round_trips_any_text(learned_bpe, text):
    tok, _ = learned_bpe
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text


def test_learned_bpe_specials_digits_and_compression(learned_bpe):
    tok, docs = learned_bpe
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 300
    digits = tok.encode("12345")
    assert [tok.decode([i]) for i in digits] == list("12345")  # one token per digit
    assert sum(len(tok.encode(d)) for d in docs) < 0.7 * sum(len(d.encode()) for d in docs)


def test_learned_bpe_with_whole_numbers_merges_frequent_numbers(tmp_path):
    """numbers='whole' ('bpe:<vocab>:numbers'): frequent numbers become one token each, two
    equal numbers two equal tokens; any text still round-trips."""
    docs = list(arithmetic.documents(2000, seed=0, mix="countdown"))
    tok = train_bpe(docs, 600, str(tmp_path), numbers="whole")
    assert sum(len(tok.encode(str(n))) == 1 for n in range(101)) >= 60
    a, b = tok.encode("36 vs 36:")[0], tok.encode("36 vs 36:")[-2]
    assert a == b and tok.decode([a]) == "36"
    assert tok.decode(tok.encode("12345 x")) == "12345 x"
    with pytest.raises(ValueError, match="'bpe:<vocab size >= 260>:numbers'"):
        lm.run_tokenizer("bpe:600:whole", docs, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="allowed"):
        train_bpe(docs, 600, str(tmp_path / "y"), numbers="digits")


def test_learned_bpe_with_spaced_numbers_joins_the_space(tmp_path):
    """numbers='spaced' ('bpe:<vocab>:spaced', GPT-2's pre-tokenization): " 36" is one token,
    the same on both sides of a comparison, and a Countdown try takes fewer tokens than with
    'whole' numbers; any text still round-trips."""
    docs = list(arithmetic.documents(2000, seed=0, mix="countdown_drilled"))
    spaced = lm.run_tokenizer("bpe:600:spaced", docs, str(tmp_path / "spaced"))
    whole = train_bpe(docs, 600, str(tmp_path / "whole"), numbers="whole")
    ids = spaced.encode(" 36 vs 36:")
    assert [spaced.decode([i]) for i in ids] == [" 36", " vs", " 36", ":"]
    assert sum(len(spaced.encode(f" {n}")) == 1 for n in range(101)) >= 60
    attempt = " Try (7 + 5) * 3: 7 + 5 = 12, 12 * 3 = 36, 36 vs 22: no."
    assert len(spaced.encode(attempt)) < 0.8 * len(whole.encode(attempt))
    assert spaced.decode(spaced.encode("12345 x (7+1)")) == "12345 x (7+1)"


def test_learned_bpe_is_deterministic(learned_bpe, tmp_path):
    tok, docs = learned_bpe
    again = train_bpe(docs, 300, str(tmp_path))
    with open(tok.path) as a, open(again.path) as b:
        assert a.read() == b.read()


def test_byte_special_ids_and_invalid_utf8():
    specials = {BYTE.pad_id, BYTE.bos_id, BYTE.eos_id}
    assert len(specials) == 3 and BYTE.pad_id == 0
    assert not specials & set(BYTE.encode("".join(map(chr, range(256)))))
    assert BYTE.vocab_size % 8 == 0
    assert BYTE.decode([BYTE.offset + 0xFF, BYTE.offset + ord("a"), 260]) == "\ufffda"


def _tiny_hf_tokenizer(folder, config: dict | None):
    """A byte-level BPE trained on three strings, saved (with its config) into folder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["12 + 34 = 46", "hello world", "What is 7 * 8?"], trainer)
    folder.mkdir(exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    config = {
        "bos_token": {"content": "<s>", "special": True},  # AddedToken form
        "eos_token": "<|end|>",
        "pad_token": "<pad>",
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    }
    _tiny_hf_tokenizer(folder, config)
    return folder


@settings(max_examples=30)
@given(st.text())
def test_hf_adapter_round_trip(hf_folder, text):
    tok = get_tokenizer(str(hf_folder))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text


def test_hf_adapter_reads_config(hf_folder, tmp_path):
    tok = get_tokenizer(str(hf_folder / "tokenizer.json"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 3)
    assert tok.chat_template.startswith("{% for")
    assert tok.vocab_size == len(Tokenizer.from_file(tok.path).get_vocab())
    bare = _tiny_hf_tokenizer(tmp_path / "bare", config=None)  # no config: common names
    tok = HFTokenizer(str(tmp_path / "bare"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == tuple(
        map(bare.token_to_id, ["<pad>", "<s>", "</s>"])
    )
    assert tok.chat_template is None


def test_get_tokenizer_rejects_unknown_names(tmp_path):
    for bad in ("bytes", str(tmp_path), str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="'byte'"):
            get_tokenizer(bad)


def test_a_truncated_tokenizer_file_is_named_with_what_to_do(hf_folder, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    text = (hf_folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text[: len(text) // 2])  # a killed write
    with pytest.raises(
        ValueError, match=r"cut/tokenizer.json is not a readable tokenizer .*delete"
    ):
        get_tokenizer(str(folder))


# --- the embedded corpus ----------------------------------------------------------------------

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _evaluate(expr: str) -> Fraction:
    """+ - * / over integer literals, exactly (a test helper for our own generated text)."""

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(ast.dump(node))

    return ev(ast.parse(expr, mode="eval").body)


def _fact_holds(fact: str) -> bool:
    """Whether a Solved.fact ('a + b = c', 'a plus b is c.', 'With ...: expr = t.') is true."""
    fact = fact.split(": ")[-1].rstrip(".")
    for word, op in (("plus", "+"), ("minus", "-"), ("times", "*"), ("is", "=")):
        fact = fact.replace(f" {word} ", f" {op} ")
    left, right = fact.split(" = ")
    return _evaluate(left) == int(right)


@pytest.mark.parametrize("kind", sorted(arithmetic.KINDS))
def test_generated_problems_are_right_unless_wrong(kind):
    rng = draws.Random(0)
    make = getattr(arithmetic, kind)
    assert all(_fact_holds(make(rng, wrong=False).fact) for _ in range(300))
    assert np.mean([not _fact_holds(make(rng, wrong=True).fact) for _ in range(300)]) > 0.8


def test_countdown_solutions_use_each_number_once():
    rng = draws.Random(1)
    for _ in range(300):
        numbers, target, solution, _ = countdown_docs.countdown_puzzle(rng, 4, 10, 100)
        assert sorted(map(int, re.findall(r"\d+", solution))) == sorted(numbers)
        assert _evaluate(solution) == target and target not in numbers and 1 <= target <= 100


def test_document_mix():
    docs = list(arithmetic.documents(3000, seed=0))
    assert docs == list(arithmetic.documents(3000, seed=0))
    assert docs != list(arithmetic.documents(3000, seed=1))
    think = np.mean(["<think>" in d and "</answer>" in d for d in docs])
    assert 0.08 < think < 0.25  # a minority in the R1 format
    r1_prefix = arithmetic.R1_ZERO_TEMPLATE.split("{prompt}")[0]
    assert any(d.startswith(r1_prefix) and ". Assistant: <think> " in d for d in docs)
    assert 0.2 < np.mean(["Answer:" in d for d in docs]) < 0.7
    assert 0.3 < np.mean(["Target" in d or "numbers" in d or "make" in d for d in docs]) < 0.6
    lengths = [len(d.encode()) for d in docs]
    assert min(lengths) >= 5 and np.median(lengths) < 300 and max(lengths) < 1200
    # Bare "Question: What is a + b?\nAnswer: c" documents: mostly, not always, right.
    pattern = re.compile(r"^Question: What is (\d+) \+ (\d+)\?\nAnswer: (\d+)$")
    sums = [m.groups() for d in docs if (m := pattern.match(d))]
    right = np.mean([int(a) + int(b) == int(c) for a, b, c in sums])
    assert len(sums) > 10 and 0.5 < right < 0.95


def test_r1_mix_leans_to_the_think_format_and_is_named_in_the_config():
    docs = list(arithmetic.documents(2000, seed=0, mix="r1"))
    thinks = [d for d in docs if "<think>" in d and "</answer>" in d]
    assert 0.45 < len(thinks) / len(docs) < 0.65
    assert np.mean(["Target" in d or "numbers" in d for d in docs]) < 0.15
    # Half the thinks only state a result; the rest work it out (columns restate the operands).
    short = [re.search(r"<think> [^.]*\. </think>", d) is not None for d in thinks]
    assert 0.45 < np.mean(short) < 0.75  # (some worked answers are one sentence too)
    columns = [d for d in thinks if "by columns." in d]
    assert len(columns) > 50
    # Most additions go by columns (the rest by a running sum of place parts), each column
    # stating the digits written so far; the last line's number is the answer.
    rng = draws.Random(0)
    sums = [arithmetic.addition(rng, False, column=0.8, so_far=True) for _ in range(400)]
    by_columns = [p for p in sums if p.steps[0].startswith("Ones:")]
    assert 0.72 < len(by_columns) / len(sums) < 0.88
    for p in by_columns:
        assert all(", so far " in line for line in p.steps if not line.startswith("Carried"))
        assert re.search(r"(\d+)\.$", p.steps[-1]).group(1) == p.answer
    assert any(p.steps[-1].startswith("Carried 1:") for p in by_columns)
    assert all("so far" in d for d in columns)
    for d in columns:
        a, b = re.search(r"<think> (\d+) \+ (\d+) by columns\.", d).groups()
        assert re.search(rf"\b{a}\b.*\b{b}\b", d.rsplit("<think>", 1)[0])  # the question's operands
    # Drills of the one-digit facts that column additions are made of: right but for slips.
    drills = [
        d
        for d in docs
        if d.split("\n")[0] in ("Addition facts:", "Quick sums:", "Drill:", "Mental math:")
    ]
    assert 0.05 < len(drills) / len(docs) < 0.15
    lines = [m.groups() for d in drills for m in re.finditer(r"(\d) \+ (\d)( \+ 1)? = (\d+)", d)]
    right = [int(x) + int(y) + bool(c) == int(s) for x, y, c, s in lines]
    assert len(lines) > 4 * len(drills) and 0.9 < np.mean(right) < 1.0
    # Only a few of them carry the 120-token R1-Zero prompt.
    r1_prefix = arithmetic.R1_ZERO_TEMPLATE.split("{prompt}")[0]
    assert 0.08 < np.mean([d.startswith(r1_prefix) for d in thinks]) < 0.25
    assert corpus.arithmetic_config(mix="r1").name.endswith("_mixr1")
    with pytest.raises(ValueError, match="config.data.mix='x'"):
        corpus.arithmetic_config(mix="x")


@pytest.mark.parametrize("compare", [False, True])
def test_countdown_search_tries_until_a_checked_hit(compare):
    """Both verdict styles: "not <target>" and, with compare (the 'countdown_compare' mix),
    "<value> vs <target>: no" / ": found it"."""
    rng = draws.Random(2)
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
    found = tries_seen = 0
    for _ in range(400):
        p = countdown_docs.countdown_search(rng, wrong=False, max_tries=6, compare=compare)
        numbers, target = _countdown_question(p.question)
        assert p.steps[0] == f"Target: {target}."  # restated before the tries
        tries = [w for w in p.steps if w.startswith("Try ")]
        assert 1 <= len(tries) <= 6
        texts = [w[4:].split(":", 1)[0] for w in tries]
        assert len(set(texts)) == len(texts)  # no expression tried twice (3 numbers: enough)
        for text, w in zip(texts, tries, strict=True):
            for x, op, y, z in step.findall(w):  # every step right
                assert _evaluate(f"{x} {op} {y}") == int(z)
            value = int(step.findall(w)[-1][3])
            assert value == _evaluate(text)  # the steps evaluate the expression tried
            assert w.endswith("found it.") == (value == target)
            if compare:  # the try's value and the target side by side
                assert w.endswith(
                    f", {value} vs {target}: {'found it' if value == target else 'no'}."
                )
            assert sorted(map(int, re.findall(r"\d+", text))) == sorted(numbers)
        # It stops at the first hit, which is the answer; a search that runs out says so.
        miss = ": no." if compare else f"not {target}."
        assert all(w.endswith(miss) for w in tries[:-1])
        if tries[-1].endswith("found it."):
            found += 1
            assert p.answer == texts[-1] and len(p.steps) == 1 + len(tries)
        else:
            assert p.steps[-1] == "I stop here." and p.answer == texts[-1]
        tries_seen += len(tries)
    assert 0.15 < found / 400 < 0.6 and 2 < tries_seen / 400 < 4
    if not compare:  # wrong searches: a try's last step slips or claims the target (false hit)
        wrong = [countdown_docs.countdown_search(rng, wrong=True) for _ in range(300)]
        claims = [p for p in wrong if p.steps[-1].endswith("found it.")]
        assert any(_evaluate(p.answer) != _countdown_question(p.question)[1] for p in claims)


def test_countdown_search_patience_gives_a_geometric_budget():
    """patience q ('countdown_long'): after each miss the writer goes on with probability q, up
    to max_tries: the searches that end without a hit have lengths 1..max_tries, the share
    stopping after k misses ~ (1 - q) q^(k-1), the longest exactly at max_tries."""
    rng = draws.Random(3)
    gave_up = []
    for _ in range(3000):
        p = countdown_docs.countdown_search(
            rng, wrong=False, compare=True, patience=0.8, max_tries=12
        )
        tries = [w for w in p.steps if w.startswith("Try ")]
        assert 1 <= len(tries) <= 12
        if p.steps[-1] == "I stop here.":
            gave_up.append(len(tries))
    counts = np.bincount(gave_up, minlength=13)
    # A search that gives up after k tries missed k times and its budget was k: P(budget = 1)
    # = 0.2, and more budgets of 1 than of 2 than of 3 end that way.
    assert counts[1] > counts[2] > counts[3] > 0 and counts[12] > 0
    assert 0.15 < counts[1] / 3000 < 0.25
    assert np.mean(gave_up) < 4


def test_countdown_search_comparisons_are_right_about_their_numbers():
    """compare=True: a wrong try's slip never lands on the target and is carried into its
    comparison, so no "found it" is false."""
    rng = draws.Random(2)
    step = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
    # Wrong searches: one try's last step slips, never onto the target, and its comparison is
    # of the slipped value: no false "found it".
    slipped = 0
    for _ in range(300):
        p = countdown_docs.countdown_search(rng, wrong=True, compare=True)
        _, target = _countdown_question(p.question)
        for w in (w for w in p.steps if w.startswith("Try ")):
            x, op, y, z = step.findall(w)[-1]
            slipped += _evaluate(f"{x} {op} {y}") != int(z)
            assert w.endswith(f", {z} vs {target}: {'found it' if int(z) == target else 'no'}.")
            if w.endswith("found it."):
                assert _evaluate(w[4:].split(":", 1)[0]) == target
    assert slipped > 200


def test_compare_facts_are_balanced_and_right():
    rng = draws.Random(4)
    pairs = []
    for wrong in (False, True):  # never wrong: a mislabelled equality teaches only noise
        for _ in range(300):
            fact = countdown_docs.compare_facts(rng, wrong).fact
            for line in fact.split("\n")[1:]:
                m = re.fullmatch(r"(\d+) vs (\d+): (found it|no)\.", line)
                pairs.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    assert all((v == t) == (verdict == "found it") for v, t, verdict in pairs)
    equal = np.mean([v == t for v, t, _ in pairs])
    near = np.mean([v != t and abs(v - t) <= 10 for v, t, _ in pairs])
    assert 0.4 < equal < 0.6 and near > 0.1


def _countdown_question(question: str) -> tuple[list[int], int]:
    m = re.search(r"numbers \[?([\d, ]+?)\]?,? (?:create an equation that equals|with) ", question)
    numbers = [int(n) for n in m.group(1).split(",")]
    target = re.search(r"(?:equals|Reach) (\d+)", question).group(1)
    return numbers, int(target)


def test_step_facts_are_the_steps_of_tries_and_right_unless_wrong():
    rng = draws.Random(3)
    for wrong in (False, True):
        facts_ = [countdown_docs.step_facts(rng, wrong) for _ in range(200)]
        lines = [line for f in facts_ for line in f.fact.split("\n")[1:]]
        assert len(lines) >= 6 * 200
        right = np.mean([_fact_holds(line) for line in lines])
        assert right == 1.0 if not wrong else 0.8 < right < 1.0


def test_countdown_mix_is_mostly_searches_in_the_think_format():
    docs = list(arithmetic.documents(2000, seed=0, mix="countdown"))
    thinks = [d for d in docs if "<think>" in d and "</answer>" in d]
    assert 0.3 < len(thinks) / len(docs) < 0.5
    searches = [d for d in thinks if re.search(r"<think> Target: \d+\. Try ", d)]
    assert len(searches) / len(thinks) > 0.85  # the rest are additions and subtractions
    assert np.mean([d.count("Try ") > 1 for d in searches]) > 0.4
    titles = ("Steps:", "Practice:", "Mental math:", "Quick ones:")
    assert 0.2 < np.mean([d.split("\n")[0] in titles for d in docs]) < 0.4
    assert corpus.arithmetic_config(mix="countdown").name.endswith("_mixcountdown")


def test_countdown_compare_mix_has_comparison_verdicts_and_drills():
    docs = list(arithmetic.documents(2000, seed=0, mix="countdown_compare"))
    searches = [d for d in docs if re.search(r"<think> Target: \d+\. Try ", d)]
    assert searches and all(" vs " in d for d in searches)
    steps = ("Steps:", "Practice:", "Mental math:", "Quick ones:")
    assert 0.12 < np.mean([d.split("\n")[0] in steps for d in docs]) < 0.28
    checks = ("Check:", "Compare:", "Same or not:", "Hit or miss:")
    assert 0.06 < np.mean([d.split("\n")[0] in checks for d in docs]) < 0.14


def test_patient_countdown_searches_stop_only_at_a_hit_or_their_last_try():
    """patient=True (the 'countdown_patient' mix): a search that gives up has tried 6 times,
    one that stops sooner stops at a hit; the mix's searches are patient and compare."""
    rng = draws.Random(3)
    lengths, gave_up = [], 0
    for _ in range(300):
        p = countdown_docs.countdown_search(rng, wrong=False, compare=True, patient=True)
        tries = [w for w in p.steps if w.startswith("Try ")]
        lengths.append(len(tries))
        if p.steps[-1] == "I stop here.":
            gave_up += 1
            assert len(tries) == 6
        else:
            assert tries[-1].endswith("found it.")
    assert 0.2 < gave_up / 300 < 0.8 and np.mean(lengths) > 4
    docs = list(arithmetic.documents(2000, seed=0, mix="countdown_patient"))
    searches = [d for d in docs if re.search(r"<think> Target: \d+\. Try ", d)]
    assert searches and all(" vs " in d for d in searches)
    stopped = [d for d in searches if "I stop here." in d]
    assert stopped and all(d.count("Try ") == 6 for d in stopped)


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to download or prepare a non-embedded dataset fails the test."""

    def refuse(self, *args, **kwargs):
        if self.name not in (corpus.ARITHMETIC, corpus.FACTS, corpus.SKILLS, corpus.LOOKUP):
            raise AssertionError(f"tried to prepare {self.name}")
        return original(self, *args, **kwargs)

    original = tfds.core.DatasetBuilder.download_and_prepare
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


def test_corpus_preparation_says_where_in_one_line(tmp_path, capfd, caplog):
    config = corpus.arithmetic_config(num_train=40, num_validation=8, seed=5)
    corpus.load_text_dataset(corpus.ARITHMETIC, "train", str(tmp_path), config=config)
    out, err = capfd.readouterr()
    said = out + err + caplog.text
    assert "Generated the embedded corpus moe_rl_arithmetic/train40_validation8_seed5" in out
    assert str(tmp_path) in out
    for noise in ("Downloading and preparing", "Unknown size", "Using custom data configuration"):
        assert noise not in said
    corpus.load_text_dataset(corpus.ARITHMETIC, "validation", str(tmp_path), config=config)
    assert "Generated" not in capfd.readouterr().out  # prepared once


def test_corpus_prepares_offline_deterministically(tmp_path, no_downloads):
    config = corpus.arithmetic_config(num_train=120, num_validation=30, seed=3)
    train = corpus.load_text_dataset(corpus.ARITHMETIC, "train", str(tmp_path / "a"), config=config)
    again = corpus.load_text_dataset(corpus.ARITHMETIC, "train", str(tmp_path / "b"), config=config)
    valid = corpus.load_text_dataset(
        corpus.ARITHMETIC, "validation", str(tmp_path / "a"), config=config
    )
    version = corpus.MoeRlArithmetic.VERSION
    assert list(tmp_path.glob(f"a/moe_rl_arithmetic/*/{version}/*train.array_record*"))
    assert (len(train), len(valid)) == (120, 30)
    assert list(train) == list(again) == list(arithmetic.documents(120, [3, 0]))
    assert train.__getitems__([5, 2]) == [train[5], train[2]] and train[-1] == train[119]
    assert len(set(valid) & set(train)) < 5  # different seeds per split; short docs may repeat


# --- the facts corpus ---------------------------------------------------------------------


def test_facts_people_are_distinct_and_deterministic():
    people = facts.people(500, seed=0)
    assert people == facts.people(500, seed=0) and people != facts.people(500, seed=1)
    assert len({p.name for p in people}) == 500
    for p in people:
        assert set(p.values) == set(facts.ATTRIBUTES)
        for attribute, values in facts.VALUES.items():
            assert p.values[attribute] in values
        month, day, year = re.fullmatch(r"(\w+) (\d+), (\d+)", p.values["birth_date"]).groups()
        assert month in facts.MONTHS and int(day) in facts.DAYS and int(year) in facts.YEARS
    # the lists are fixed (not seeded by the corpus seed) and hold distinct values
    for values in (facts.FIRST_NAMES, facts.LAST_NAMES, *facts.VALUES.values()):
        assert len(set(values)) == len(values)
    assert 40 < facts.mean_bits_per_person() < 44


def test_facts_documents_render_every_fact_in_spans_that_tile_the_text():
    people = facts.people(20, seed=0)
    train = list(facts.documents(60, 20, 0, "train"))
    assert train == list(facts.documents(60, 20, 0, "train"))
    for i, doc in enumerate(train):
        assert doc.entity == i % 20
        person = people[doc.entity]
        assert doc.text.startswith(person.name)
        ends = [0] + [end for _, _, end in doc.spans]
        assert [start for _, start, _ in doc.spans] == ends[:-1] and ends[-1] == len(doc.text)
        found = {
            facts.KINDS[k]: doc.text[a:b] for k, a, b in doc.spans if k < len(facts.ATTRIBUTES)
        }
        assert found == person.values  # each attribute once, with the person's value
        assert doc.text.count(".") == len(facts.ATTRIBUTES) and len(doc.text) < 190
    # Validation: the same people and facts in other renderings.
    valid = list(facts.documents(60, 20, 0, "validation"))
    assert [d.entity for d in valid] == [d.entity for d in train]
    assert len({d.text for d in valid} & {d.text for d in train}) < 3
    orders = {tuple(k for k, _, _ in d.spans if k < len(facts.ATTRIBUTES)) for d in train}
    assert len(orders) > 20  # sentences shuffled
    kinds = labelled.token_kinds(train[0], len(train[0].text) + 2, facts.KINDS.index("other"))
    assert kinds[0] == kinds[-1] == facts.KINDS.index("other")
    assert (kinds[1 : 1 + len(people[0].name)] == facts.KINDS.index("name")).all()


def test_skills_documents_apply_each_skills_code():
    table = skills.codes(6, seed=0)
    assert table.shape == (6, 26)
    for row in table:  # each code writes 13 letters, each for two plain letters
        written, counts = np.unique(row, return_counts=True)
        assert len(written) == skills.OUTPUTS and (counts == 26 // skills.OUTPUTS).all()
    assert not (skills.codes(6, seed=1) == table).all()
    docs = list(skills.documents(200, 6, 1.0, 0, "train"))
    assert docs == list(skills.documents(200, 6, 1.0, 0, "train"))
    kinds = skills.kinds(6)
    counts = np.zeros(6)
    for doc in docs:
        entries = doc.text.split(" ")
        assert len(entries) == skills.ENTRIES and len(doc.text) < 190
        for marker, plain, coded in entries:
            k = skills.MARKERS.index(marker)
            assert coded == skills.LETTERS[table[k, skills.LETTERS.index(plain)]]
            counts[k] += 1
        labels = labelled.token_kinds(doc, len(doc.text) + 2, len(kinds) - 1)[1:-1]
        for i, (marker, _, _) in enumerate(entries):
            assert labels[4 * i] == kinds.index("marker")
            assert labels[4 * i + 1] == kinds.index("plain")
            assert labels[4 * i + 2] == skills.MARKERS.index(marker)  # the coded letter's skill
    # Zipf frequencies: skill k drawn in proportion to 1 / (k + 1)
    np.testing.assert_allclose(counts / counts.sum(), skills.frequencies(6, 1.0), atol=0.01)
    valid = list(skills.documents(50, 6, 1.0, 0, "validation"))
    assert not {d.text for d in valid} & {d.text for d in docs}


def test_lookup_documents_are_the_table_one_fact_each():
    keys, values = lookup.table(500, seed=3)
    assert len(set(keys)) == 500 and all(len(k) == 2 and " " not in k for k in keys)
    assert set("".join(keys)) <= set(lookup.ALPHABET)
    assert values.min() >= 0 and values.max() < 26 and len(np.unique(values)) == 26
    assert lookup.table(500, seed=4)[0] != keys  # another table
    facts_of = {k: lookup.VALUES[v] for k, v in zip(keys, values, strict=True)}
    train = list(lookup.documents(1000, 500, 3, "train"))
    assert [d.text for d in train[:500]] == [k + facts_of[k] for k in keys]  # key i % num_keys
    assert [d.text for d in train[500:]] == [d.text for d in train[:500]]
    valid = list(lookup.documents(600, 500, 3, "validation"))
    assert sorted(d.text for d in valid[:500]) == sorted(d.text for d in train[:500])
    assert [d.text for d in valid[:10]] != [d.text for d in train[:10]]  # another order
    other = lookup.KINDS.index("other")
    for doc in train[:200] + valid[:200]:
        kinds = labelled.token_kinds(doc, 5, other)  # BOS k1 k2 v EOS
        measured = lookup.key_class(doc.text[:2])
        key = lookup.KINDS.index("key")
        assert kinds.tolist() == [other, key, key, measured, other]
    assert [lookup.key_class(k) for k in ("7a", "Qz", "q1", "{q")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_keys=9000"):
        lookup.table(9000, 0)
    with pytest.raises(ValueError, match="split='test'"):
        next(lookup.documents(1, 5, 0, "test"))


@pytest.mark.parametrize("kind", ["facts", "skills", "lookup"])
def test_labelled_corpora_prepare_offline_and_match_the_generators(kind, tmp_path, no_downloads):
    if kind == "facts":
        name = corpus.facts_name(num_people=10, num_train=40, num_validation=12, seed=2)
        assert name == "moe_rl_facts/people10_train40_validation12_seed2"
        make = lambda n, split: facts.documents(n, 10, 2, split)
        kinds, measured = facts.KINDS, len(facts.ATTRIBUTES)
    elif kind == "lookup":
        name = corpus.lookup_name(30, num_train=40, num_validation=12, seed=2)
        assert name == "moe_rl_lookup/keys30_train40_validation12_seed2"
        make = lambda n, split: lookup.documents(n, 30, 2, split)
        kinds, measured = lookup.KINDS, lookup.MEASURED
    else:
        name = corpus.skills_name(5, 0.5, num_train=40, num_validation=12, seed=2)
        assert name == "moe_rl_skills/skills5_zipf0.5_train40_validation12_seed2"
        make = lambda n, split: skills.documents(n, 5, 0.5, 2, split)
        kinds, measured = skills.kinds(5), 5
    train = corpus.load_text_dataset(name, "train", str(tmp_path))
    valid = corpus.load_labelled(name, "validation", str(tmp_path))
    assert list(train) == [d.text for d in make(40, "train")]
    assert list(valid) == list(make(12, "validation"))
    assert valid.__getitems__([3, 1]) == [valid[3], valid[1]]
    assert (valid.kinds, valid.measured) == (kinds, measured)


def test_labelled_corpus_names_are_checked():
    with pytest.raises(ValueError, match="people<N>|people"):
        corpus.load_text_dataset("moe_rl_facts/people10", "train")
    with pytest.raises(ValueError, match="num_people=0"):
        corpus.facts_name(0, 40, 12, 2)
    with pytest.raises(ValueError, match="num_skills=37"):
        corpus.skills_name(37, 1.0, 40, 12, 2)
    with pytest.raises(ValueError, match="num_keys=0"):
        corpus.lookup_name(0, 40, 12, 2)
    with pytest.raises(ValueError, match="keys"):
        corpus.load_text_dataset("moe_rl_lookup/keys10", "train")


class MoeRlTestTexts(tfds.core.GeneratorBasedBuilder):
    """A stand-in for an external TFDS text dataset (two text fields, neither called 'text')."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"title": text, "body": text})
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(5):
            yield i, {"title": f"t{i}", "body": f"body {i} ünïcode"}


def test_external_dataset_not_prepared_is_a_clear_error(tmp_path, no_downloads):
    with pytest.raises(corpus.DatasetNotPreparedError, match="tfds build tiny_shakespeare"):
        corpus.load_text_dataset("tiny_shakespeare", "train", str(tmp_path))
    # The hint names config keys a user can set, and the download key reaches the loader.
    with pytest.raises(corpus.DatasetNotPreparedError, match=r"--config\.data\.download=True"):
        corpus.load_text_dataset("tiny_shakespeare", "train", str(tmp_path))
    config = ml_collections.ConfigDict(
        {
            "recipe": "pretrain",
            "data": configs.data(name="tiny_shakespeare", data_dir=str(tmp_path)),
        }
    )
    config.data.download = True
    with pytest.raises(AssertionError, match="tried to prepare tiny_shakespeare"):  # no_downloads
        lm.load_sources(config)
    with pytest.raises(ValueError, match="Unknown dataset"):
        corpus.load_text_dataset("no_such_dataset_anywhere", "train", str(tmp_path))


@pytest.mark.parametrize("size", [1000, 65536, 100_000])
def test_a_truncated_corpus_file_is_named_with_what_to_do(tmp_path, size):
    """A truncated array_record file fails at load, naming the folder to delete (at 64 KiB it
    used to read every document as the string 'None')."""
    cfg = corpus.arithmetic_config(200, 20, 0, "default")
    corpus.load_text_dataset(corpus.ARITHMETIC, "train", str(tmp_path), config=cfg)
    (path,) = tmp_path.glob("moe_rl_arithmetic/*/*/*train.array_record*")
    with open(path, "r+b") as f:
        f.truncate(size)
    with pytest.raises(corpus.CorruptDatasetError, match="truncated or damaged") as e:
        corpus.load_text_dataset(corpus.ARITHMETIC, "train", str(tmp_path), config=cfg)
    assert f"Delete {path.parent}" in str(e.value) and "generated again" in str(e.value)


def test_external_prepared_dataset_loads_by_name(tmp_path):
    MoeRlTestTexts(data_dir=str(tmp_path)).download_and_prepare(
        file_format="array_record", download_config=corpus.OFFLINE_DOWNLOAD_CONFIG
    )
    with pytest.raises(ValueError, match="text_key"):
        corpus.load_text_dataset("moe_rl_test_texts", "train", str(tmp_path))
    texts = corpus.load_text_dataset("moe_rl_test_texts", "train", str(tmp_path), text_key="body")
    assert sorted(texts) == [f"body {i} ünïcode" for i in range(5)]


# --- packing and resume -----------------------------------------------------------------------


def _check_layout(batch, pad_id):
    """Segments 1, 2, ... then padding (segment 0, pad id); positions restart per segment."""
    for tokens, seg, pos in zip(
        batch["tokens"], batch["segment_ids"], batch["positions"], strict=True
    ):
        used = int(np.sum(seg > 0))
        assert np.all(seg[used:] == 0) and np.all(tokens[used:] == pad_id)
        assert np.all(pos[used:] == 0)
        starts = np.flatnonzero(np.diff(seg[:used], prepend=0))
        assert list(seg[starts]) == list(range(1, len(starts) + 1))
        for s in range(1, len(starts) + 1):  # contiguous: seg only changes at the starts
            assert list(pos[seg == s]) == list(range(np.sum(seg == s)))


def _pieces(batches):
    """The token pieces (one per segment), in row order."""
    out = []
    for batch in batches:
        for tokens, seg in zip(batch["tokens"], batch["segment_ids"], strict=True):
            for s in range(1, int(seg.max(initial=0)) + 1):
                out.append(tokens[seg == s])
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(max_size=40), min_size=1, max_size=12),
    st.integers(1, 3),
    st.integers(4, 24),
)
def test_packing_keeps_every_token_in_order(texts, batch_size, seq_len):
    batches = list(
        packing.PackedBatches(texts, BYTE, batch_size, seq_len, shuffle=False, num_epochs=1)
    )
    for b in batches:
        assert set(b) == {"tokens", "segment_ids", "positions"}
        assert all(v.shape == (batch_size, seq_len) and v.dtype == np.int32 for v in b.values())
        _check_layout(b, BYTE.pad_id)
    docs = [BYTE.encode(t, add_bos=True, add_eos=True) for t in texts]
    pieces = [list(p) for p in _pieces(batches)]
    assert sum(pieces, []) == sum(docs, [])
    # A document that fits in a row is never split; a longer one fills whole rows.
    i = 0
    for doc in docs:
        if len(doc) <= seq_len:
            assert pieces[i] == doc
            i += 1
        else:
            n = 0
            while n < len(doc):
                n, i = n + len(pieces[i]), i + 1


def test_epochs_are_fresh_permutations():
    texts = [f"doc{i:02d}" for i in range(20)]
    it = packing.PackedBatches(texts, BYTE, 4, 32, seed=5, num_epochs=2)
    seen = [BYTE.decode(p) for p in _pieces(list(it))]
    first, second = seen[:20], seen[20:]
    assert sorted(first) == sorted(second) == texts and first != second != texts
    assert it.get_state() == {"epoch": 2, "index": 0, "offset": 0}


def test_shards_split_each_epoch():
    texts = [f"doc{i:02d}" for i in range(21)]
    shards = [
        [
            BYTE.decode(p)
            for p in _pieces(packing.PackedBatches(texts, BYTE, 2, 16, 1, True, 1, k, 3))
        ]
        for k in range(3)
    ]
    assert sorted(sum(shards, [])) == texts and all(len(s) == 7 for s in shards)


@pytest.mark.parametrize("sft", [False, True])
def test_resume_yields_the_same_batches(sft):
    docs = list(arithmetic.documents(12, seed=2)) + ["long " * 40]  # a doc spans rows
    source = [(d[:20], d[20:]) for d in docs] if sft else docs
    make = lambda: packing.PackedBatches(source, BYTE, batch_size=3, seq_len=48, seed=7)
    reference = make()
    expected = [next(reference) for _ in range(40)]  # several epochs
    offsets = set()
    for cut in range(0, 36, 3):
        run = make()
        for _ in range(cut):
            next(run)
        state = json.loads(json.dumps(run.get_state()))
        offsets.add(state["offset"] > 0)
        resumed = make()
        resumed.set_state(state)
        for want in expected[cut : cut + 4]:
            got = next(resumed)
            assert all(np.array_equal(got[k], want[k]) for k in want)
    assert sft or offsets == {True, False}  # some cuts fall inside a document
    with pytest.raises(ValueError, match="state"):
        reference.set_state({"epoch": 0})


def _check_sft(batch):
    """Layout and mask of SFT rows; returns the (prompt, completion) pairs found."""
    assert set(batch) == {"tokens", "segment_ids", "positions", "loss_mask"}
    _check_layout(batch, BYTE.pad_id)
    assert np.all(batch["loss_mask"][batch["segment_ids"] == 0] == 0)
    found = []
    for tokens, seg, mask in zip(
        batch["tokens"], batch["segment_ids"], batch["loss_mask"], strict=True
    ):
        for s in range(1, int(seg.max(initial=0)) + 1):
            t, m = tokens[seg == s], mask[seg == s]
            assert t[0] == BYTE.bos_id and t[-1] == BYTE.eos_id
            assert np.all(np.diff(m) >= 0)  # prompt (0) then completion (1)
            found.append((BYTE.decode(t[m == 0]), BYTE.decode(t[m == 1])))
            assert np.sum(m) == len(BYTE.encode(found[-1][1])) + 1  # completion and its EOS
    return found


def test_sft_batch_masks_only_completions():
    pairs = [("Q: 2 + 2?\nA:", " 4"), ("What is 7 * 8?", " <answer> 56 </answer>"), ("x", "y")]
    packed = packing.sft_batch(pairs, BYTE, seq_len=48)
    assert packed["tokens"].shape == (2, 48)
    assert _check_sft(packed) == pairs
    padded = packing.sft_batch(pairs, BYTE, seq_len=48, num_rows=4, pack=False)
    assert padded["tokens"].shape == (4, 48) and list(padded["segment_ids"].max(1)) == [1, 1, 1, 0]
    assert _check_sft(padded) == pairs
    with pytest.raises(ValueError, match="do not fit"):
        packing.sft_batch(pairs, BYTE, seq_len=48, num_rows=2, pack=False)
    cut = packing.sft_batch([("prompt", "completion " * 10)], BYTE, seq_len=16)
    assert cut["tokens"].shape == (1, 16) and cut["loss_mask"][0, :7].sum() == 0
    assert cut["loss_mask"][0, 7:].all()


def test_packed_batches_of_pairs_carry_the_mask():
    pairs = [("Q: 2 + 2?\nA:", " 4"), ("What is 7 * 8?", " 56")] * 3
    batches = list(packing.PackedBatches(pairs, BYTE, 2, 32, shuffle=False, num_epochs=1))
    assert sum((_check_sft(b) for b in batches), []) == pairs
