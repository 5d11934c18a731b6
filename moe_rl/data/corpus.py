"""Pretraining corpora as random-access sequences of strings, read from TFDS array_record files.

`load_text_dataset(name, split, data_dir)` serves the embedded corpora `moe_rl_arithmetic`,
`moe_rl_facts`, `moe_rl_skills` and `moe_rl_lookup` (generated locally on first use, no
download) and any TFDS
text dataset already prepared in `array_record` format (e.g. `tiny_shakespeare`, `lm1b`).
Reading goes through `builder.as_data_source`, which needs neither TensorFlow nor network.
Nothing here downloads unless asked to with download=True. `load_labelled` reads the facts,
skills and lookup corpora with the kinds of their bytes (`labelled`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging as py_logging
import re
import time
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from moe_rl.data import arithmetic, facts, labelled, lookup, skills

ARITHMETIC = "moe_rl_arithmetic"
FACTS = "moe_rl_facts"
SKILLS = "moe_rl_skills"
LOOKUP = "moe_rl_lookup"
# Generate locally: no GCS lookup, and no statistics pass (a second read of all the data).
OFFLINE_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(
    try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP
)


@dataclasses.dataclass
class ArithmeticConfig(tfds.core.BuilderConfig):
    """Corpus size and seed; each config prepares into its own folder, named by config.name."""

    num_train: int = 100_000
    num_validation: int = 2_000
    seed: int = 0
    mix: str = "default"  # arithmetic.MIXES


_CONFIGS: dict[str, ArithmeticConfig] = {}


def arithmetic_config(
    num_train: int = 100_000, num_validation: int = 2_000, seed: int = 0, mix: str = "default"
) -> ArithmeticConfig:
    """A config named after its values, so each size and seed gets its own prepared copy.

    Memoized: TFDS accepts a config named like a registered one only if it is that object.
    """
    if mix not in arithmetic.MIXES:
        raise ValueError(f"config.data.mix={mix!r}; allowed: {sorted(arithmetic.MIXES)}")
    name = f"train{num_train}_validation{num_validation}_seed{seed}"
    name += "" if mix == "default" else f"_mix{mix}"
    config = ArithmeticConfig(
        name=name, num_train=num_train, num_validation=num_validation, seed=seed, mix=mix
    )
    return _CONFIGS.setdefault(name, config)


class MoeRlArithmetic(tfds.core.GeneratorBasedBuilder):
    """Arithmetic and Countdown documents (see `arithmetic`), generated from the config's seed.

    Bump VERSION whenever the generator's output changes: prepared copies are reused by version.
    """

    VERSION = tfds.core.Version("1.5.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Mix 'r1': additions, fact drills, short and worked thinks, restated operands.",
        "1.2.0": "Mix 'r1': 80% of additions by columns, stating the digits so far; more worked.",
        # 1.3.0 was a withdrawn pilot's (Countdown pilot 4): never reuse a version.
        "1.4.0": "Mix 'countdown_compare': verdicts compare side by side ('36 vs 22: no'), "
        "comparison drills, slips never onto the target; the other mixes as in 1.2.0.",
        "1.5.0": "Mix 'countdown_long': writers going on after a miss with probability 0.8, up "
        "to 12 tries; the other mixes as in 1.4.0.",
    }
    BUILDER_CONFIGS = [arithmetic_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=arithmetic.__doc__,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,  # keep generation order; the batch iterator shuffles
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {
            "train": self._generate_examples(c.num_train, [c.seed, 0], c.mix),
            "validation": self._generate_examples(c.num_validation, [c.seed, 1], c.mix),
        }

    def _generate_examples(self, num: int, seed: list[int], mix: str):
        for i, text in enumerate(arithmetic.documents(num, seed, mix)):
            yield i, {"text": text}


@dataclasses.dataclass
class FactsConfig(tfds.core.BuilderConfig):
    """People, documents and seed of the facts corpus; named by its values like ArithmeticConfig."""

    num_people: int = 1000
    num_train: int = 100_000
    num_validation: int = 1000
    seed: int = 0


@dataclasses.dataclass
class SkillsConfig(tfds.core.BuilderConfig):
    """Skills (and their Zipf exponent), documents and seed of the skills corpus."""

    num_skills: int = 36
    zipf: float = 1.0
    num_train: int = 100_000
    num_validation: int = 1000
    seed: int = 0


@dataclasses.dataclass
class LookupConfig(tfds.core.BuilderConfig):
    """Keys, documents and seed of the lookup-table corpus."""

    num_keys: int = 8000
    num_train: int = 8000
    num_validation: int = 1024
    seed: int = 0


def _check_sizes(corpus_name: str, num_train: int, num_validation: int) -> None:
    if num_train < 1 or num_validation < 1:
        raise ValueError(
            f"{corpus_name}: num_documents={num_train} and num_validation={num_validation} "
            "must be >= 1"
        )


def facts_config(
    num_people: int = 1000, num_train: int = 100_000, num_validation: int = 1000, seed: int = 0
) -> FactsConfig:
    """A facts config named after its values (memoized, as TFDS wants; see arithmetic_config)."""
    _check_sizes(FACTS, num_train, num_validation)
    if num_people < 1:
        raise ValueError(f"{FACTS}: num_people={num_people} must be >= 1")
    name = f"people{num_people}_train{num_train}_validation{num_validation}_seed{seed}"
    config = FactsConfig(
        name, num_people=num_people, num_train=num_train, num_validation=num_validation, seed=seed
    )
    return _CONFIGS.setdefault(name, config)


def skills_config(
    num_skills: int = 36,
    zipf: float = 1.0,
    num_train: int = 100_000,
    num_validation: int = 1000,
    seed: int = 0,
) -> SkillsConfig:
    """A skills config named after its values (memoized)."""
    _check_sizes(SKILLS, num_train, num_validation)
    skills.codes(num_skills, seed), skills.frequencies(num_skills, zipf)  # their range checks
    name = (
        f"skills{num_skills}_zipf{float(zipf)}_train{num_train}_validation{num_validation}"
        f"_seed{seed}"
    )
    config = SkillsConfig(
        name,
        num_skills=num_skills,
        zipf=float(zipf),
        num_train=num_train,
        num_validation=num_validation,
        seed=seed,
    )
    return _CONFIGS.setdefault(name, config)


def lookup_config(
    num_keys: int = 8000, num_train: int = 8000, num_validation: int = 1024, seed: int = 0
) -> LookupConfig:
    """A lookup config named after its values (memoized)."""
    _check_sizes(LOOKUP, num_train, num_validation)
    if not 1 <= num_keys <= lookup.MAX_KEYS:
        raise ValueError(f"{LOOKUP}: num_keys={num_keys} must be in [1, {lookup.MAX_KEYS}]")
    name = f"keys{num_keys}_train{num_train}_validation{num_validation}_seed{seed}"
    config = LookupConfig(
        name, num_keys=num_keys, num_train=num_train, num_validation=num_validation, seed=seed
    )
    return _CONFIGS.setdefault(name, config)


def facts_name(num_people: int, num_train: int, num_validation: int, seed: int) -> str:
    """'moe_rl_facts/<config>': a dataset name that carries the corpus size, so that it can be
    given as config.data.name to any recipe that reads a TFDS name."""
    return f"{FACTS}/{facts_config(num_people, num_train, num_validation, seed).name}"


def skills_name(
    num_skills: int, zipf: float, num_train: int, num_validation: int, seed: int
) -> str:
    """'moe_rl_skills/<config>', like facts_name."""
    return f"{SKILLS}/{skills_config(num_skills, zipf, num_train, num_validation, seed).name}"


def lookup_name(num_keys: int, num_train: int, num_validation: int, seed: int) -> str:
    """'moe_rl_lookup/<config>', like facts_name."""
    return f"{LOOKUP}/{lookup_config(num_keys, num_train, num_validation, seed).name}"


_NAMES = {
    FACTS: (re.compile(r"people(\d+)_train(\d+)_validation(\d+)_seed(\d+)"), facts_config),
    SKILLS: (
        re.compile(r"skills(\d+)_zipf([\d.]+)_train(\d+)_validation(\d+)_seed(\d+)"),
        skills_config,
    ),
    LOOKUP: (re.compile(r"keys(\d+)_train(\d+)_validation(\d+)_seed(\d+)"), lookup_config),
}


def _labelled_config(name: str):
    """The builder config of 'moe_rl_facts[/<config>]' or 'moe_rl_skills[/<config>]'."""
    base, _, rest = name.partition("/")
    pattern, make = _NAMES[base]
    if not rest:
        return make()
    match = pattern.fullmatch(rest)
    if not match:
        raise ValueError(
            f"Unknown {base} config {rest!r}: expected {pattern.pattern!r} "
            f"(see corpus.{base.removeprefix('moe_rl_')}_name)"
        )
    return make(*(float(v) if "." in v else int(v) for v in match.groups()))


class _LabelledBuilder(tfds.core.GeneratorBasedBuilder):
    """Text and its spans (kind, start, end) in bytes (see `labelled`), generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    _module = labelled

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._module.__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "entity": tfds.features.Scalar(np.int32),
                    "spans": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
                }
            ),
            disable_shuffling=True,  # keep generation order; the batch iterator shuffles
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {
            split: self._generate_examples(num, split)
            for split, num in (("train", c.num_train), ("validation", c.num_validation))
        }

    def _generate_examples(self, num: int, split: str):
        for i, doc in enumerate(self._documents(num, split)):
            spans = np.asarray(doc.spans, np.int32).reshape(-1, 3)
            yield i, {"text": doc.text, "entity": doc.entity, "spans": spans}


