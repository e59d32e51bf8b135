"""Interest tags from a decoder LM, constrained to the tag vocabulary.

The prompt is the ``interest_tags`` template (history lines, the vocabulary, "Genres:"); each tag
is written as ``" " + tag + ","`` after it (the answer is a comma-separated list, and the comma
ends a tag, so no tag is a token-prefix of a longer one).

Two ways to read tags out of the model, both unable to emit anything outside the vocabulary:

* :func:`score_tags` (exact, used for ranking and AUC): the log-likelihood of every tag as the
  first answer. The prompt runs once; its KV cache is repeated over the tags, so the cost is
  one prompt plus ``T`` short continuations.
* :func:`generate_tags` (the generation path): greedy decoding where each step may only choose
  tokens that continue some not-yet-emitted tag (a token trie over the tag texts), for ``k`` tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmrec.config import PromptConfig
from llmrec.data.schema import Catalog, UserSequence
from llmrec.prompts import PromptTemplate
from llmrec.serialize import chat_frame, history_item, prompt_adds_special_tokens, uses_chat
from llmrec.tags.baselines import FloatArray

TAG_END = ","  # written after every tag in an answer
TAG_PROMPT_NUM_TAGS = 3  # the number of tags the prompt asks for (tag fine-tuning renders the same prompt)


def tag_prompt(
    sequence: UserSequence,
    catalog: Catalog,
    template: PromptTemplate,
    tokenizer: Any,
    cfg: PromptConfig,
    tags: Sequence[str],
    num_tags: int,
    max_items: int,
) -> str:
    """The ``interest_tags`` prompt for the most recent ``max_items`` items of ``sequence``."""
    start = max(0, len(sequence) - max_items)
    history = [history_item(sequence, i, catalog, cfg, position=i - start + 1) for i in range(start, len(sequence))]
    text = template.render(history=history, num_items=len(history), tags=list(tags), num_tags=num_tags)
    if uses_chat(tokenizer, cfg):
        before, after = chat_frame(tokenizer)
        return before + text + after
    return text


def tag_token_ids(tokenizer: Any, tags: Sequence[str], prompt_ends_with_space: bool = False) -> list[list[int]]:
    """Token ids of each tag as it follows the prompt: ``" Drama,"`` (no special tokens)."""
    lead = "" if prompt_ends_with_space else " "
    sequences = [list(tokenizer(lead + tag + TAG_END, add_special_tokens=False)["input_ids"]) for tag in tags]
    if len({tuple(s) for s in sequences}) != len(sequences):
        raise ValueError("two tags tokenize to the same ids; the vocabulary must be distinct")
    return sequences


def _prompt_ids(tokenizer: Any, prompt: str, cfg: PromptConfig) -> torch.Tensor:
    ids = tokenizer(prompt, add_special_tokens=prompt_adds_special_tokens(tokenizer, cfg), return_tensors="pt")["input_ids"]
    return ids  # type: ignore[no-any-return]


@torch.no_grad()
def score_tags(model: Any, tokenizer: Any, prompt: str, tags: Sequence[str], cfg: PromptConfig, length_normalize: bool = False) -> FloatArray:
    """``(T,)`` log-likelihood of each tag (``" tag,"``) as the answer's first tag.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompt: the rendered prompt text.
        tags: the vocabulary.
        cfg: prompt settings (decides whether the prompt gets the tokenizer's BOS).
        length_normalize: divide each tag's log-likelihood by its token count.
    """
    device = next(model.parameters()).device
    prompt_ids = _prompt_ids(tokenizer, prompt, cfg).to(device)  # (1, P)
    tag_ids = tag_token_ids(tokenizer, tags, prompt.endswith((" ", "\n")))
    out = model(input_ids=prompt_ids, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,)
    longest = max(len(t) for t in tag_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(tags), longest), pad, dtype=torch.long, device=device)  # (T, L)
    mask = torch.zeros((len(tags), longest), dtype=torch.long, device=device)
    for j, ids in enumerate(tag_ids):
        batch[j, : len(ids)] = torch.tensor(ids)
        mask[j, : len(ids)] = 1
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(tags))
    attention = torch.cat([torch.ones(len(tags), prompt_ids.shape[1], dtype=torch.long, device=device), mask], dim=1)
    follow = model(input_ids=batch, attention_mask=attention, past_key_values=cache, use_cache=False)
    logprobs = torch.log_softmax(follow.logits.float(), dim=-1)  # (T, L, V)
    scores = np.zeros(len(tags))
    for j, ids in enumerate(tag_ids):
        total = float(first[ids[0]])
        for position in range(1, len(ids)):
            total += float(logprobs[j, position - 1, ids[position]])
        scores[j] = total / len(ids) if length_normalize else total
    return scores


@dataclass
class _TrieNode:
    children: dict[int, _TrieNode]
    tag: int = -1  # vocabulary index of the tag that ends here


def _build_trie(tag_ids: Sequence[Sequence[int]], allowed: set[int]) -> _TrieNode:
    root = _TrieNode({})
    for j in sorted(allowed):
        node = root
        for token in tag_ids[j]:
            node = node.children.setdefault(token, _TrieNode({}))
        node.tag = j
    return root


@torch.no_grad()
def generate_tags(
    model: Any, tokenizer: Any, prompt: str, tags: Sequence[str], cfg: PromptConfig, k: int = 3
) -> list[tuple[str, float]]:
    """Greedy decoding of ``k`` distinct vocabulary tags, each step restricted by a token trie.

    Returns:
        ``[(tag, log-likelihood of its tokens), ...]`` in generation order.
    """
    if not 1 <= k <= len(tags):
        raise ValueError(f"k must be between 1 and {len(tags)} (the vocabulary size), got {k}")
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, prompt, cfg).to(device)  # (1, P)
    tag_ids = tag_token_ids(tokenizer, tags, prompt.endswith((" ", "\n")))
    remaining = set(range(len(tags)))
    out = model(input_ids=ids, use_cache=True)
    cache, logits = out.past_key_values, out.logits[0, -1]
    emitted: list[tuple[str, float]] = []
    while len(emitted) < k:
        node, total = _build_trie(tag_ids, remaining), 0.0
        while node.tag < 0:
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (V,)
            allowed = torch.tensor(sorted(node.children), device=device)
            token = int(allowed[int(torch.argmax(logprobs[allowed]))])
            total += float(logprobs[token])
            node = node.children[token]
            out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
        emitted.append((tags[node.tag], total))
        remaining.discard(node.tag)
    return emitted


class DecoderTagScorer:
    """A causal LM as a :class:`~llmrec.tags.baselines.TagScorer` (exact per-tag likelihoods).

    Args:
        model: the causal LM (base or PEFT-wrapped).
        tokenizer: its tokenizer.
        catalog: item table.
        template: the ``interest_tags`` template.
        cfg: prompt settings.
        tags: vocabulary (default: the catalog's categories).
        num_tags: the number the prompt asks for.
        max_items: most recent history items in the prompt.
        length_normalize: rank by mean instead of summed token log-probability.
    """

    def __init__(
        self, model: Any, tokenizer: Any, catalog: Catalog, template: PromptTemplate, cfg: PromptConfig,
        tags: Sequence[str] | None = None, num_tags: int = TAG_PROMPT_NUM_TAGS, max_items: int = 10, length_normalize: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.template = template
        self.cfg = cfg
        self.tags = list(tags) if tags is not None else catalog.categories()
        self.num_tags = num_tags
        self.max_items = max_items
        self.length_normalize = length_normalize

    def prompt(self, history: UserSequence) -> str:
        return tag_prompt(history, self.catalog, self.template, self.tokenizer, self.cfg, self.tags, self.num_tags, self.max_items)

    def score_tags(self, histories: Sequence[UserSequence]) -> FloatArray:
        self.model.eval()
        rows = [score_tags(self.model, self.tokenizer, self.prompt(h), self.tags, self.cfg, self.length_normalize) for h in histories]
        return np.stack(rows) if rows else np.zeros((0, len(self.tags)))

    def generate(self, history: UserSequence, k: int | None = None) -> list[tuple[str, float]]:
        """``k`` (default ``num_tags``) tags by trie-constrained greedy decoding."""
        self.model.eval()
        return generate_tags(self.model, self.tokenizer, self.prompt(history), self.tags, self.cfg, k or self.num_tags)


def load_decoder_tag_scorer(
    name: str, catalog: Catalog, prompt: PromptConfig, template: str = "interest_tags", num_tags: int = TAG_PROMPT_NUM_TAGS,
    max_items: int = 10, length_normalize: bool = False, device: str = "cpu",
) -> DecoderTagScorer:
    """A base decoder (no adapter, fp32) scoring tags through the ``template`` prompt.

    Args:
        name: the decoder (asset name, local directory or hub id).
        catalog: item table.
        prompt: prompt settings (history rendering, chat format).
        template: template name in ``prompts/`` (read from ``prompt.prompts_dir`` when set).
        num_tags: the number the prompt asks for.
        max_items: most recent history items in the prompt.
        length_normalize: rank by mean instead of summed token log-probability.
        device: torch device of the model.
    """
    from llmrec.config import LoraConfig, ModelConfig
    from llmrec.modeling.build import build_model
    from llmrec.prompts import load_template

    model, tokenizer = build_model(ModelConfig(name_or_path=name, dtype="fp32"), LoraConfig(enabled=False),
                                   task="causal_lm", device=device)
    return DecoderTagScorer(model, tokenizer, catalog, load_template(template, prompt.prompts_dir), prompt,
                            num_tags=num_tags, max_items=max_items, length_normalize=length_normalize)


def load_run_tag_scorer(run_dir: str | Path, device: str = "cpu", length_normalize: bool = False) -> tuple[DecoderTagScorer, Any]:
    """``(scorer, dataset)`` of a decoder run: its merged weights, saved ``interest_tags`` template and prompt.

    A run fine-tuned with ``train.format: interest_tags`` renders exactly the prompts it was trained
    on (``prompt.max_history_items`` history items); any other decoder run is read zero-shot.
    """
    from llmrec.prompts import load_template, load_template_file
    from llmrec.run_loading import load_decoder_model, open_dataset, read_run_config, read_run_info

    run = Path(run_dir)
    info = read_run_info(run)
    if info.kind != "decoder":
        raise ValueError(f"{run / 'run.json'}: a {info.kind} run, not a decoder run")
    config = read_run_config(run)
    dataset = open_dataset(info)
    model, tokenizer = load_decoder_model(info, config, torch.device(device))
    saved = run / "prompts" / "interest_tags.jinja"
    template = load_template_file(saved) if saved.is_file() else load_template("interest_tags", config.prompt.prompts_dir)
    scorer = DecoderTagScorer(model, tokenizer, dataset.catalog, template, config.prompt, length_normalize=length_normalize)
    if config.train.format == "interest_tags":  # fine-tuned on this many history items
        scorer.max_items = config.prompt.max_history_items
    return scorer, dataset
