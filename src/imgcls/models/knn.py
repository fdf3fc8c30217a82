"""A weighted k-nearest-neighbour classifier on a frozen net's features, as DINO evaluates one.

Each query's features and the train split's are L2-normalized; its k most cosine-similar train
images vote for their classes, each with weight exp(similarity / T) (DINO's `knn_classifier`,
eval_knn.py of facebookresearch/dino: k=20, T=0.07). It needs no training, so beside a linear
probe it says how much of the classes the features already separate. Queries go in chunks, so
memory stays at chunk x train images whatever the split's size; nothing reads back to the host.
The votes are summed as a product with the neighbours' one-hot labels, not a scatter: the same
sums on every run, where CUDA's scatter_add is nondeterministic (and refused under
`torch.use_deterministic_algorithms`).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_votes(
    train_features: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """(queries, num_classes) summed vote weights; k is capped at the train split's size. A
    chunk's similarities to the train split and its one-hot votes each stay within 2^28
    elements (1 GB in float32), so a big split or many classes take smaller chunks."""
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device)
    classes = torch.arange(num_classes, device=train.device)
    k = min(k, len(train))
    chunk = max(1, min(chunk, 2**28 // max(1, len(train), k * num_classes)))
    votes = []
    for start in range(0, len(queries), chunk):
        query = F.normalize(queries[start : start + chunk].to(train.device).float(), dim=1)
        similarity, nearest = (query @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        voters = (labels[nearest].unsqueeze(2) == classes).to(weights.dtype)  # chunk, k, classes
        votes.append(torch.bmm(weights.unsqueeze(1), voters).squeeze(1))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes, device=train.device)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> Tensor:
    """Top-1 accuracy of the weighted k-NN vote over (features, labels), a 0-d device tensor."""
    votes = knn_votes(train_features, train_labels, features, num_classes, k, temperature)
    return (votes.argmax(dim=1) == labels.to(votes.device)).float().mean()
