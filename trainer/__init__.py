"""CLIP model, contrastive trainer (CPU, one GPU, torchrun/DDP) and zero-shot evaluation.

model.py       CLIP (ViT and modified-ResNet image towers, text Transformer), OpenAI's layout
tokenizer.py   CLIP's byte-level BPE; vocabularies learned with `tokenizers` or CLIP's file
data.py        shards -> reproducible, resumable batches (webdataset, worker processes)
loss.py        symmetric InfoNCE with features gathered across ranks
train.py       the training loop (`clipforge train`)
checkpoint.py  atomic checkpoints, OpenAI-format weights
evalsets.py    ImageFolder trees, labelled shards, parquet pairs for evaluation
zeroshot.py    zero-shot classification, retrieval and CLIP score
evaluate.py    `clipforge eval`: a checkpoint on its evaluation sets, results written out
score.py       `clipforge score`: CLIP score of pairs, a parquet and its quantiles
overlap.py     `clipforge overlap`: evaluation images the shards also hold, exclude list, picture
"""
