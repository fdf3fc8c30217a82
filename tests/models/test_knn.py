"""models/knn.py: DINO's weighted k-NN vote on L2-normalized features."""

import torch
import torch.nn.functional as F

from imgcls.models.knn import knn_accuracy, knn_votes


def dino_knn_votes(train, train_labels, test, k, t, num_classes):
    """DINO's eval_knn.knn_classifier, as published (one-hot retrieval, weights exp(sim / T))."""
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    similarity = test @ train.T
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    candidates = train_labels.view(1, -1).expand(len(test), -1)
    retrieved = torch.gather(candidates, 1, indices)
    one_hot = torch.zeros(len(test) * k, num_classes).scatter_(1, retrieved.view(-1, 1), 1)
    weights = distances.clone().div_(t).exp_()
    return (one_hot.view(len(test), -1, num_classes) * weights.view(len(test), -1, 1)).sum(1)


def test_votes_are_dinos_on_random_features_in_chunks() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    queries = torch.randn(70, 16, generator=generator)
    ours = knn_votes(train, labels, queries, 5, k=20, temperature=0.07, chunk=32)
    assert torch.allclose(ours, dino_knn_votes(train, labels, queries, 20, 0.07, 5), rtol=1e-4)


def test_close_neighbours_outvote_many_far_ones() -> None:
    """Two near images of class 1 against three far ones of class 0: a plain majority of the
    k=5 says 0, the similarity-weighted vote says 1; scale does not matter (cosine)."""
    train = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.2, 1.0], [0.2, -1.0], [-1.0, 0.3]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    query = torch.tensor([[50.0, 0.0]])
    votes = knn_votes(train, labels, query, 2, k=5, temperature=0.07)
    assert votes.argmax(dim=1).item() == 1
    assert knn_accuracy(train, labels, query, torch.tensor([1]), 2, k=5).item() == 1.0
    # a temperature so high that every neighbour weighs about alike: the majority wins
    assert knn_votes(train, labels, query, 2, k=5, temperature=1e6).argmax(dim=1).item() == 0


def test_k_beyond_the_train_split_takes_all_of_it() -> None:
    train, labels = torch.eye(3), torch.tensor([0, 1, 1])
    votes = knn_votes(train, labels, torch.tensor([[1.0, 0.0, 0.0]]), 2, k=20, temperature=1.0)
    assert torch.allclose(votes, torch.tensor([[torch.e, 2.0]]))
