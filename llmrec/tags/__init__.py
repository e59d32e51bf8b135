"""Interest-tag prediction: rank the tag vocabulary (catalog categories) for a user's next item.

``baselines`` (most-frequent, co-occurrence, evaluation), ``classifier`` (encoder + multi-label
head), ``generate`` (decoder likelihoods / trie-constrained generation over the vocabulary).
"""

from llmrec.tags.baselines import CooccurrenceTags, MostFrequentTags, TagScorer, evaluate_tags

__all__ = ["CooccurrenceTags", "MostFrequentTags", "TagScorer", "evaluate_tags"]
