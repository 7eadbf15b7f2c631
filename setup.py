"""toxjax: toxicity-conditioned LM pretraining in JAX (Prabhumoye et al., EACL 2023)."""

import setuptools

# Ranges below are the ones installed and tested together on Python 3.11 (see README).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    "tensorflow-text>=2.21,<2.22",
    "seqio==0.0.20",
    # The streaming training input (random-access shuffle, first-fit packing, iterator state).
    "grain>=0.2.18,<0.3",
    # 0.2.2+ ships protobuf-7 generated code; Beam needs protobuf<7.
    "sentencepiece>=0.2.0,<0.2.2",
    "detoxify>=0.5.4,<0.6",
    # The JAX Detoxify scorer caches converted weights as safetensors.
    "safetensors>=0.4.3",
    # Sentence segments for per-segment scores (the SEGMENT strategy).
    "sentencex>=1.0.32,<2",
    # Parquet inputs of the scoring job (FineWeb, Dolma, RedPajama); Beam's range, 25 tested.
    "pyarrow>=14.0.1,<26",
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "alt-profanity-check>=1.9.1,<2",
    "scikit-learn>=1.5",
    "clu>=0.0.12",
    "tensorboard>=2.21,<2.22",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "numpy>=1.26",
    # 0.7.0 registers its numpy ufunc loops one by one at import: 0.8-1.3 s in every process
    # (0.6.0: 0.01 s), measured with numpy 2.4; jax and TensorFlow need only >=0.5.1.
    "ml-dtypes>=0.5.1,<0.7",
]

GCS = "google-cloud-storage>=2.10,<4"

EXTRAS_REQUIRE = {
    "beam": ["apache-beam>=2.70,<3"],
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "ruff>=0.6",
        "apache-beam>=2.70,<3",
        "transformers>=4.40",
        # toxjax.compile's tests compile for TPU slices on CPU (~137 MB wheel).
        "libtpu==0.0.42.*",
        # The lm-evaluation-harness cross-check of toxjax.interop runs in CI too.
        "lm-eval>=0.4.13,<0.5",
        "accelerate>=0.26",
    ],
    # A gs:// workdir's lock (toxjax.workdir_lock) uses Cloud Storage generation preconditions.
    "gcs": [GCS],
    # TPU launches write to gs:// workdirs, so they install the lock's client too.
    "tpu": ["jax[tpu]>=0.10.2,<0.11", GCS],
    # Compiling for TPU slices on a host without one (toxjax.compile, the launcher's fit
    # check): the libtpu jax[tpu] 0.10.2 pins, without the TPU runtime's other needs.
    "tpu-aot": ["libtpu==0.0.42.*"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
    # transformers export/import (toxjax.interop); loading the export needs transformers+torch.
    "interop": ["safetensors>=0.4.3", "tokenizers>=0.19", "transformers>=4.40"],
    # The lm-evaluation-harness adapter; accelerate only for lm_eval's own "hf" model.
    "lm-eval": ["lm-eval>=0.4.13,<0.5", "safetensors>=0.4.3", "accelerate>=0.26"],
}

# Every command, also runnable as `python -m <module>` (the README shows both forms).
CONSOLE_SCRIPTS = [
    "toxjax-study = toxjax.study.study_main:run",
    "toxjax-score = toxjax.scoring.score_main:run",
    "toxjax-vocab = toxjax.data.vocab_main:run",
    "toxjax-train = toxjax.main:run",
    "toxjax-memory = toxjax.model.memory_main:run",
    "toxjax-compile = toxjax.compile.compile_main:run",
    "toxjax-launch = toxjax.launch.launcher:run",
    "toxjax-demo-prompts = toxjax.scoring.prompt_file_main:run",
    "toxjax-real-corpus = toxjax.datasets.real_corpus_main:run",
    "toxjax-export = toxjax.interop.export_main:run",
]

setuptools.setup(
    name="toxjax",
    version="0.1.0",
    description="Toxicity-conditioned language-model pretraining in JAX/Flax (MEDA, INST, FILTER).",
    packages=setuptools.find_packages(include=["toxjax", "toxjax.*"]),
    package_data={
        "toxjax": ["assets/*", "assets/real/*", "assets/real/licenses/*"],
        # Put on the PYTHONPATH of the test processes, not imported: no package of its own.
        "toxjax.testing": ["shared_compile_cache/sitecustomize.py"],
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
