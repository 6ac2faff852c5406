"""CLIP model, trainer (CPU, one GPU, torchrun/DDP) and zero-shot evaluation; the objective is
contrastive (CLIP), bag-of-words prediction or a captioning language model (the paper's Fig. 2).

model.py       CLIP (ViT and modified-ResNet image towers, text Transformer), OpenAI's layout;
               BagOfWords and Captioner, the predictive objectives' models on the same towers
tokenizer.py   CLIP's byte-level BPE; vocabularies learned with `tokenizers` or CLIP's file
data.py        shards -> reproducible, resumable batches (webdataset, worker processes)
loss.py        symmetric InfoNCE with features gathered across ranks; bag-of-words and next-token losses
train.py       the training loop (`clipforge train`)
checkpoint.py  atomic checkpoints, OpenAI-format weights
evalsets.py    ImageFolder trees, labelled shards, parquet pairs for evaluation
zeroshot.py    zero-shot classification (bow and caption: by log p(prompt | image)), retrieval, CLIP score
evaluate.py    `clipforge eval`: a checkpoint on its evaluation sets, results written out
score.py       `clipforge score`: CLIP score of pairs, a parquet and its quantiles
overlap.py     `clipforge overlap`: evaluation images the shards also hold, exclude list, picture
"""
