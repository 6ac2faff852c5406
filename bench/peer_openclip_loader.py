"""The peer of the loader benchmark: open_clip's WebDataset training pipeline, stage for stage.

open_clip (open_clip_train/data.py, get_wds_dataset) builds, for a non-resampled epoch:
  SimpleShardList -> detshuffle -> split_by_node -> split_by_worker -> tarfile_to_samples
  -> shuffle(1000) -> select(has caption and image) -> decode("pilrgb") -> rename(image, text)
  -> map_dict(image=preprocess, text=tokenizer) -> to_tuple -> batched(batch, partial=False)
and a WebLoader with `num_workers` processes. open_clip needs torchvision, which does not load
beside the CPU torch wheel here, so its train transform (RandomResizedCrop(scale=(0.9, 1)),
bicubic, ToTensor, Normalize) is written out below with the same PIL calls torchvision makes on
PIL images; the text side uses clipforge's tokenizer (open_clip's is the same BPE algorithm).
"""

import math
import random

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from clipforge.trainer.model import CLIP_MEAN, CLIP_STD

MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


def random_resized_crop(img, size, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop on a PIL image: crop, then resize (bicubic) with PIL."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = random.randint(0, w - cw), random.randint(0, h - ch)
            return img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.Resampling.BICUBIC)
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size),
                                                                                         Image.Resampling.BICUBIC)


def make_preprocess(size):
    def preprocess(img):
        img = random_resized_crop(img.convert("RGB"), size)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0     # ToTensor
        return torch.from_numpy((x - MEAN) / STD)                               # Normalize

    return preprocess


def filter_no_caption_or_no_image(sample):
    has_caption = "txt" in sample
    has_image = "png" in sample or "jpg" in sample or "jpeg" in sample or "webp" in sample
    return has_caption and has_image


def openclip_loader(urls, tokenizer, batch_size, workers, size=224, seed=0, epoch=0):
    preprocess = make_preprocess(size)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.detshuffle(bufsize=2000, initial=500, seed=seed, epoch=epoch),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=1000, initial=500),
        wds.select(filter_no_caption_or_no_image),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda t: tokenizer(t)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(batch_size, partial=False),
    )
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers, persistent_workers=False)
