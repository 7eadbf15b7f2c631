"""Random-weight Detoxify checkpoints that load offline through the real `Detoxify` class.

Detoxify's released weights live on GitHub and cannot be fetched here. A checkpoint whose
`config.arch.args.model_type` names a *local folder* (config.json plus tokenizer files) loads
with no network, so tests and benchmarks exercise the real loading and prediction code.
"""

from __future__ import annotations

import os
import string

import torch
import transformers

# Jigsaw "original" label names as stored in the released checkpoint; Detoxify renames
# toxic/severe_toxic/identity_hate on load, which the tiny checkpoint exercises too.
ORIGINAL_CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Whole-word entries: one token each, so tests can build documents of an exact token count.
_WORD_TEXT = (
    "the a an and or but if then so of to in on at by for with from about as is are was were "
    "be been have has had do does did not no yes this that these those it its he she they we "
    "you i me my your our their them his her what which who when where why how all some any "
    "many much more most other such only own same than too very can will just should now "
    "day night time year people world life hand part place case week company system program "
    "question work government number point home water room mother area money story fact month "
    "lot right study book eye job word business issue side kind head house service friend "
    "father power hour game line end member law car city community name president team minute "
    "idea kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education good new first last long great little old big high different small large next "
    "early young important few public bad able idiot stupid hate kill ugly dumb loser awful "
    "nice kind lovely happy calm quiet garden river music weather coffee bread walk read write "
    "say get make go know take see come think look want give use find tell ask seem feel try "
    "leave call keep let begin help talk turn start show hear play run move like live believe"
)
WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))


def build_vocab() -> list[str]:
    """Special tokens, whole words, then characters and ##-suffix characters.

    Single characters (and their ## continuations) make every lowercase ASCII string
    tokenizable without [UNK], however rare the word.
    """
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = list(SPECIAL_TOKENS)
    for token in [*WORDS, *characters, *(f"##{c}" for c in characters)]:
        if token not in vocab:
            vocab.append(token)
    return vocab


def _family_settings(architecture: str, pad_id: int, max_positions: int) -> dict:
    """Config fields in which Detoxify's model families differ from BERT."""
    if architecture in ("roberta", "xlm-roberta"):
        # RoBERTa numbers positions from pad + 1: more rows hold a full 512-token window.
        return {
            "pad_token_id": pad_id,
            "type_vocab_size": 1,
            "max_position_embeddings": max_positions + pad_id + 1,
        }
    if architecture == "albert":
        return {"hidden_act": "gelu_new"}
    return {}


# architecture -> (transformers model class, its config class), as Detoxify's models use them.
ARCHITECTURES = {
    "bert": ("BertForSequenceClassification", "BertConfig"),
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig"),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig"),
    "albert": ("AlbertForSequenceClassification", "AlbertConfig"),
}


def build_tiny_detoxify_checkpoint(
    out_dir: str,
    *,
    hidden: int = 16,
    layers: int = 1,
    heads: int = 2,
    intermediate: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    classes: tuple[str, ...] = ORIGINAL_CLASSES,
    model_type_name: str = "tiny-bert",
    architecture: str = "bert",
) -> str:
    """Writes a random classifier in Detoxify's checkpoint format; returns the .ckpt path.

    `out_dir/<model_type_name>/` holds config.json and the tokenizer files; the checkpoint
    (`out_dir/<model_type_name>.ckpt`) names that folder as its `model_type`, which is what
    lets `Detoxify(checkpoint=path)` load with HF_HUB_OFFLINE=1. hidden=768, layers=12,
    heads=12 gives a BERT-base-sized network (with a small vocabulary) for benchmarks.
    `architecture` picks the transformers class of Detoxify's model families (bert: original,
    roberta: unbiased, xlm-roberta: multilingual, albert: the -small ones); every one uses the
    WordPiece tokenizer above, since the encoders are what differ.
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    model_name, config_name = ARCHITECTURES[architecture]
    model_dir = os.path.abspath(os.path.join(out_dir, model_type_name))
    os.makedirs(model_dir, exist_ok=True)

    vocab = build_vocab()
    vocab_path = os.path.join(model_dir, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(
        vocab=vocab_path, do_lower_case=True, model_max_length=max_position_embeddings
    )
    tokenizer.save_pretrained(model_dir)

    extra = _family_settings(architecture, tokenizer.pad_token_id, max_position_embeddings)
    extra["embedding_size"] = max(heads, hidden // 2) if architecture == "albert" else None
    extra = {k: v for k, v in extra.items() if v is not None}
    config = getattr(transformers, config_name)(
        **{
            "vocab_size": len(vocab),
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": intermediate or 4 * hidden,
            "max_position_embeddings": max_position_embeddings,
            "num_labels": len(classes),
            # BERT's default std of 0.02 is tuned for hidden=768; at tiny widths it leaves the
            # [CLS] state nearly independent of the text, so every text would score the same.
            "initializer_range": hidden**-0.5,
            **extra,
        }
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    # A wider head spreads scores over (0, 1), so ordering and aggregation bugs show up.
    head = model.classifier.out_proj if architecture.endswith("roberta") else model.classifier
    with torch.no_grad():
        head.weight.normal_(0.0, 2.0 * hidden**-0.5)
    config.save_pretrained(model_dir)
    checkpoint_path = os.path.join(os.path.abspath(out_dir), f"{model_type_name}.ckpt")
    torch.save(_checkpoint_dict(model, model_dir, model_type_name, classes), checkpoint_path)
    return checkpoint_path


def _checkpoint_dict(model, model_dir: str, name: str, classes: tuple[str, ...]) -> dict:
    """Detoxify's checkpoint layout: the training config and the transformers state dict."""
    return {
        "config": {
            "name": f"random-{name}",
            "arch": {
                "type": "detoxify",
                "args": {
                    "model_type": model_dir,
                    "model_name": type(model).__name__,
                    "tokenizer_name": "BertTokenizer",
                    "num_classes": len(classes),
                },
            },
            "dataset": {"type": "JigsawDataOriginal", "args": {"classes": list(classes)}},
        },
        "state_dict": {key: tensor.clone() for key, tensor in model.state_dict().items()},
    }
