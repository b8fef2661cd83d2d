"""Datasets and loaders from a config."""
from __future__ import annotations

import logging
import signal

import torch

from .catalog import resolve
from .coco import COCODetection, DatasetError, collate
from .samplers import GroupedBatchStream, aspect_groups
from .voc import VOCDetection

logger = logging.getLogger(__name__)


def build_datasets(names, cfg, *, training: bool, with_masks: bool = False) -> list[COCODetection | VOCDetection]:
    datasets = []
    for name in names:
        spec = resolve(name, cfg.DATASETS.ROOT)
        if spec.kind == "voc":
            datasets.append(VOCDetection(spec.devkit_root, spec.split, training=training, with_masks=with_masks,
                                         name=name))
        else:
            datasets.append(COCODetection(spec.ann_file, spec.image_dir, training=training, with_masks=with_masks,
                                          name=name))
    first = datasets[0]
    for d in datasets[1:]:
        if d.class_names != first.class_names:
            raise DatasetError(f"{d.name}: its classes {d.class_names} differ from {first.name}'s "
                               f"{first.class_names}; datasets trained together must share categories")
    if training:
        _warn_unseen_classes(datasets)
    return datasets


def _warn_unseen_classes(datasets) -> None:
    """A class without a single training box trains as pure background; worth a warning, not a stop (a subset of a
    dataset can legitimately miss rare classes)."""
    seen = set()
    for d in datasets:
        for index in range(len(d)):
            seen.update(d.annotations(index)[1].tolist())
    unseen = [name for k, name in enumerate(datasets[0].class_names, start=1) if k not in seen]
    if unseen:
        logger.warning("%s: no training box of class%s %s; %s will only ever be background",
                       "+".join(d.name for d in datasets), "es" if len(unseen) > 1 else "", ", ".join(unseen),
                       "they" if len(unseen) > 1 else "it")


class TrainingView(torch.utils.data.Dataset):
    """Several datasets as one, indexed by the sampler's ``(index, hflip, size index)`` triples."""

    def __init__(self, datasets, min_sizes):
        self.datasets, self.min_sizes = datasets, list(min_sizes)
        self.offsets = []
        total = 0
        for d in datasets:
            self.offsets.append(total)
            total += len(d)
        self.total = total

    def __len__(self):
        return self.total

    def locate(self, index: int):
        for d, off in zip(reversed(self.datasets), reversed(self.offsets)):
            if index >= off:
                return d, index - off
        raise IndexError(index)

    def image_size(self, index: int):
        d, i = self.locate(index)
        return d.image_size(i)

    def __getitem__(self, item):
        index, hflip, size_index = item
        d, i = self.locate(index)
        image, target = d[(i, hflip)]
        target["min_size"] = self.min_sizes[size_index]
        return image, target


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers ignore SIGINT/SIGTERM. Ctrl-C and job schedulers signal the whole process group; a worker
    dying of it would make the main process fail before it writes its checkpoint. The main process stops the workers
    itself once it has."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_train_loader(cfg, datasets, *, start_iter: int = 0, rank: int = 0, world_size: int = 1):
    view = TrainingView(datasets, cfg.INPUT.MIN_SIZE_TRAIN)
    groups = aspect_groups([view.image_size(i) for i in range(len(view))], cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    sampler = GroupedBatchStream(groups, cfg.SOLVER.IMS_PER_BATCH, seed=cfg.SEED, hflip_prob=cfg.INPUT.HFLIP_PROB,
                                 num_sizes=len(cfg.INPUT.MIN_SIZE_TRAIN), start_iter=start_iter, rank=rank,
                                 world_size=world_size)
    return torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                       collate_fn=collate, persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
                                       worker_init_fn=ignore_stop_signals)


def build_test_loader(cfg, dataset, *, rank: int = 0, world_size: int = 1):
    indices = list(range(rank, len(dataset), world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(subset, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=collate,
                                       worker_init_fn=ignore_stop_signals)