class MoeRlFacts(_LabelledBuilder):
    """Biographies of generated people (see `facts`); entity: the person's index."""

    BUILDER_CONFIGS = [facts_config()]
    _module = facts

    def _documents(self, num: int, split: str):
        c = self.builder_config
        return facts.documents(num, c.num_people, c.seed, split)


class MoeRlSkills(_LabelledBuilder):
    """Entries of letter codes, many skills with Zipf frequencies (see `skills`)."""

    BUILDER_CONFIGS = [skills_config()]
    _module = skills

    def _documents(self, num: int, split: str):
        c = self.builder_config
        return skills.documents(num, c.num_skills, c.zipf, c.seed, split)


class MoeRlLookup(_LabelledBuilder):
    """A table of random key -> value facts, one a document (see `lookup`)."""

    BUILDER_CONFIGS = [lookup_config()]
    _module = lookup

    def _documents(self, num: int, split: str):
        c = self.builder_config
        return lookup.documents(num, c.num_keys, c.seed, split)


class LabelledSource(Sequence):
    """A split of a labelled corpus as `labelled.Document`s, by index, with the names of its
    token kinds and how many of them (the first) are measured."""

    def __init__(self, source, kinds: tuple[str, ...], measured: int):
        self._source, self.kinds, self.measured = source, kinds, measured

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> labelled.Document:
        n = len(self._source)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} documents")
        return self._document(self._source[index % n])

    def __getitems__(self, indices: Sequence[int]) -> list[labelled.Document]:
        return [self._document(r) for r in self._source.__getitems__(list(indices))]

    @staticmethod
    def _document(record) -> labelled.Document:
        text = record["text"]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        spans = tuple(tuple(int(v) for v in row) for row in np.asarray(record["spans"]))
        return labelled.Document(text, int(record["entity"]), spans)


