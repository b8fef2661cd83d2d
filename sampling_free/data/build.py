"""Datasets and loaders from a config."""
from __future__ import annotations

import contextlib
import logging
import signal
from typing import NamedTuple

import torch

from .catalog import resolve
from .coco import COCODetection, DatasetError, collate
from .samplers import GroupedBatchStream, aspect_groups
from .voc import VOCDetection

logger = logging.getLogger(__name__)


def build_datasets(names, cfg, *, training: bool, with_masks: bool = False, class_names=None,
                   name_source: str = "") -> list[COCODetection | VOCDetection]:
    """The datasets of ``names``. Labels follow ``class_names`` when given (matched by name; ``name_source`` says
    whose names they are, for the error when data does not fit), else ``DATASETS.CLASS_NAMES`` when set, else the
    first dataset's own classes; datasets after the first follow the first's."""
    if class_names is None and cfg.DATASETS.CLASS_NAMES:
        class_names = list(cfg.DATASETS.CLASS_NAMES)
        name_source = "DATASETS.CLASS_NAMES (the classes trained on)"
    datasets = []
    for name in names:
        spec = resolve(name, cfg.DATASETS.ROOT)
        kwargs = dict(training=training, with_masks=with_masks, name=name, class_names=class_names,
                      name_source=name_source or "the given class names")
        if spec.kind == "voc":
            datasets.append(VOCDetection(spec.devkit_root, spec.split, **kwargs))
        else:
            datasets.append(COCODetection(spec.ann_file, spec.image_dir, **kwargs))
        if class_names is None:
            class_names, name_source = datasets[0].class_names, f"the classes of {datasets[0].name}"
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


class LoadFailure(NamedTuple):
    """A ``DatasetError`` raised while loading one item, carried to the main process as data: an exception raised
    in a worker reaches the main process wrapped in a multi-line worker traceback, this keeps its one-line message."""
    message: str


class _ReportingDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except DatasetError as exc:
            return LoadFailure(str(exc))


def _collate_or_fail(batch):
    failures = [item for item in batch if isinstance(item, LoadFailure)]
    return failures[0] if failures else collate(batch)


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers ignore SIGINT/SIGTERM. Ctrl-C and job schedulers signal the whole process group; a worker
    dying of it would make the main process fail before it writes its checkpoint. The workers therefore cannot be
    stopped by SIGTERM, which is what the DataLoader's own clean-up relies on: iterate through ``batches``, which
    stops them itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def batches(loader):
    """Iterate a loader of ours with two guarantees. A ``DatasetError`` raised in a worker is raised again in the
    main process with its own one-line message (file and problem). And when the block ends -- exhausted, by an
    error in the main process or a worker, by a signal -- the worker processes are gone within seconds: asked to
    finish first, killed if they do not. Without this, an error left them to the interpreter's exit, where
    multiprocessing terminates them with SIGTERM, which they ignore, and then waits for them forever."""
    iterator = iter(loader)

    def checked():
        for batch in iterator:
            if isinstance(batch, LoadFailure):
                raise DatasetError(batch.message)
            yield batch

    try:
        yield checked()
    finally:
        stop_workers(iterator)


def stop_workers(iterator, *, timeout: float = 5.0) -> None:
    """End the worker processes of a DataLoader iterator (none for ``num_workers=0``)."""
    workers = list(getattr(iterator, "_workers", ()))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # polite: a stop message per worker, a join; also unregisters them from the SIGCHLD handler
    for worker in workers:
        if worker.is_alive():
            worker.kill()
        worker.join(timeout)


def build_train_loader(cfg, datasets, *, start_iter: int = 0, rank: int = 0, world_size: int = 1):
    view = TrainingView(datasets, cfg.INPUT.MIN_SIZE_TRAIN)
    groups = aspect_groups([view.image_size(i) for i in range(len(view))], cfg.DATALOADER.ASPECT_RATIO_GROUPING)
    sampler = GroupedBatchStream(groups, cfg.SOLVER.IMS_PER_BATCH, seed=cfg.SEED, hflip_prob=cfg.INPUT.HFLIP_PROB,
                                 num_sizes=len(cfg.INPUT.MIN_SIZE_TRAIN), start_iter=start_iter, rank=rank,
                                 world_size=world_size)
    return torch.utils.data.DataLoader(_ReportingDataset(view), batch_sampler=sampler,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_collate_or_fail, persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
                                       worker_init_fn=ignore_stop_signals)


def build_test_loader(cfg, dataset, *, rank: int = 0, world_size: int = 1):
    indices = list(range(rank, len(dataset), world_size))
    subset = _ReportingDataset(torch.utils.data.Subset(dataset, indices))
    return torch.utils.data.DataLoader(subset, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=_collate_or_fail,
                                       worker_init_fn=ignore_stop_signals)
