"""The tiny retriever's image tower's stand-in for SigLIP, whose image tower already matches two pictures of one
thing: instance discrimination on the task's own pictures, without labels (SimCLR's loss, as Contriever pretrains a
text retriever on its corpus), under the kind of views that validation prefers. SigLIP matches a repainted copy and
another view of a thing alike, and still tells colours apart; a tower this small learns one invariance or another, so
the task's validation pairs choose (`warm_up_image_tower_on_validation`).
"""

import copy

import numpy as np
import torch

from modeling.modeling_retriever import ranking_loss
from processing.processing_sigphi import to_rgb
from train.retrieval.pseudo_relevance import image_neighbours
from train.retrieval.ranking import ranking_metrics

VIEW_KINDS = ("copies", "simclr", "crops")  # the kinds of views `instance_views` makes


def instance_views(kind: str = "copies", size: int = 16):
    """Two calls give two views of one picture, for instance discrimination: what the views change is what the tower
    learns to ignore, so each kind keeps something else.

    - "copies": shifted, turned and zoomed a little, its colour dropped half of the time and its brightness changed:
      keeps a drawing's shape to the pixel and ignores its colours (a copy painted in another colour, other light);
    - "simclr": SimCLR's views (Chen et al., 2020) at `size` pixels: a random crop of at least half the picture,
      mirrored half of the time, colours jittered (p=0.8) or dropped (p=0.2): keeps colours and ignores where a thing
      stands and which way it faces (another view of it), its colours only roughly;
    - "crops": SimCLR's crops, mirroring, turns and light without its colour distortion: ignores where a thing stands,
      which way it faces and how bright it is, and keeps its colours exactly (another view of a thing told from the
      others by its colours, which SigLIP's features keep; SimCLR distorts them so that its features cannot lean on
      colour histograms alone).
    """
    from torchvision.transforms import v2

    from train.retrieval.retriever_stage import image_augmentation

    if kind == "copies":
        return v2.Compose([image_augmentation(), v2.RandomGrayscale(p=0.5), v2.ColorJitter(brightness=0.7)])
    simclr_crop = [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                   image_augmentation()]  # what "simclr" and "crops" share: where a thing stands, which way it faces
    if kind == "simclr":
        return v2.Compose([*simclr_crop, v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                           v2.RandomGrayscale(p=0.2)])
    if kind == "crops":
        return v2.Compose([*simclr_crop, v2.ColorJitter(brightness=0.4)])
    raise ValueError(f"views {kind!r}: not one of {VIEW_KINDS}")


def warm_up_image_tower(retriever, processor, images: list, epochs: int = 60, batch_size: int = 256,
                        learning_rate: float = 3e-3, temperature: float = 0.1, seed: int = 0,
                        views: str = "copies") -> list[float]:
    """The image tower's stand-in for SigLIP: instance discrimination on the task's own pictures, each picture's
    nearest among the batch's views must be its other view (`instance_views(views)`). `images` may hold None
    (questions without one). Only the image tower and its projection train. Returns the loss of each epoch."""
    views = instance_views(views, processor.image_processor.size["height"])
    parameters = [*retriever.image_model.parameters(), *retriever.image_projection.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the views' random transforms
    images = [to_rgb(image) for image in images if image is not None]
    losses = []
    retriever.train()
    for _ in range(epochs):
        order, epoch_losses = rng.permutation(len(images)), []
        for start in range(0, len(order), batch_size):
            batch = [images[i] for i in order[start:start + batch_size]]
            first, second = (retriever.encode_images(processor.image_processor(
                [views(image) for image in batch], return_tensors="pt")["pixel_values"]) for _ in range(2))
            logits = first @ second.T / temperature  # (batch, batch): view i of one image against all others
            same_image = torch.eye(len(batch), dtype=torch.bool)
            loss = (ranking_loss(logits, same_image) + ranking_loss(logits.T, same_image)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)))
    retriever.eval()
    return losses


def warm_up_image_tower_on_validation(retriever, processor, images: list, val_task, depth: int, epochs: int = 60,
                                      seed: int = 0) -> dict:
    """`warm_up_image_tower` with each kind of views (`VIEW_KINDS`) from the same start, keeping the one under which
    the validation questions' pictures find their gold documents' pictures best (mean reciprocal rank within `depth`,
    the candidates' depth; the first kind on a tie). Which differences between two pictures of one thing to ignore,
    colour or place, is the task's; only its own pairs tell (copies of a drawing painted over, or another view of a
    creature). Without such pairs in `val_task`: the first kind. Returns {"views", "mrr" (per kind tried), "loss"}.
    """
    pairs = val_task.subset([i for i, e in enumerate(val_task.examples) if e.image is not None and any(
        val_task.corpus[d]["image"] is not None for d in e.gold_document_ids)])  # questions and their gold pictures
    start, tried = copy.deepcopy(retriever.state_dict()), {}
    for kind in VIEW_KINDS if pairs.examples else VIEW_KINDS[:1]:
        retriever.load_state_dict(start)
        losses = warm_up_image_tower(retriever, processor, images, epochs, seed=seed, views=kind)
        mrr = None
        if pairs.examples:
            nearest = image_neighbours(retriever, processor, pairs, depth)[0]  # (n_pairs, depth)
            mrr = ranking_metrics(nearest, pairs)["retriever_mrr"]
        # the weights and the random state each kind ends with, so that the kept one goes on exactly as if alone
        tried[kind] = {"mrr": mrr, "loss": losses[-1], "state": copy.deepcopy(retriever.state_dict()),
                       "rng": torch.get_rng_state()}
    chosen = max(tried, key=lambda kind: tried[kind]["mrr"] or 0.0)  # max keeps the first of equals
    retriever.load_state_dict(tried[chosen]["state"])
    torch.set_rng_state(tried[chosen]["rng"])
    return {"views": chosen, "mrr": {kind: tried[kind]["mrr"] for kind in tried}, "loss": tried[chosen]["loss"]}