def is_labelled(name: str) -> bool:
    """Whether `name` is one of the labelled corpora, 'moe_rl_facts', 'moe_rl_skills' or
    'moe_rl_lookup' (with or without a config)."""
    return name.partition("/")[0] in _NAMES


def _labelled_builder(name: str, data_dir: str | None) -> _LabelledBuilder:
    config = _labelled_config(name)
    cls = {FactsConfig: MoeRlFacts, SkillsConfig: MoeRlSkills, LookupConfig: MoeRlLookup}[
        type(config)
    ]
    with _quiet_tfds():
        builder = cls(data_dir=data_dir, config=config, file_format="array_record")
    _prepare_embedded(builder)
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's messages for a corpus we generate ourselves ("Using custom data configuration",
    "Downloading and preparing dataset Unknown size", its progress bars) say nothing true about
    it: they are silenced, and `_prepare_embedded` says instead where the corpus was written."""
    logger = py_logging.getLogger("absl")
    level = logger.level
    logger.setLevel(py_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _prepare_embedded(builder) -> None:
    """Generates an embedded corpus on first use (offline), with one line saying where."""
    with _quiet_tfds():
        if builder.is_prepared():
            return
    start = time.perf_counter()
    with _quiet_tfds():
        tfds.disable_progress_bar()
        try:
            builder.download_and_prepare(
                file_format="array_record", download_config=OFFLINE_DOWNLOAD_CONFIG
            )
        finally:
            tfds.enable_progress_bar()
    splits = ", ".join(f"{n} {s.num_examples:,}" for n, s in builder.info.splits.items())
    print(
        f"Generated the embedded corpus {builder.name}/{builder.builder_config.name} "
        f"({splits} documents) in {time.perf_counter() - start:.0f} s: {builder.data_dir}"
    )


def load_labelled(name: str, split: str, data_dir: str | None = None) -> LabelledSource:
    """A split of a labelled corpus (see facts_name, skills_name, lookup_name) as documents
    with their spans; prepared locally on first use."""
    builder = _labelled_builder(name, data_dir)
    c = builder.builder_config
    if isinstance(c, FactsConfig):
        kinds, measured = facts.KINDS, facts.MEASURED
    elif isinstance(c, LookupConfig):
        kinds, measured = lookup.KINDS, lookup.MEASURED
    else:
        kinds, measured = skills.kinds(c.num_skills), c.num_skills
    return LabelledSource(builder.as_data_source(split), kinds, measured)


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not in data_dir and we may not download it."""


class CorruptDatasetError(RuntimeError):
    """A prepared dataset's files do not read (truncated or damaged): the message names the
    folder and says to delete it."""


