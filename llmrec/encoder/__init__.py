"""The BERT-style path: a LoRA-tuned two-tower text recommender on a sentence encoder.

``two_tower`` holds the model and its loss; ``recommender`` the item-embedding cache and the
``CatalogScorer`` (:class:`TwoTowerRecommender`); ``train`` the contrastive Accelerate loop and
the run directory.
"""

from llmrec.encoder.recommender import ItemEmbeddingCache, TwoTowerRecommender
from llmrec.encoder.two_tower import EncoderConfig, TextSpec, TwoTowerModel

__all__ = ["EncoderConfig", "ItemEmbeddingCache", "TextSpec", "TwoTowerModel", "TwoTowerRecommender"]
