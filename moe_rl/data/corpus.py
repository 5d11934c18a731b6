"""Pretraining corpora as random-access sequences of strings, read from TFDS array_record files.

`load_text_dataset(name, split, data_dir)` serves both the embedded corpus `moe_rl_arithmetic`
(generated locally on first use, no download) and any TFDS text dataset already prepared in
`array_record` format (e.g. `tiny_shakespeare`, `lm1b`). Reading goes through
`builder.as_data_source`, which needs neither TensorFlow nor network. Nothing here downloads
unless asked to with download=True.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow_datasets as tfds

from moe_rl.data import arithmetic

ARITHMETIC = "moe_rl_arithmetic"
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Mix 'r1': additions, fact drills, short and worked thinks, restated operands.",
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


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not in data_dir and we may not download it."""


class TextSource(Sequence):
    """The `key` text field of a TFDS data source, as str, by index."""

    def __init__(self, source, key: str):
        self._source, self.key = source, key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        n = len(self._source)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} documents")
        return self._text(self._source[index % n])

    def __getitems__(self, indices: Sequence[int]) -> list[str]:
        """Many documents in one read: far faster than one by one from array_record."""
        return [self._text(record) for record in self._source.__getitems__(list(indices))]

    def _text(self, record) -> str:
        value = record[self.key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
        f"then copy <dir>/{builder.name} to {data_dir}/ (or point data_dir at the copy). "
        "Or pass download=True where the network is available."
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
      default `arithmetic_config()`) or any TFDS name, with version or config as TFDS allows
      ('lm1b', 'wiki40b/en'); those must be prepared in array_record format.
    data_dir: where prepared datasets live (TFDS default: ~/tensorflow_datasets).
    text_key: the text feature; default 'text' or the dataset's only Text feature.
    download: let TFDS download and prepare a dataset that is missing (needs network).
    Raises DatasetNotPreparedError (with the offline recipe) when the data is missing.
    """
    if name == ARITHMETIC:
        builder = MoeRlArithmetic(
            data_dir=data_dir, config=config or arithmetic_config(), file_format="array_record"
        )
        if not builder.is_prepared():
            builder.download_and_prepare(
                file_format="array_record", download_config=OFFLINE_DOWNLOAD_CONFIG
            )
    else:
        kwargs = {} if config is None else {"config": config}
        try:
            builder = tfds.builder(name, data_dir=data_dir, **kwargs)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"Unknown dataset {name!r}: neither {ARITHMETIC!r} nor a TFDS dataset name."
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
    return TextSource(builder.as_data_source(split), key)