class TextSource(Sequence):
    """The `key` text field of a TFDS data source, as str, by index. `folder` is where the
    prepared files live: a file that does not read (truncated, damaged) is an error naming it."""

    def __init__(self, source, key: str, folder: str = "", embedded: bool = False):
        self._source, self.key, self.folder, self.embedded = source, key, folder, embedded

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        n = len(self._source)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} documents")
        return self.__getitems__([index % n])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[str]:
        """Many documents in one read: far faster than one by one from array_record."""
        try:
            records = self._source.__getitems__(list(indices))
        except RuntimeError as e:  # array_record: "Corrupted Riegeli/records file", "at least 64KB"
            raise self._corrupt(str(e).splitlines()[0][:200]) from None
        return [self._text(record) for record in records]

    def _text(self, record) -> str:
        value = record[self.key]
        if value is None:  # what a truncated array_record file yields instead of an error
            raise self._corrupt(f"a record's {self.key!r} reads as None")
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def _corrupt(self, what: str) -> CorruptDatasetError:
        again = (
            "it is generated again on the next run"
            if self.embedded
            else "then prepare it again (tfds build ... --file_format=array_record)"
        )
        return CorruptDatasetError(
            f"the prepared dataset in {self.folder} does not read ({what}): its files are "
            f"truncated or damaged. Delete {self.folder}; {again}."
        )


def _text_key(features, text_key: str | None, name: str) -> str:
    """The requested text field, else 'text', else the only Text feature."""
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    if text_key is None and "text" in features:
        return "text"
    if text_key is None and len(texts) == 1:
        return texts[0]
    if text_key is None or text_key not in features:
        raise ValueError(
            f"{name}: choose text_key among its features {sorted(features)} (text: {texts})"
        )
    return text_key


def _not_prepared_message(name: str, builder) -> str:
    data_dir = builder.data_dir_root
    return (
        f"TFDS dataset {name!r} is not prepared in {data_dir} and is not downloaded here "
        "(download=False). To prepare it offline: on a machine with network run\n"
        f"  tfds build {name} --data_dir=<dir> --file_format=array_record\n"
        f"then copy <dir>/{builder.name} to {data_dir}/ (or point --config.data.data_dir at the "
        "copy). Or, where the network is available, --config.data.download=True."
    )


def load_text_dataset(
    name: str,
    split: str,
    data_dir: str | None = None,
    text_key: str | None = None,
    config: tfds.core.BuilderConfig | str | None = None,
    download: bool = False,
) -> TextSource:
    """The documents of `split` of a TFDS text dataset, as a random-access sequence of str.

    name: 'moe_rl_arithmetic' (embedded: prepared locally on first use, sized by `config`,
      default `arithmetic_config()`), 'moe_rl_facts[/<config>]', 'moe_rl_skills[/<config>]',
      'moe_rl_lookup[/<config>]' (embedded, sized by the name: see facts_name, skills_name,
      lookup_name) or any TFDS name, with
      version or config as TFDS allows ('lm1b', 'wiki40b/en'); those must be prepared in
      array_record format.
    data_dir: where prepared datasets live (TFDS default: ~/tensorflow_datasets).
    text_key: the text feature; default 'text' or the dataset's only Text feature.
    download: let TFDS download and prepare a dataset that is missing (needs network).
    Raises DatasetNotPreparedError (with the offline recipe) when the data is missing.
    """
    if name == ARITHMETIC:
        with _quiet_tfds():
            builder = MoeRlArithmetic(
                data_dir=data_dir, config=config or arithmetic_config(), file_format="array_record"
            )
        _prepare_embedded(builder)
    elif is_labelled(name):
        builder = _labelled_builder(name, data_dir)
    else:
        kwargs = {} if config is None else {"config": config}
        try:
            builder = tfds.builder(name, data_dir=data_dir, **kwargs)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"Unknown dataset {name!r}: neither {ARITHMETIC!r}, {FACTS!r}, {SKILLS!r}, "
                f"{LOOKUP!r} nor a TFDS dataset name."
            ) from None
        if not builder.is_prepared():
            if not download:
                raise DatasetNotPreparedError(_not_prepared_message(name, builder))
            builder.download_and_prepare(file_format="array_record")
        file_format = builder.info.file_format
        if file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise ValueError(
                f"{name} in {builder.data_dir} is stored as {file_format.value}; random access "
                f"needs array_record: rebuild with `tfds build {name} --file_format=array_record`."
            )
    key = _text_key(builder.info.features, text_key, name)
    embedded = name == ARITHMETIC or is_labelled(name)
    source = TextSource(builder.as_data_source(split), key, builder.data_dir, embedded)
    if len(source):  # a damaged file fails here, before anything trains, not at some step
        source.__getitems__(sorted({0, len(source) // 2, len(source) - 1}))
    return source
