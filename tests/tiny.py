"""Tiny models and tokenizers built from configs, offline, in seconds (shared by the tests)."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Titles with shared prefixes, a duplicate title (two years), and non-ASCII text.
FIXTURE_TITLES = [
    "Star Wars (1977)", "Star Trek: Generations (1994)", "Star Trek: First Contact (1996)",
    "Star Kid (1997)", "Stargate (1994)", "Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)",
    "Heavy Metal (1981)", "Heavenly Creatures (1994)", "Hamlet (1996)", "Hamlet (1948)",
    "The Godfather (1972)", "The Godfather: Part II (1974)", "The Game (1997)", "The Graduate (1967)",
    "Alien (1979)", "Aliens (1986)", "Alien 3 (1992)", "Amélie (2001)", "Fargo (1996)",
    "Forrest Gump (1994)", "Four Rooms (1995)", "Get Shorty (1995)", "GoldenEye (1995)",
    "Copycat (1995)", "Casablanca (1942)", "Contact (1997)", "Braveheart (1995)", "Batman (1989)",
    "Batman Returns (1992)", "Batman Forever (1995)", "Pulp Fiction (1994)", "Psycho (1960)",
    "Scream (1996)", "Scream 2 (1997)", "Titanic (1997)", "Twister (1996)", "Twelve Monkeys (1995)",
    "Jaws (1975)", "Jaws 2 (1978)", "Rocky (1976)", "Rocky II (1979)", "Vertigo (1958)",
    "Die Hard (1988)", "Die Hard 2 (1990)", "Seven (1995)", "Sabrina (1995)", "Sabrina (1954)",
    "Babe (1995)",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


def make_tokenizer(texts: Sequence[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` plus some prompt words."""
    corpus = list(texts) + [
        "The user watched these movies in order. Recommend the next movie. rated 4/5 viewed bought",
        "Next movie: Genres: Comedy, Drama, Action, Thriller, Romance, Sci-Fi, Children's days later",
    ]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token="[UNK]",
    )
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """A 2-layer Llama (the SmolLM2 architecture) with random weights."""
    import torch

    torch.manual_seed(seed)
    shape: dict[str, object] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}
    config = LlamaConfig(vocab_size=vocab_size, **{**shape, **overrides})  # type: ignore[arg-type]
    return LlamaForCausalLM(config)


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 with random weights."""
    import torch

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=512))


def tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    """A 2-layer BERT encoder with random weights."""
    import torch

    torch.manual_seed(seed)
    return BertModel(
        BertConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=512)
    )
