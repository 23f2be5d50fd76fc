"""train.accuracy / accuracy_of against answers worked out by hand."""

import torch

from teddy.train import accuracy


def test_top1_top5_known_answers_with_a_partial_last_batch():
    # the "model" returns its input: each row is the logits; 7 classes, 5 samples, batches of 2 (2+2+1)
    logits = torch.tensor(
        [
            [9, 8, 7, 6, 5, 4, 3],  # label 0: top-1 hit
            [9, 8, 7, 6, 5, 4, 3],  # label 4: 5th best → top-5 hit only
            [9, 8, 7, 6, 5, 4, 3],  # label 5: 6th best → miss
            [1, 2, 3, 4, 5, 6, 7],  # label 6: top-1 hit
            [0, 0, 9, 0, 0, 0, 1],  # label 6: 2nd best → top-5 hit only (in the partial last batch)
        ],
        dtype=torch.float,
    )
    labels = torch.tensor([0, 4, 5, 6, 6])
    acc = accuracy(torch.nn.Identity(), logits, labels, batch_size=2, device=torch.device("cpu"))
    assert acc == {"top1": 40.0, "top5": 80.0}


def test_fewer_than_five_classes_top5_is_every_class():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([2, 0, 0])
    acc = accuracy(torch.nn.Identity(), logits, labels, batch_size=2, device=torch.device("cpu"))
    assert acc == {"top1": 100.0 / 3, "top5": 100.0}
