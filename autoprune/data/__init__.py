"""The data wing: data sets held in memory or streamed, the seeded train / validation / test splits, batching
(augmentation, normalisation, device layout) and your own data sets. Depends on the ground floor only.
"""
